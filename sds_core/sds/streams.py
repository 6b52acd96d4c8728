"""What every SDS/xDS stream shares: request bookkeeping (subscriptions, what the client has,
names pending until their source delivers), nonces, the inbox of requests and cache changes,
and the rules of the protocol (sds_core/sds/server.py's docstring)."""
from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator


from sds_core import logs
from sds_core.sds import metrics
from sds_core.sds.cache import Entry, SecretCache

log = logging.getLogger("sds.server")

TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
MAX_PER_RESPONSE = 1000  # keeps each message far below gRPC's 4 MiB default
MAX_QUEUED_REQUESTS = 16  # a client that sends without reading is stopped here (flow control)
SERVICE = "envoy.service.secret.v3.SecretDiscoveryService"
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
log = logging.getLogger("sds.server")
_WARN = logs.RateLimit(burst=20, per=60.0)

END = object()
UNDECODABLE = object()


class BadRequest(Exception):
    """The client sent something no SDS client may: the stream ends with INVALID_ARGUMENT."""


def warn(kind: str, message: str, **fields) -> None:
    ok, dropped = _WARN.allow(kind)
    if ok:
        log.warning(message, extra=logs.kv(**fields, **({"suppressed_before": dropped} if dropped else {})))


def check_type(type_url: str, expected: str = TYPE_URL) -> None:
    # Envoy always names the type; a plain client may leave it empty. Anything else is another
    # xDS resource type, which this stream must not answer with Secrets.
    if type_url and type_url != expected:
        raise BadRequest(f"this is the Secret Discovery Service: type_url must be {expected}, "
                         f"not {logs.clip(type_url, 120)}")


def version_of(entries: list[tuple[str, Entry]]) -> str:
    """A response's version: derived from the versions of the secrets it carries."""
    return hashlib.sha256("".join(e.version for _, e in entries).encode()).hexdigest()[:16]


def nacked(req) -> bool:
    return bool(req.error_detail.code or req.error_detail.message)


def audit_fields(entry: Entry) -> dict:
    return entry.material.audit() if entry.material is not None else {}


class Stream:
    """State shared by both stream flavours: subscriptions, what was sent, what is pending."""

    def __init__(self, api: str, cache: SecretCache, knows: Callable[[str], bool], type_url: str = TYPE_URL):
        self.api = api
        self.type_url = type_url
        self.cache = cache
        self.knows = knows
        self.node = ""
        self.subscribed: set[str] = set()
        self.sent: dict[str, str] = {}  # name -> version the client has from us
        self.pending: set[str] = set()
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.slots = asyncio.Semaphore(MAX_QUEUED_REQUESTS)

    def on_request(self, req) -> Iterator:
        """The responses a client request calls for (each flavour answers its own protocol)."""
        raise NotImplementedError

    def on_change(self, item) -> Iterator:
        """The responses a change in the cache calls for."""
        raise NotImplementedError

    def _set_pending(self, name: str, missing: bool) -> None:
        if missing and name not in self.pending:
            self.pending.add(name)
            metrics.PENDING.inc()
            if self.knows(name):
                log.info("name pending until its source delivers", extra=logs.kv(name=name, node=self.node))
            else:
                metrics.UNKNOWN.inc()
                warn("unknown_name", "name not configured in this agent; it stays pending",
                      name=logs.clip(name), node=logs.clip(self.node), reason="not_configured")
        elif not missing and name in self.pending:
            self.pending.discard(name)
            metrics.PENDING.dec()

    def _drop(self, name: str) -> None:
        self.subscribed.discard(name)
        self.sent.pop(name, None)
        self._set_pending(name, False)

    def ready_entries(self, names: Iterable[str], force: bool = False) -> list[tuple[str, Entry]]:
        """Subscribed names whose current version the client does not have yet."""
        out: list[tuple[str, Entry]] = []
        for name in sorted(names):
            entry = self.cache.get(name)
            self._set_pending(name, entry is None)
            if entry is not None and (force or self.sent.get(name) != entry.version):
                out.append((name, entry))
        return out

    async def run(self, requests: AsyncIterator, handle_request, handle_change) -> AsyncIterator:
        async def pump():
            try:
                async for req in requests:
                    # Stop reading while requests pile up: gRPC flow control then holds the
                    # sender, and memory stays bounded.
                    await self.slots.acquire()
                    self.inbox.put_nowait(req)
            finally:
                self.inbox.put_nowait(END)

        reader = asyncio.create_task(pump())
        self.watch()
        metrics.STREAMS.labels(self.api).inc()
        try:
            while (item := await self.inbox.get()) is not END:
                if isinstance(item, (str, tuple)):
                    responses = handle_change(item)
                else:
                    self.slots.release()
                    if item is UNDECODABLE:
                        raise BadRequest("the message is not a valid request of this service")
                    responses = handle_request(item)
                for response in responses:
                    yield response
        finally:
            self.unwatch()
            reader.cancel()
            metrics.STREAMS.labels(self.api).dec()
            self.clear_pending()
            log.info("stream closed", extra=logs.kv(api=self.api, node=self.node))

    def watch(self) -> None:
        self.cache.watch(self.inbox)

    def unwatch(self) -> None:
        self.cache.unwatch(self.inbox)

    def clear_pending(self) -> None:
        for name in list(self.pending):
            self._set_pending(name, False)


