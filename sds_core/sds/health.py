"""The agent's small HTTP port: /healthz (alive), /readyz (every name served), /metrics."""
from __future__ import annotations

import json
from collections.abc import Callable

from prometheus_client import make_asgi_app


def health_app(status: Callable[[], dict]):
    metrics_app = make_asgi_app()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path.startswith("/metrics"):
            await metrics_app(scope, receive, send)
            return
        if path == "/healthz":
            code, body = 200, {"status": "ok"}
        elif path == "/readyz":
            body = status()
            code = 200 if body["ready"] else 503
        else:
            code, body = 404, {"error": f"no such path {path}; try /healthz, /readyz, /metrics"}
        data = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": code,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": data})

    return app
