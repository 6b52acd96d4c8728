"""The SDS agent under abuse from a plain gRPC client (the agent as users run it, a process):
wrong type URLs, undecodable bytes, huge and hostile names, sender-only clients, abrupt
disconnects, many concurrent streams. The agent stays up with bounded memory and log volume,
answers INVALID_ARGUMENT where a client is wrong, and serves a fresh client correctly after."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from sds_core.sds.server import TYPE_URL
from devkit.harness import Agent, free_port, wait_for

METHODS = ("StreamSecrets", "DeltaSecrets")
PATH = "/envoy.service.secret.v3.SecretDiscoveryService/"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture
def agent(procs):
    a = procs.agent(source="local-ca", certificates="web-cert", trust_bundles="ca", service="web")
    a.wait_ready()
    channel = grpc.insecure_channel(f"unix:{a.socket}")
    yield a, channel
    channel.close()
    assert a.p.poll() is None, "the agent died"


def first_secret(channel, name="web-cert") -> secret_pb2.Secret:
    stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
    resp = stub.FetchSecrets(discovery_pb2.DiscoveryRequest(type_url=TYPE_URL, resource_names=[name]), timeout=5)
    s = secret_pb2.Secret()
    resp.resources[0].Unpack(s)
    return s


def raw_stream(channel, method: str, messages: list[bytes], timeout: float = 5) -> grpc.RpcError | list:
    call = channel.stream_stream(PATH + method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        return list(call(iter(messages), timeout=timeout))
    except grpc.RpcError as e:
        return e


def test_wrong_type_urls_and_undecodable_bytes_are_invalid_argument(agent):
    a, channel = agent
    cluster = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    sotw = discovery_pb2.DiscoveryRequest(type_url=cluster, resource_names=["web-cert"]).SerializeToString()
    delta = discovery_pb2.DeltaDiscoveryRequest(type_url=cluster, resource_names_subscribe=["web-cert"]
                                                ).SerializeToString()
    for method, message in (("StreamSecrets", sotw), ("DeltaSecrets", delta)):
        err = raw_stream(channel, method, [message])
        assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, err)
        assert "type_url" in err.details()
    garbage = b"\xff\xfe\x00\x01" * 50
    for method in METHODS:
        for _ in range(20):
            err = raw_stream(channel, method, [garbage])
            assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, err)
    fetch = channel.unary_unary(PATH + "FetchSecrets", request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as e:
        fetch(garbage, timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    log = a.output()
    assert "Traceback" not in log
    assert log.count("bad SDS request") <= 21, "one bounded line per bad request, rate-limited"
    assert first_secret(channel).tls_certificate.certificate_chain.inline_bytes


def test_hostile_names_and_floods_keep_log_volume_bounded(agent):
    a, channel = agent
    stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
    before = len(a.output())
    huge = "x" * 65536
    for i in range(300):  # a new unknown name each time, some of them 64 KB
        names = [huge + str(i) if i % 10 == 0 else f"nope-{i}-\\u202e\\n{'%s' * 20}"]
        call = stub.StreamSecrets(iter([discovery_pb2.DiscoveryRequest(type_url=TYPE_URL, resource_names=names)]),
                                  timeout=0.3)
        try:
            list(call)
        except grpc.RpcError:
            pass
    nack = discovery_pb2.DiscoveryRequest(type_url=TYPE_URL, resource_names=["web-cert"], response_nonce="stale")
    nack.error_detail.message = "y" * 229_000
    try:
        list(stub.StreamSecrets(iter([nack] * 50), timeout=0.5))
    except grpc.RpcError:
        pass
    grown = a.output()[before:]
    lines = grown.splitlines()
    assert max((len(line) for line in lines), default=0) < 4000, "a log line carries a whole hostile name"
    assert len(grown) < 200_000, f"{len(grown)} bytes of log for 350 abusive requests"
    assert first_secret(channel).name == "web-cert"


def test_sender_only_clients_disconnects_and_many_streams(agent):
    a, channel = agent
    stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
    base = rss_mb(a.p.pid)
    req = discovery_pb2.DiscoveryRequest(type_url=TYPE_URL, resource_names=["web-cert"] + [f"n{i}" for i in range(50)])
    stop = threading.Event()

    def flood():  # sends without ever reading: bounded by flow control, not by memory
        def gen():
            while not stop.is_set():
                yield req
        try:
            for _ in stub.StreamSecrets(gen(), timeout=8):
                time.sleep(100)
        except grpc.RpcError:
            pass
    floods = [threading.Thread(target=flood, daemon=True) for _ in range(3)]
    for t in floods:
        t.start()
    time.sleep(5)
    grown = rss_mb(a.p.pid) - base
    stop.set()
    assert grown < 40, f"agent memory grew {grown:.0f} MB under sender-only clients"
    # 1,000 abrupt disconnects.
    for _ in range(1000):
        call = stub.StreamSecrets(iter([discovery_pb2.DiscoveryRequest(type_url=TYPE_URL, resource_names=["web-cert"])]))
        call.cancel()
    # 200 concurrent streams, each gets the secret.
    calls = [stub.StreamSecrets(iter([discovery_pb2.DiscoveryRequest(type_url=TYPE_URL, resource_names=["web-cert"])]),
                                timeout=10) for _ in range(200)]
    assert all(next(iter(c)).resources for c in calls)
    for c in calls:
        c.cancel()
    assert first_secret(channel).tls_certificate.private_key.inline_bytes


def test_busy_health_port_is_a_clear_error_and_leaves_nothing_behind(tmp_path):
    import socket

    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen(1)
        sock = tmp_path / "sds.sock"
        r = subprocess.run([sys.executable, "-m", "sds_sidecar", "serve", "--socket-path", str(sock),
                            "--http-port", str(port), "--certificates", "a"], capture_output=True, text=True,
                           timeout=30)
    assert r.returncode == 2 and f"health port 127.0.0.1:{port}" in r.stderr, r.stderr
    assert "SDS agent serving" not in r.stdout + r.stderr and "Traceback" not in r.stderr
    assert not sock.exists()


def test_configuration_errors_never_echo_secret_values():
    secret = "hvs.SECRETTOKENVALUE123"
    for args, fragment in ((["--vault-timeout-seconds", "-1"], "vault_timeout_seconds"),
                           # A model-level error: pydantic's text carries the whole input, token included.
                           (["--certificates", "a", "--trust-bundles", "a"], "both certificate and trust bundle")):
        r = subprocess.run([sys.executable, "-m", "sds_sidecar", "serve", "--vault-token", secret, *args],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and fragment in r.stderr, r.stderr
        assert "SECRETTOKENVALUE" not in r.stderr + r.stdout, "the token (or part of it) is echoed"


def test_health_port_cuts_off_idle_and_trickling_clients(agent):
    import socket

    a, _ = agent
    held = []
    for first in (b"", b"GET /readyz HTTP/1.1\r\nHo", b"GET /readyz HTTP/1.1\r\nHost: x\r\n"):
        s = socket.create_connection(("127.0.0.1", a.http_port), timeout=10)
        if first:
            s.sendall(first)
        held.append(s)
    t0 = time.monotonic()
    for s in held:
        assert s.recv(1) == b""
        s.close()
    assert time.monotonic() - t0 < 8, "slow clients must be closed within the read deadline"
    assert a.status()[0] == 200


def test_the_agent_never_takes_over_a_socket_something_listens_on(tmp_path):
    """Istio's SPIRE template puts a SPIRE agent's socket where ours would go: the agent deleted
    that live socket and took the path. Now it refuses (one line, exit 2) and leaves it serving;
    a stale socket file (nobody listening) is still replaced."""
    import socket

    sock = tmp_path / "socket"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(sock))
        other.listen(1)
        r = subprocess.run([sys.executable, "-m", "sds_sidecar", "serve", "--socket-path", str(sock),
                            "--http-port", "0", "--certificates", "a"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and f"another server is listening on {sock}" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(sock))  # still the other server's
    agent = Agent(tmp_path, socket_path=str(sock), certificates="a").start()  # now stale: replaced
    try:
        wait_for(lambda: agent.p.poll() is None and port_connectable(sock), what="the agent on the stale path")
    finally:
        agent.stop()


def port_connectable(path) -> bool:
    import socket

    with socket.socket(socket.AF_UNIX) as c:
        try:
            c.connect(str(path))
        except OSError:
            return False
    return True


def test_an_unusable_socket_directory_is_one_line_and_exit_2(tmp_path):
    """A read-only directory (Istio's SPIRE template mounts workload-socket from a read-only CSI
    volume) raised an uncaught PermissionError traceback; /proc stands in for a directory the
    agent cannot write, as root too."""
    r = subprocess.run([sys.executable, "-m", "sds_sidecar", "serve", "--socket-path", "/proc/sds-test/socket",
                        "--http-port", "0", "--certificates", "a"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "cannot create the socket directory /proc/sds-test" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
