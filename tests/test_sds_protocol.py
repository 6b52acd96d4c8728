"""xDS protocol rules of the SDS server, checked with a plain gRPC client (no Envoy)."""
from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.rpc import status_pb2

from sds_core.sds import material, metrics
from sds_core.sds.cache import SecretCache
from sds_core.sds.server import TYPE_URL, start_grpc
from devkit.harness import issue

QUIET = 0.3  # how long "no response" is awaited


def tls(ca):
    i = issue(ca)
    return material.tls_certificate(i.chain_pem, i.key_pem)


class _Stream:
    async def _requests(self):
        while (req := await self.out.get()) is not None:
            yield req

    async def _read(self):
        async for resp in self.call:
            self.inbox.put_nowait(resp)

    async def recv(self, timeout=3.0):
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def silent(self) -> bool:
        try:
            await asyncio.wait_for(self.inbox.get(), QUIET)
        except TimeoutError:
            return True
        return False


class AdsClient(_Stream):
    """An aggregated stream: requests of any type URL, put on `out` as they are."""

    def __init__(self, stub):
        self.out: asyncio.Queue = asyncio.Queue()
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.call = stub.StreamAggregatedResources(self._requests())
        self.reader = asyncio.ensure_future(self._read())


class Client(_Stream):
    """One bidirectional stream: requests go in a queue; a reader task collects responses."""

    def __init__(self, stub, delta=False):
        self.out: asyncio.Queue = asyncio.Queue()
        self.inbox: asyncio.Queue = asyncio.Queue()
        method = stub.DeltaSecrets if delta else stub.StreamSecrets
        self.call = method(self._requests())
        self.reader = asyncio.ensure_future(self._read())

    def send(self, **kw):
        delta = {"resource_names_subscribe", "resource_names_unsubscribe", "initial_resource_versions"} & set(kw)
        cls = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
        self.out.put_nowait(cls(type_url=TYPE_URL, **kw))


def names_of(resp) -> list[str]:
    out = []
    for any_ in resp.resources:
        res = any_.resource if hasattr(any_, "resource") and any_.HasField("resource") else any_
        s = secret_pb2.Secret()
        res.Unpack(s)
        out.append(s.name)
    return sorted(out)


@contextlib.asynccontextmanager
async def serving(tmp_path, cache, known=("a", "b", "c")):
    server = await start_grpc(cache, lambda n: n in known, tmp_path / "sds.sock", 0o600)
    channel = grpc.aio.insecure_channel(f"unix:{tmp_path / 'sds.sock'}")
    try:
        yield sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(0)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def counter(c, *labels) -> float:
    return (c.labels(*labels) if labels else c)._value.get()


def test_sotw_ack_nack_stale_nonce_and_subscription_changes(tmp_path, ca):
    async def body():
        cache = SecretCache()
        cache.put("a", tls(ca))
        cache.put("b", tls(ca))
        async with serving(tmp_path, cache) as stub:
            c = Client(stub)
            c.send(resource_names=["a"])
            r1 = await c.recv()
            assert names_of(r1) == ["a"] and r1.nonce and r1.version_info

            acks = counter(metrics.ACKS, "sotw")
            c.send(resource_names=["a"], version_info=r1.version_info, response_nonce=r1.nonce)
            assert await c.silent(), "an ACK must get no response"
            assert counter(metrics.ACKS, "sotw") == acks + 1

            nacks = counter(metrics.NACKS, "sotw")
            c.send(resource_names=["a"], version_info="", response_nonce=r1.nonce,
                   error_detail=status_pb2.Status(code=3, message="bad secret"))
            assert await c.silent(), "a NACK must not cause a resend"
            assert counter(metrics.NACKS, "sotw") == nacks + 1

            stale = counter(metrics.STALE)
            c.send(resource_names=["a", "b"], response_nonce="not-the-last-nonce")
            assert await c.silent(), "a stale nonce must be ignored"
            assert counter(metrics.STALE) == stale + 1

            c.send(resource_names=["a", "b"], version_info=r1.version_info, response_nonce=r1.nonce)
            r2 = await c.recv()
            assert names_of(r2) == ["b"], "only the newly requested name is sent"

            # A change to a subscribed name is pushed; a change to another name is not.
            cache.put("c", tls(ca))
            assert await c.silent()
            cache.put("a", tls(ca))
            r3 = await c.recv()
            assert names_of(r3) == ["a"] and r3.version_info != r1.version_info

            # Same content stored again: no push.
            cache.put("a", cache.get("a").material)
            c.send(resource_names=["a", "b"], version_info=r3.version_info, response_nonce=r3.nonce)
            assert await c.silent()

            # Dropping a name stops its pushes.
            c.send(resource_names=["b"], version_info=r3.version_info, response_nonce=r3.nonce)
            assert await c.silent()
            cache.put("a", tls(ca))
            assert await c.silent()
            c.out.put_nowait(None)

    run(body())


