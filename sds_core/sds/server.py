"""Envoy Secret Discovery Service v3: StreamSecrets (state of the world), DeltaSecrets
(incremental) and FetchSecrets (unary), served from the cache.

xDS rules this follows: a response only when a subscribed secret changed or a name was newly
requested; ACKs get no reply; NACKs are logged and counted but never answered with a resend;
a request with a stale nonce is ignored; a name the agent does not have stays pending (never
an error: a draining listener can keep an old name) and is pushed once it exists."""
from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable
from pathlib import Path

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from sds_core import logs
from sds_core.sds import metrics
from sds_core.sds.ads import AdsStream
from sds_core.sds.cache import SecretCache
from sds_core.sds.delta import DeltaStream
from sds_core.sds.sotw import SotwStream
from sds_core.sds.streams import (ADS_SERVICE, END, SERVICE, TYPE_URL, UNDECODABLE, BadRequest, Stream, check_type,
                                  version_of, warn)

__all__ = ["TYPE_URL", "SdsServer", "SecretDiscovery", "start_grpc"]
log = logging.getLogger("sds.server")


class SecretDiscovery(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    def __init__(self, cache: SecretCache, knows: Callable[[str], bool], stores: dict | None = None):
        self.cache = cache
        self.knows = knows
        self.stores = stores or {}  # type URL -> ResourceStore, served over ADS only
        self.streams: set[Stream] = set()

    async def _serve(self, s: Stream, request_iterator, context):
        self.streams.add(s)
        try:
            async for response in s.run(request_iterator, s.on_request, s.on_change):
                yield response
        except BadRequest as e:
            warn("bad_request", "bad SDS request; stream ended", api=s.api, node=logs.clip(s.node), error=str(e))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        finally:
            self.streams.discard(s)

    async def StreamSecrets(self, request_iterator, context):
        async for response in self._serve(SotwStream(self.cache, self.knows), request_iterator, context):
            yield response

    async def DeltaSecrets(self, request_iterator, context):
        async for response in self._serve(DeltaStream(self.cache, self.knows), request_iterator, context):
            yield response

    async def StreamAggregatedResources(self, request_iterator, context):
        stream = AdsStream(self.cache, self.knows, self.stores)
        async for response in self._serve(stream, request_iterator, context):
            yield response

    async def FetchSecrets(self, request, context):
        try:
            if request is UNDECODABLE:
                raise BadRequest("the message is not a valid request of this service")
            check_type(request.type_url)
        except BadRequest as e:
            warn("bad_request", "bad SDS request", api="fetch", error=str(e))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        found = [(n, entry) for n in request.resource_names if (entry := self.cache.get(n)) is not None]
        if not found:
            await context.abort(grpc.StatusCode.NOT_FOUND, "none of the requested secrets is available: "
                                f"{logs.clip(','.join(request.resource_names), 200)}")
        version = version_of(found)
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
            return UNDECODABLE
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


def _claim(path: Path) -> None:
    """Make `path` free for our socket: its directory exists and is writable, and a socket file
    left by a dead agent is removed. A socket something still listens on is never taken over (in
    Istio mode the path is Istio's; a SPIRE agent may serve there)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the socket directory {path.parent}: {e.strerror}") from None
    if path.is_socket():
        probe = socket.socket(socket.AF_UNIX)
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            pass  # nobody listens: a stale file
        else:
            raise ValueError(f"another server is listening on {path}; not taking it over")
        finally:
            probe.close()
    if path.is_socket() or path.exists():
        try:
            path.unlink()
        except OSError as e:
            raise ValueError(f"cannot remove the stale socket file {path}: {e.strerror}") from None
    if not os.access(path.parent, os.W_OK):
        raise ValueError(f"the socket directory {path.parent} is not writable (read-only volume?)")


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
        """Raises ValueError (one line for the operator) when the socket cannot be ours."""
        _claim(self.socket_path)
        old = os.umask(0o777 & ~self.mode)
        try:
            self.server.add_insecure_port(f"unix:{self.socket_path}")
            await self.server.start()
            os.chmod(self.socket_path, self.mode)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"cannot serve on {self.socket_path}: {e}") from None
        finally:
            os.umask(old)
        return self

    async def stop(self, grace: float | None = 1.0) -> None:
        # End open streams cleanly (status OK) rather than having gRPC cancel them mid-await.
        for stream in list(self.servicer.streams):
            stream.inbox.put_nowait(END)
        await self.server.stop(grace)
        self.socket_path.unlink(missing_ok=True)


async def start_grpc(cache: SecretCache, knows, socket_path: Path, mode: int, stores: dict | None = None) -> SdsServer:
    return await SdsServer(cache, knows, socket_path, mode, stores).start()
