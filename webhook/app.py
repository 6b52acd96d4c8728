"""The HTTP surface: POST /mutate (pods), POST /validate (workloads), GET /healthz, /readyz, /metrics."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import admission
from .metrics import REGISTRY
from .workloads import decide_workload
from .bodies import TooLarge, read_limited
from sds_core.policy.config import ConfigStore

JSON = "application/json"


def create_app(store: ConfigStore, namespace_labels=None, max_body: int = 3 * 1024 * 1024,
               baseline: bool = False) -> FastAPI:
    app = FastAPI(title="sds-injector webhook", docs_url=None, redoc_url=None, openapi_url=None)

    async def review(request: Request, decider=None) -> Response:
        try:
            body = await read_limited(request, max_body)
        except TooLarge as e:
            return JSONResponse({"error": str(e)}, 413)
        status, out = admission.handle(body, store.get, namespace_labels, decider)
        return Response(out, status, media_type=JSON)

    @app.post("/mutate")
    async def mutate(request: Request) -> Response:
        return await review(request)

    @app.post("/validate")
    async def validate(request: Request) -> Response:
        return await review(request, decide_workload)

    if baseline:
        # Benchmarks only: the same server and body handling, no injection (the comparison point).
        @app.post("/noop")
        async def noop(request: Request) -> Response:
            return Response(admission.noop(await request.body()), media_type=JSON)

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    @app.get("/readyz")
    async def readyz() -> Response:
        store.get()  # a broken config file is reported by the store's error hook, the old one kept
        return Response(b'{"status":"ready"}', media_type=JSON)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app
