"""uvicorn's HTTP protocol with a deadline for reading each request: headers and body must
arrive whole within `read_timeout` seconds of the connection opening or of the previous
response. uvicorn's own keep-alive timer stops at the first byte, so a client trickling a header
or a body (or idling after the TLS handshake) would otherwise hold a connection and its memory
forever."""
from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class DeadlineHttpProtocol(HttpToolsProtocol):
    read_timeout = 10.0

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.read_timeout, self._expire)

    def _disarm(self) -> None:
        deadline = getattr(self, "_deadline", None)
        if deadline is not None:
            deadline.cancel()
        self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        self.transport.close()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request, if any, has the same deadline

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


def with_timeout(seconds: float) -> type[DeadlineHttpProtocol]:
    return type("DeadlineHttpProtocol", (DeadlineHttpProtocol,), {"read_timeout": seconds})
