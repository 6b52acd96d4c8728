"""The issuer's HTTP surface (HTTPS only in a cluster):
POST /v1/certificates {name, csr}   Authorization: Bearer <projected SA token>
POST /v1/trust-bundles {name}       same
POST /v1/gateway-certificates {tenant: "namespace/claim", csr}   a gateway's token only
POST /v1/gateway-identities {env, business_line?, csr}           a gateway's token only: its own SPIFFE ID
POST /v1/gateway-trust-bundles {env, business_line?}             a gateway's token only
POST /v1/ocsp (DER OCSP request)    no token: OCSP responses for certificates of its CAs
GET /healthz, /readyz.
The operations port (`create_ops_app`, ISSUER_OPS_PORT): GET /inventory (what was issued),
/metrics, /healthz, /readyz: what a scraper needs, kept off the port the pod network reaches."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import orjson

from sds_core import issuer_api as api
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..bodies import TooLarge, read_limited
from .identity import Refused
from .inventory import REFUSED
from .service import Issuer
from sds_core.reasons import Reason
from starlette.concurrency import run_in_threadpool
from .ocsp import respond

JSON = "application/json"
MAX_BODY = 64 * 1024


T = TypeVar("T")


def _error(status: int, reason: str, message: str, retry_after: float | None = None) -> Response:
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after else None
    return Response(orjson.dumps(api.to_json(api.ErrorResponse(reason, message))), status, media_type=JSON,
                    headers=headers)


async def _read(request: Request, model: type[T]) -> tuple[str, T]:
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    try:
        body = await read_limited(request, MAX_BODY)
    except TooLarge as e:
        raise Refused(Reason.BAD_REQUEST, str(e), 413) from None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Refused(Reason.BAD_REQUEST, "body is not JSON", 400) from None
    try:
        return token, api.parse(model, data)
    except ValueError as e:
        raise Refused(Reason.BAD_REQUEST, str(e), 400) from None


def create_app(issuer: Issuer, ready=lambda: True) -> FastAPI:
    app = FastAPI(title="sds-injector issuer", docs_url=None, redoc_url=None, openapi_url=None)

    async def call(request: Request, method: Callable[[str, T], object], model: type[T]) -> Response:
        source = request.client.host if request.client else ""
        if wait := issuer.source_limits.wait(source):
            REFUSED.labels(Reason.SOURCE_RATE_LIMITED).inc()
            return _error(429, Reason.SOURCE_RATE_LIMITED, "this address sent tokens the API server refused; "
                          f"retry in {wait:.0f} s", wait)
        try:
            token, req = await _read(request, model)
            # Token reviews and cache misses are blocking API calls: off the event loop.
            out = api.to_json(await run_in_threadpool(method, token, req))
        except Refused as e:
            if e.reason == Reason.TOKEN_INVALID:
                issuer.source_limits.take(source)
            return _error(e.status, e.reason, e.message, e.retry_after)
        except Exception as e:  # noqa: BLE001 - e.g. the API server unreachable: retryable, not a 500
            return _error(503, Reason.UNAVAILABLE, f"the issuer cannot decide now ({type(e).__name__}); retry")
        return Response(orjson.dumps(out), media_type=JSON)

    @app.post(api.CERTIFICATES)
    async def certificates(request: Request) -> Response:
        return await call(request, issuer.sign, api.CertificateRequest)

    @app.post(api.GATEWAY_CERTIFICATES)
    async def gateway_certificates(request: Request) -> Response:
        return await call(request, issuer.sign_gateway, api.GatewayCertificateRequest)

    @app.post(api.GATEWAY_IDENTITIES)
    async def gateway_identities(request: Request) -> Response:
        return await call(request, issuer.sign_gateway_identity, api.GatewayIdentityRequest)

    @app.post(api.GATEWAY_TRUST_BUNDLES)
    async def gateway_trust_bundles(request: Request) -> Response:
        return await call(request, issuer.gateway_trust_bundle, api.GatewayTrustRequest)

    @app.post(api.OCSP)
    async def ocsp_responder(request: Request) -> Response:
        # Public, as OCSP is: no token. A request is ~100 bytes.

        try:
            body = await read_limited(request, 4096)
        except TooLarge:
            return _error(413, Reason.BAD_REQUEST, "an OCSP request is a few hundred bytes")
        return Response(respond(issuer.authority, body, revocations=issuer.cluster.revocations),
                        media_type="application/ocsp-response")

    @app.post(api.TRUST_BUNDLES)
    async def trust_bundles(request: Request) -> Response:
        return await call(request, issuer.trust_bundle, api.TrustBundleRequest)

    _health(app, ready)
    return app


def _health(app: FastAPI, ready: Callable[[], bool]) -> None:
    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    @app.get("/readyz")
    async def readyz() -> Response:
        ok = ready()
        return Response(orjson.dumps({"ready": ok}), 200 if ok else 503, media_type=JSON)


def create_ops_app(issuer: Issuer, ready=lambda: True) -> FastAPI:
    app = FastAPI(title="sds-injector issuer operations", docs_url=None, redoc_url=None, openapi_url=None)
    _health(app, ready)

    @app.get("/inventory")
    async def inventory() -> Response:
        return Response(orjson.dumps(issuer.inventory.snapshot()), media_type=JSON)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
