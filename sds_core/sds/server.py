"""Envoy Secret Discovery Service v3: StreamSecrets (state of the world), DeltaSecrets
(incremental) and FetchSecrets (unary), served from the cache.

xDS rules this follows: a response only when a subscribed secret changed or a name was newly
requested; ACKs get no reply; NACKs are logged and counted but never answered with a resend;
a request with a stale nonce is ignored; a name the agent does not have stays pending (never
an error: a draining listener can keep an old name) and is pushed once it exists."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any
from pathlib import Path

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from sds_core import logs
from sds_core.sds import metrics
from .cache import Entry, SecretCache

TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
MAX_PER_RESPONSE = 1000  # keeps each message far below gRPC's 4 MiB default
MAX_QUEUED_REQUESTS = 16  # a client that sends without reading is stopped here (flow control)
SERVICE = "envoy.service.secret.v3.SecretDiscoveryService"
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
log = logging.getLogger("sds.server")
_WARN = logs.RateLimit(burst=20, per=60.0)

_END = object()
_UNDECODABLE = object()


class BadRequest(Exception):
    """The client sent something no SDS client may: the stream ends with INVALID_ARGUMENT."""


def _warn(kind: str, message: str, **fields) -> None:
    ok, dropped = _WARN.allow(kind)
    if ok:
        log.warning(message, extra=logs.kv(**fields, **({"suppressed_before": dropped} if dropped else {})))


def _check_type(type_url: str, expected: str = TYPE_URL) -> None:
    # Envoy always names the type; a plain client may leave it empty. Anything else is another
    # xDS resource type, which this stream must not answer with Secrets.
    if type_url and type_url != expected:
        raise BadRequest(f"this is the Secret Discovery Service: type_url must be {expected}, "
                         f"not {logs.clip(type_url, 120)}")


def _version_of(entries: list[tuple[str, Entry]]) -> str:
    """A response's version: derived from the versions of the secrets it carries."""
    return hashlib.sha256("".join(e.version for _, e in entries).encode()).hexdigest()[:16]


def _nacked(req) -> bool:
    return bool(req.error_detail.code or req.error_detail.message)


def _audit(entry: Entry) -> dict:
    return entry.material.audit() if entry.material is not None else {}