def test_sotw_pending_names_are_pushed_when_they_appear_and_unknown_names_do_not_fail(tmp_path, ca):
    async def body():
        cache = SecretCache()
        async with serving(tmp_path, cache) as stub:
            c = Client(stub)
            unknown = counter(metrics.UNKNOWN)
            c.send(resource_names=["a", "ghost"])
            assert await c.silent()
            assert counter(metrics.UNKNOWN) == unknown + 1
            assert metrics.PENDING._value.get() >= 2
            cache.put("a", tls(ca))
            r = await c.recv()
            assert names_of(r) == ["a"]
            # The stream stays usable with the unknown name still subscribed.
            c.send(resource_names=["a", "ghost", "b"], version_info=r.version_info, response_nonce=r.nonce)
            cache.put("b", tls(ca))
            assert names_of(await c.recv()) == ["b"]
            assert c.call.done() is False
            c.out.put_nowait(None)

    run(body())


def test_names_sent_on_one_stream_are_answered_on_another_and_on_resubscribe(tmp_path, ca):
    async def body():
        cache = SecretCache()
        cache.put("a", tls(ca))
        async with serving(tmp_path, cache) as stub:
            first = Client(stub)
            first.send(resource_names=["a"])
            r = await first.recv()
            second = Client(stub)
            second.send(resource_names=["a"], version_info=r.version_info)  # reconnect carries a version
            assert names_of(await second.recv()) == ["a"]
            # A request without a nonce on an open stream is a new subscription: answer again.
            first.send(resource_names=["a"])
            assert names_of(await first.recv()) == ["a"]
            for c in (first, second):
                c.out.put_nowait(None)

    run(body())


def test_nack_does_not_spin(tmp_path, ca):
    """An Envoy that keeps rejecting gets exactly one response per change (SPIRE's check)."""
    async def body():
        cache = SecretCache()
        cache.put("a", tls(ca))
        async with serving(tmp_path, cache) as stub:
            c = Client(stub)
            c.send(resource_names=["a"])
            r = await c.recv()
            for _ in range(20):
                c.send(resource_names=["a"], response_nonce=r.nonce,
                       error_detail=status_pb2.Status(code=13, message="rejected"))
            assert await c.silent(), "a NACK was answered with a resend"
            c.out.put_nowait(None)

    run(body())


def test_fetch_returns_known_names_and_not_found_otherwise(tmp_path, ca):
    async def body():
        cache = SecretCache()
        cache.put("a", tls(ca))
        async with serving(tmp_path, cache) as stub:
            r = await stub.FetchSecrets(discovery_pb2.DiscoveryRequest(type_url=TYPE_URL, resource_names=["a", "x"]))
            assert names_of(r) == ["a"] and r.version_info
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.FetchSecrets(discovery_pb2.DiscoveryRequest(type_url=TYPE_URL, resource_names=["x"]))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND and "x" in err.value.details()

    run(body())


