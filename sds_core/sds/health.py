"""The agent's small HTTP port: /healthz (alive), /readyz (every name served), /metrics
(prometheus-client's own exposition). Standard-library asyncio on the agent's loop, no web
framework: a kubelet probe is one small request, so each connection gets one answer and is
closed, a request must arrive whole within READ_SECONDS (an idle or trickling client is cut
off), and at most MAX_CLIENTS are served at once."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

READ_SECONDS = 5.0
MAX_CLIENTS = 64
MAX_HEAD = 8192
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HealthServer:
    def __init__(self, status: Callable[[], dict]):
        self.status = status
        self._clients = 0
        self._server: asyncio.base_events.Server | None = None

    async def start(self, sock) -> None:
        self._server = await asyncio.start_server(self._serve, sock=sock, limit=MAX_HEAD)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= MAX_CLIENTS:
            writer.close()
            return
        self._clients += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_SECONDS)
            writer.write(self._answer(head))
            await asyncio.wait_for(writer.drain(), READ_SECONDS)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # idle, trickling, oversized or gone: closed without an answer
        finally:
            self._clients -= 1
            writer.close()

    def _answer(self, head: bytes) -> bytes:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _response(400, b'{"error":"not an HTTP/1.x request"}')
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            return _response(405, b'{"error":"GET only"}')
        path = target.split("?", 1)[0]
        if path.startswith("/metrics"):
            accept = next((ln.split(":", 1)[1].strip() for ln in lines[1:] if ln.lower().startswith("accept:")), "")
            encoder, content_type = choose_encoder(accept)
            return _response(200, encoder(REGISTRY), content_type, body=method == "GET")
        if path == "/healthz":
            code, body = 200, {"status": "ok"}
        elif path == "/readyz":
            body = self.status()
            code = 200 if body["ready"] else 503
        else:
            code, body = 404, {"error": f"no such path {path}; try /healthz, /readyz, /metrics"}
        return _response(code, json.dumps(body).encode(), body=method == "GET")


def _response(code: int, data: bytes, content_type: str = "application/json", body: bool = True) -> bytes:
    head = (f"HTTP/1.1 {code} {REASONS.get(code, '')}\r\ncontent-type: {content_type}\r\n"
            f"content-length: {len(data)}\r\nconnection: close\r\n\r\n").encode()
    return head + (data if body else b"")
