"""The issuer's HTTP surface (HTTPS only in a cluster):
POST /v1/certificates {name, csr}   Authorization: Bearer <projected SA token>
POST /v1/trust-bundles {name}       same
POST /v1/gateway-certificates {tenant: "namespace/claim", csr}   a gateway's token only
POST /v1/ocsp (DER OCSP request)    no token: OCSP responses for certificates of its CAs
GET /healthz, /readyz, /inventory (what was issued), /metrics."""
from __future__ import annotations

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..bodies import TooLarge, read_limited
from .identity import Refused
from .service import Issuer

JSON = "application/json"
MAX_BODY = 64 * 1024


def _error(status: int, reason: str, message: str) -> Response:
    return Response(orjson.dumps({"reason": reason, "error": message}), status, media_type=JSON)


async def _read(request: Request, *fields: str) -> tuple[str, dict]:
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    try:
        body = await read_limited(request, MAX_BODY)
    except TooLarge as e:
        raise Refused("bad_request", str(e), 413) from None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Refused("bad_request", "body is not JSON", 400) from None
    if not isinstance(data, dict) or not all(isinstance(data.get(f), str) and data.get(f) for f in fields):
        raise Refused("bad_request", f"body must be a JSON object with string fields {', '.join(fields)}", 400)
    return token, data


def create_app(issuer: Issuer, ready=lambda: True) -> FastAPI:
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="sds-injector issuer", docs_url=None, redoc_url=None, openapi_url=None)

    async def call(request: Request, method, *fields: str) -> Response:
        try:
            token, data = await _read(request, *fields)
            # Token reviews and cache misses are blocking API calls: off the event loop.
            out = await run_in_threadpool(method, token, *(data[f] for f in fields))
        except Refused as e:
            return _error(e.status, e.reason, e.message)
        except Exception as e:  # noqa: BLE001 - e.g. the API server unreachable: retryable, not a 500
            return _error(503, "unavailable", f"the issuer cannot decide now ({type(e).__name__}); retry")
        return Response(orjson.dumps(out), media_type=JSON)

    @app.post("/v1/certificates")
    async def certificates(request: Request) -> Response:
        return await call(request, issuer.sign, "name", "csr")

    @app.post("/v1/gateway-certificates")
    async def gateway_certificates(request: Request) -> Response:
        return await call(request, issuer.sign_gateway, "tenant", "csr")

    @app.post("/v1/ocsp")
    async def ocsp_responder(request: Request) -> Response:
        # Public, as OCSP is: no token. A request is ~100 bytes.
        from .ocsp import respond

        try:
            body = await read_limited(request, 4096)
        except TooLarge:
            return _error(413, "bad_request", "an OCSP request is a few hundred bytes")
        return Response(respond(issuer.authority, body), media_type="application/ocsp-response")

    @app.post("/v1/trust-bundles")
    async def trust_bundles(request: Request) -> Response:
        return await call(request, issuer.trust_bundle, "name")

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    @app.get("/readyz")
    async def readyz() -> Response:
        ok = ready()
        return Response(orjson.dumps({"ready": ok}), 200 if ok else 503, media_type=JSON)

    @app.get("/inventory")
    async def inventory() -> Response:
        return Response(orjson.dumps(issuer.inventory.snapshot()), media_type=JSON)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