def test_delta_subscribe_initial_versions_resubscribe_and_removal(tmp_path, ca):
    async def body():
        cache = SecretCache()
        a = cache.put("a", tls(ca))
        cache.put("b", tls(ca))
        async with serving(tmp_path, cache) as stub:
            c = Client(stub, delta=True)
            # Envoy already holds a's current version (e.g. from before an agent restart).
            c.send(resource_names_subscribe=["a", "b"], initial_resource_versions={"a": a.version})
            r = await c.recv()
            assert [x.name for x in r.resources] == ["b"]
            c.send(resource_names_subscribe=[], response_nonce=r.nonce)
            assert await c.silent()
            c.send(resource_names_subscribe=["a"], response_nonce=r.nonce)  # explicit resubscribe
            r = await c.recv()
            assert [x.name for x in r.resources] == ["a"] and r.resources[0].version == a.version
            cache.remove("b")
            r = await c.recv()
            assert list(r.removed_resources) == ["b"] and not r.resources
            c.send(resource_names_unsubscribe=["a"], response_nonce=r.nonce)
            assert await c.silent()
            cache.put("a", tls(ca))
            assert await c.silent(), "unsubscribed names are not pushed"
            c.out.put_nowait(None)

    run(body())


def test_socket_mode_and_stale_socket_removed(tmp_path, ca):
    async def body():
        sock = tmp_path / "sds.sock"
        sock.write_text("stale")
        server = await start_grpc(SecretCache(), lambda n: False, sock, 0o600)
        try:
            assert sock.is_socket()
            assert sock.stat().st_mode & 0o777 == 0o600
        finally:
            await server.stop(0)

    run(body())


def test_ads_serves_listeners_whole_one_in_flight_and_secrets_by_name(tmp_path, ca):
    """Gateway mode's ADS stream: listeners are sent whole; while one response is unanswered,
    further changes wait and go out together on its ACK; secrets keep SDS's rules on the same
    stream; a type the agent does not serve is ignored, not fatal to the stream."""
    from envoy.config.listener.v3 import listener_pb2
    from envoy.service.discovery.v3 import ads_pb2_grpc

    from sds_core.sds.resources import LISTENER, ResourceStore

    def listeners(*names):
        return {n: listener_pb2.Listener(name=n) for n in names}

    async def body():
        cache, store = SecretCache(), ResourceStore(LISTENER)
        cache.put("a", tls(ca))
        store.replace(listeners("l1"))
        server = await start_grpc(cache, lambda n: n == "a", tmp_path / "ads.sock", 0o600, {LISTENER: store})
        channel = grpc.aio.insecure_channel(f"unix:{tmp_path / 'ads.sock'}")
        try:
            c = AdsClient(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel))
            c.out.put_nowait(discovery_pb2.DiscoveryRequest(type_url="type.example/Unknown"))
            c.out.put_nowait(discovery_pb2.DiscoveryRequest(type_url=LISTENER))
            r1 = await c.recv()
            assert r1.type_url == LISTENER and [x.type_url for x in r1.resources] == [LISTENER]
            # Two changes while r1 is unanswered: nothing yet.
            store.replace(listeners("l1", "l2"))
            store.replace(listeners("l2", "l3"))
            assert await c.silent(), "a change waits for the response in flight"
            c.out.put_nowait(discovery_pb2.DiscoveryRequest(type_url=LISTENER, version_info=r1.version_info,
                                                            response_nonce=r1.nonce))
            r2 = await c.recv()
            got = sorted(_unpack_listener(x).name for x in r2.resources)
            assert got == ["l2", "l3"], "the latest whole set, once"
            assert await c.silent()
            # Secrets on the same stream, by name.
            c.out.put_nowait(discovery_pb2.DiscoveryRequest(type_url=TYPE_URL, resource_names=["a"]))
            r3 = await c.recv()
            assert r3.type_url == TYPE_URL and names_of(r3) == ["a"]
            # An emptied store removes every listener (a SotW response without them).
            c.out.put_nowait(discovery_pb2.DiscoveryRequest(type_url=LISTENER, version_info=r2.version_info,
                                                            response_nonce=r2.nonce))
            store.replace({})
            r4 = await c.recv()
            assert r4.type_url == LISTENER and len(r4.resources) == 0
            c.out.put_nowait(None)
        finally:
            await channel.close()
            await server.stop(0)

    run(body())


def _unpack_listener(any_):
    from envoy.config.listener.v3 import listener_pb2

    out = listener_pb2.Listener()
    any_.Unpack(out)
    return out