class _Stream:
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
                _warn("unknown_name", "name not configured in this agent; it stays pending",
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
                self.inbox.put_nowait(_END)

        reader = asyncio.create_task(pump())
        self.watch()
        metrics.STREAMS.labels(self.api).inc()
        try:
            while (item := await self.inbox.get()) is not _END:
                if isinstance(item, (str, tuple)):
                    responses = handle_change(item)
                else:
                    self.slots.release()
                    if item is _UNDECODABLE:
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


class _SotwStream(_Stream):
    def __init__(self, cache, knows, api: str = "sotw", type_url: str = TYPE_URL):
        super().__init__(api, cache, knows, type_url)
        self.nonce = ""

    def _accept(self, req: discovery_pb2.DiscoveryRequest) -> bool:
        """Count the ACK or NACK a request carries; False for a stale nonce (no reply)."""
        if req.node.id:
            self.node = req.node.id
        if req.response_nonce and req.response_nonce != self.nonce:
            metrics.STALE.inc()
            return False
        if _nacked(req):
            metrics.NACKS.labels(self.api).inc()
            _warn("nack", "Envoy rejected a response; not resending", node=logs.clip(self.node), type_url=self.type_url,
                  names=logs.clip(",".join(req.resource_names), 400), error=logs.clip(req.error_detail.message, 400))
        elif req.response_nonce:
            metrics.ACKS.labels(self.api).inc()
        return True

    def on_request(self, req: discovery_pb2.DiscoveryRequest):
        _check_type(req.type_url, self.type_url)
        if not self._accept(req):
            return
        names = set(req.resource_names)
        if not req.response_nonce:
            # A request without a nonce opens a (new) subscription, e.g. after a ConfigSource
            # change (envoy #47309): every requested name must be answered again.
            self.sent.clear()
        for gone in self.subscribed - names:
            self._drop(gone)
        new = names - self.subscribed if req.response_nonce else names
        self.subscribed = names
        yield from self._respond(self.ready_entries(new))

    def on_change(self, name: str):
        if name in self.subscribed:
            yield from self._respond(self.ready_entries([name]))

    def _respond(self, entries: list[tuple[str, Entry]]):
        for i in range(0, len(entries), MAX_PER_RESPONSE):
            batch = entries[i : i + MAX_PER_RESPONSE]
            version = _version_of(batch)
            self.nonce = secrets.token_hex(8)
            for name, entry in batch:
                self.sent[name] = entry.version
                logs.audit("served", name, api=self.api, node=self.node, **_audit(entry))
            metrics.PUSHES.labels(self.api).inc(len(batch))
            yield discovery_pb2.DiscoveryResponse(
                version_info=version, type_url=self.type_url, nonce=self.nonce,
                resources=[e.resource for _, e in batch],
            )


class _WildcardStream(_SotwStream):
    """Listeners and clusters (gateway mode): Envoy subscribes to all of them, and every response
    carries the whole set, since a state-of-the-world LDS/CDS response that leaves a resource out
    removes it."""

    # One response in flight at a time: changes made while Envoy applies one are sent together
    # once it answers. A listener of 10,000 filter chains costs Envoy ~2 s of CPU per update;
    # sending every intermediate state would queue dozens of them.
    inflight = False
    dirty = False

    def on_request(self, req: discovery_pb2.DiscoveryRequest):
        if not self._accept(req):
            return
        if not req.response_nonce:  # a (re)subscription: everything, now
            self.inflight = False
            yield from self._respond_all()
        elif self.inflight:  # the ACK or NACK of the response in flight
            self.inflight = False
            if self.dirty:
                yield from self._respond_all()

    def on_change(self, name: str):
        if self.inflight:
            self.dirty = True
            return
        yield from self._respond_all()

    def _respond_all(self):
        if not self.cache.ready:
            return  # answered at the store's first replace() (its change notice)
        self.dirty = False
        entries = [(n, self.cache.get(n)) for n in self.cache.names()]
        version = _version_of(entries)
        if self.sent.get("*") == version:
            return
        self.sent["*"] = version
        self.nonce = secrets.token_hex(8)
        self.inflight = True
        metrics.PUSHES.labels(self.api).inc(len(entries))
        yield discovery_pb2.DiscoveryResponse(version_info=version, type_url=self.type_url, nonce=self.nonce,
                                              resources=[e.resource for _, e in entries])


class _AdsStream(_Stream):
    """Aggregated discovery (gateway mode): secrets, listeners and clusters over one stream, one
    state-of-the-world sub-stream per type. One stream instead of one per secret: with a stream
    per tenant certificate, 1,000 tenants cost Envoy ~300 MB and the agent ~240 MB (measured)."""

    def __init__(self, cache: SecretCache, knows, stores: dict):
        super().__init__("ads", cache, knows)
        self.subs: dict[str, _SotwStream] = {TYPE_URL: _SotwStream(cache, knows, "ads", TYPE_URL)}
        for type_url, store in stores.items():
            self.subs[type_url] = _WildcardStream(store, lambda _: True, "ads", type_url)
        self._adapters: list[tuple[Any, Any]] = []

    def watch(self) -> None:
        inbox = self.inbox

        class Tagged:  # cache notices carry only a name; tag them with their type
            def __init__(self, type_url):
                self.type_url = type_url

            def put_nowait(self, name):
                inbox.put_nowait((self.type_url, name))

        for type_url, sub in self.subs.items():
            adapter = Tagged(type_url)
            self._adapters.append((sub.cache, adapter))
            sub.cache.watch(adapter)

    def unwatch(self) -> None:
        for store, adapter in self._adapters:
            store.unwatch(adapter)

    def clear_pending(self) -> None:
        for sub in self.subs.values():
            sub.clear_pending()

    def on_request(self, req: discovery_pb2.DiscoveryRequest):
        sub = self.subs.get(req.type_url)
        if sub is None:
            # Not an error that may end the stream: it carries every other type too.
            _warn("unknown_type", "ADS request for a type this agent does not serve; ignored",
                  type_url=logs.clip(req.type_url, 120))
            return
        if req.node.id:
            self.node = req.node.id
        # Envoy names its node on the stream's first message only: every type's logs need it.
        sub.node = self.node
        yield from sub.on_request(req)

    def on_change(self, item: tuple[str, str]):
        yield from self.subs[item[0]].on_change(item[1])


class _DeltaStream(_Stream):
    def __init__(self, cache, knows):
        super().__init__("delta", cache, knows)
        self.first = True

    def on_request(self, req: discovery_pb2.DeltaDiscoveryRequest):
        _check_type(req.type_url)
        if req.node.id:
            self.node = req.node.id
        if _nacked(req):
            metrics.NACKS.labels(self.api).inc()
            _warn("nack", "Envoy rejected secrets; not resending", node=logs.clip(self.node),
                  error=logs.clip(req.error_detail.message, 400))
        elif req.response_nonce:
            metrics.ACKS.labels(self.api).inc()
        if self.first:
            # What Envoy already holds (e.g. from before an agent restart) need not be resent.
            self.sent.update(req.initial_resource_versions)
            self.first = False
        for name in req.resource_names_unsubscribe:
            self._drop(name)
        wanted = list(req.resource_names_subscribe)
        # Re-subscribing a name already held is a request to send it again (envoy #47309).
        force = {n for n in wanted if n in self.subscribed}
        self.subscribed.update(wanted)
        for name in force:
            self.sent.pop(name, None)
        yield from self._respond(self.ready_entries(wanted), [])

    def on_change(self, name: str):
        if name not in self.subscribed:
            return
        if self.cache.get(name) is None and name in self.sent:
            del self.sent[name]
            yield from self._respond([], [name])
        else:
            yield from self._respond(self.ready_entries([name]), [])

    def _respond(self, entries: list[tuple[str, Entry]], removed: list[str]):
        for i in range(0, max(len(entries), len(removed)), MAX_PER_RESPONSE):
            batch = entries[i : i + MAX_PER_RESPONSE]
            for name, entry in batch:
                self.sent[name] = entry.version
                logs.audit("served", name, api=self.api, node=self.node, **_audit(entry))
            metrics.PUSHES.labels(self.api).inc(len(batch))
            yield discovery_pb2.DeltaDiscoveryResponse(
                type_url=TYPE_URL,
                nonce=secrets.token_hex(8),
                resources=[discovery_pb2.Resource(name=n, version=e.version, resource=e.resource)
                           for n, e in batch],
                removed_resources=removed[i : i + MAX_PER_RESPONSE],
            )


class SecretDiscovery(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    def __init__(self, cache: SecretCache, knows: Callable[[str], bool], stores: dict | None = None):
        self.cache = cache
        self.knows = knows
        self.stores = stores or {}  # type URL -> ResourceStore, served over ADS only
        self.streams: set[_Stream] = set()

    async def _serve(self, s: _Stream, request_iterator, context):
        self.streams.add(s)
        try:
            async for response in s.run(request_iterator, s.on_request, s.on_change):
                yield response
        except BadRequest as e:
            _warn("bad_request", "bad SDS request; stream ended", api=s.api, node=logs.clip(s.node), error=str(e))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        finally:
            self.streams.discard(s)

    async def StreamSecrets(self, request_iterator, context):
        async for response in self._serve(_SotwStream(self.cache, self.knows), request_iterator, context):
            yield response

    async def DeltaSecrets(self, request_iterator, context):
        async for response in self._serve(_DeltaStream(self.cache, self.knows), request_iterator, context):
            yield response

    async def StreamAggregatedResources(self, request_iterator, context):
        stream = _AdsStream(self.cache, self.knows, self.stores)
        async for response in self._serve(stream, request_iterator, context):
            yield response

    async def FetchSecrets(self, request, context):
        try:
            if request is _UNDECODABLE:
                raise BadRequest("the message is not a valid request of this service")
            _check_type(request.type_url)
        except BadRequest as e:
            _warn("bad_request", "bad SDS request", api="fetch", error=str(e))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        found = [(n, entry) for n in request.resource_names if (entry := self.cache.get(n)) is not None]
        if not found:
            await context.abort(grpc.StatusCode.NOT_FOUND, "none of the requested secrets is available: "
                                f"{logs.clip(','.join(request.resource_names), 200)}")
        version = _version_of(found)
        metrics.PUSHES.labels("fetch").inc(len(found))
        return discovery_pb2.DiscoveryResponse(
            version_info=version, type_url=TYPE_URL, nonce=secrets.token_hex(8),
            resources=[e.resource for _, e in found],
        )


def _safe(message_class):
    """Deserialize, or hand the servicer a marker it answers with INVALID_ARGUMENT: gRPC's own
    failure path logs a traceback per bad message and may end a stream with status OK."""
    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except Exception:  # noqa: BLE001 - any undecodable input
            return _UNDECODABLE
    return parse


def _ads_handler(servicer: SecretDiscovery) -> grpc.GenericRpcHandler:
    req, resp = discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse
    return grpc.method_handlers_generic_handler(ADS_SERVICE, {
        "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
            servicer.StreamAggregatedResources, request_deserializer=_safe(req),
            response_serializer=resp.SerializeToString),
    })


def _handlers(servicer: SecretDiscovery) -> grpc.GenericRpcHandler:
    req, resp = discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse
    dreq, dresp = discovery_pb2.DeltaDiscoveryRequest, discovery_pb2.DeltaDiscoveryResponse
    return grpc.method_handlers_generic_handler(SERVICE, {
        "StreamSecrets": grpc.stream_stream_rpc_method_handler(
            servicer.StreamSecrets, request_deserializer=_safe(req), response_serializer=resp.SerializeToString),
        "DeltaSecrets": grpc.stream_stream_rpc_method_handler(
            servicer.DeltaSecrets, request_deserializer=_safe(dreq), response_serializer=dresp.SerializeToString),
        "FetchSecrets": grpc.unary_unary_rpc_method_handler(
            servicer.FetchSecrets, request_deserializer=_safe(req), response_serializer=resp.SerializeToString),
    })


class SdsServer:
    """The gRPC server on a Unix socket. A stale socket file is removed, and the socket is
    created with `mode` from the start (umask), so no other user can connect even briefly."""

    def __init__(self, cache: SecretCache, knows, socket_path: Path, mode: int, stores: dict | None = None):
        self.socket_path, self.mode = socket_path, mode
        self.servicer = SecretDiscovery(cache, knows, stores)
        self.server = grpc.aio.server(options=[("grpc.max_send_message_length", -1)])
        handlers = [_handlers(self.servicer)]
        if stores:
            handlers.append(_ads_handler(self.servicer))
        self.server.add_generic_rpc_handlers(tuple(handlers))

    async def start(self) -> SdsServer:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self.socket_path.is_socket() or self.socket_path.exists():
            self.socket_path.unlink()
        self.server.add_insecure_port(f"unix:{self.socket_path}")
        old = os.umask(0o777 & ~self.mode)
        try:
            await self.server.start()
        finally:
            os.umask(old)
        os.chmod(self.socket_path, self.mode)
        return self

    async def stop(self, grace: float | None = 1.0) -> None:
        # End open streams cleanly (status OK) rather than having gRPC cancel them mid-await.
        for stream in list(self.servicer.streams):
            stream.inbox.put_nowait(_END)
        await self.server.stop(grace)
        self.socket_path.unlink(missing_ok=True)


async def start_grpc(cache: SecretCache, knows, socket_path: Path, mode: int, stores: dict | None = None) -> SdsServer:
    return await SdsServer(cache, knows, socket_path, mode, stores).start()
