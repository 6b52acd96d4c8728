"""The SDS agent against the real Envoy binary: serving, rotation, mTLS, start order,
agent restarts and source outages."""
from __future__ import annotations

import http.client
import ssl
import time

import pytest

from devkit import envoy_configs as cfg
from tests.conftest import remember_key
from devkit.harness import free_port, issue, peer_cert, save_pair, tls_get, wait_for, write_cert_dir
from sds_core.envoy import bootstrap as b

CLIENT_ID = "spiffe://cluster.local/ns/shop/sa/client"


def serve_files(procs, tmp_path, ca, names: dict, trust: list[str] = (), **extra):
    root = tmp_path / "certs"
    for name, issued in names.items():
        remember_key(issued.key_pem)
        write_cert_dir(root, name, issued)
    for t in trust:
        write_cert_dir(root, t, ca_pem=ca.cert_pem)
    agent = procs.agent(source="files", files_root=str(root), certificates=",".join(names),
                        trust_bundles=",".join(trust), **extra)
    return root, agent


def serial(cert) -> int:
    return cert.serial_number


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_envoy_serves_and_rotates_without_restart(procs, tmp_path, ca, delta):
    first = issue(ca)
    root, agent = serve_files(procs, tmp_path, ca, {"server-cert": first})
    port = free_port()
    envoy = procs.envoy(cfg.tls_server(agent.socket, port, "server-cert", delta=delta))
    envoy.wait_live()
    cert, body = tls_get(port, ca.cert_pem)
    assert serial(cert) == first.certificate.serial_number
    assert cfg.HELLO in body

    # An open connection made before the rotation must keep working after it.
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    ctx.check_hostname = False
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=3)
    conn.request("GET", "/")
    assert conn.getresponse().read().decode() == cfg.HELLO
    open_sock = conn.sock

    second = issue(ca)
    remember_key(second.key_pem)
    t0 = time.monotonic()
    write_cert_dir(root, "server-cert", second)
    wait_for(lambda: serial(peer_cert(port, ca.cert_pem)) == second.certificate.serial_number,
             timeout=5, interval=0.005, what="rotated certificate at Envoy")
    print(f"rotation reached Envoy in {1000 * (time.monotonic() - t0):.0f} ms")

    conn.request("GET", "/")
    assert conn.getresponse().read().decode() == cfg.HELLO
    assert conn.sock is open_sock, "the pre-rotation connection was replaced"
    assert serial(x509_of(open_sock)) == first.certificate.serial_number
    conn.close()
    assert envoy.p.poll() is None, "Envoy restarted"
    assert envoy.stat("server.hot_restart_epoch") == 0


def x509_of(sock):
    from cryptography import x509

    return x509.load_der_x509_certificate(sock.getpeercert(binary_form=True))


def refused(port, ca_pem, client) -> bool:
    try:
        _, body = tls_get(port, ca_pem, client=client)
    except (ssl.SSLError, ConnectionError, OSError):
        return True
    return " 200 " not in body.splitlines()[0] if body else True


def test_mtls_between_two_envoys_with_spiffe_san_check(procs, tmp_path, ca):
    from sds_core.pki.ca import LocalCA

    server, client = issue(ca), issue(ca, "client", spiffe=CLIENT_ID)
    root, agent = serve_files(procs, tmp_path, ca, {"server-cert": server, "client-cert": client},
                              trust=["trust"])
    server_port, client_port = free_port(), free_port()
    sans = b.san_matchers(spiffe_ids=[CLIENT_ID])
    srv = procs.envoy(cfg.tls_server(agent.socket, server_port, "server-cert", "trust", sans), "server")
    cli = procs.envoy(cfg.mtls_client(agent.socket, client_port, server_port, "client-cert", "trust",
                                      b.san_matchers(dns=["localhost"])), "client")
    srv.wait_live()
    cli.wait_live()
    c = http.client.HTTPConnection("127.0.0.1", client_port, timeout=5)
    c.request("GET", "/")
    r = c.getresponse()
    assert (r.status, r.read().decode()) == (200, cfg.HELLO)
    c.close()
    assert srv.stat(f"listener.127.0.0.1_{server_port}.ssl.handshake") >= 1

    good = save_pair(tmp_path, client, "good")
    assert not refused(server_port, ca.cert_pem, good)
    wrong_san = issue(ca, "intruder", spiffe="spiffe://cluster.local/ns/other/sa/intruder")
    other_ca = issue(LocalCA.generate("another CA"), "client", spiffe=CLIENT_ID)
    for k in (wrong_san, other_ca):
        remember_key(k.key_pem)
    assert refused(server_port, ca.cert_pem, save_pair(tmp_path, wrong_san, "wrong-san"))
    assert refused(server_port, ca.cert_pem, save_pair(tmp_path, other_ca, "other-ca"))
    assert refused(server_port, ca.cert_pem, None)


def test_envoy_started_before_agent_gets_secret_when_agent_starts(procs, tmp_path, ca):
    first = issue(ca)
    root = tmp_path / "certs"
    write_cert_dir(root, "server-cert", first)
    remember_key(first.key_pem)
    sock = tmp_path / "late.sock"
    port = free_port()
    envoy = procs.envoy(cfg.tls_server(sock, port, "server-cert"))
    time.sleep(1.5)
    assert envoy.admin("/ready").strip() != "LIVE"
    with pytest.raises(OSError):
        tls_get(port, ca.cert_pem, timeout=1)
    procs.agent(source="files", files_root=str(root), certificates="server-cert", socket_path=str(sock))
    envoy.wait_live(timeout=30)
    assert serial(tls_get(port, ca.cert_pem)[0]) == first.certificate.serial_number


def test_agent_killed_envoy_keeps_serving_and_resyncs_after_restart(procs, tmp_path, ca):
    first = issue(ca)
    root, agent = serve_files(procs, tmp_path, ca, {"server-cert": first})
    port = free_port()
    envoy = procs.envoy(cfg.tls_server(agent.socket, port, "server-cert"))
    envoy.wait_live()
    agent.kill()
    for _ in range(5):
        assert serial(tls_get(port, ca.cert_pem)[0]) == first.certificate.serial_number
        time.sleep(0.2)
    second = issue(ca)
    remember_key(second.key_pem)
    write_cert_dir(root, "server-cert", second)
    assert serial(tls_get(port, ca.cert_pem)[0]) == first.certificate.serial_number
    procs.agent("agent2", source="files", files_root=str(root), certificates="server-cert",
                socket_path=str(agent.socket))
    wait_for(lambda: serial(tls_get(port, ca.cert_pem)[0]) == second.certificate.serial_number,
             timeout=40, interval=0.2, what="Envoy resync after agent restart")


def test_source_outage_keeps_cached_certificate_served(procs, tmp_path, ca):
    import shutil

    first = issue(ca)
    root, agent = serve_files(procs, tmp_path, ca, {"server-cert": first}, retry_max_seconds=1)
    port = free_port()
    envoy = procs.envoy(cfg.tls_server(agent.socket, port, "server-cert"))
    envoy.wait_live()
    shutil.rmtree(root / "server-cert")
    wait_for(lambda: agent.status()[1]["degraded"], timeout=5, what="agent reports degraded")
    code, status = agent.status()
    assert code == 200 and status["failing"] == {"server-cert": "missing"}
    for _ in range(5):
        assert serial(tls_get(port, ca.cert_pem)[0]) == first.certificate.serial_number
        time.sleep(0.2)
    assert "sds_degraded 1.0" in agent.metrics()
    second = issue(ca)
    remember_key(second.key_pem)
    write_cert_dir(root, "server-cert", second)
    wait_for(lambda: serial(tls_get(port, ca.cert_pem)[0]) == second.certificate.serial_number,
             timeout=5, what="recovery after the outage")
    wait_for(lambda: not agent.status()[1]["degraded"], timeout=5, what="agent healthy again")


def test_bad_update_is_rejected_and_previous_certificate_stays(procs, tmp_path, ca):
    import datetime as dt

    first = issue(ca)
    root, agent = serve_files(procs, tmp_path, ca, {"server-cert": first})
    port = free_port()
    procs.envoy(cfg.tls_server(agent.socket, port, "server-cert")).wait_live()
    other = issue(ca)
    expired = issue(ca, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(hours=3))
    remember_key(other.key_pem)
    remember_key(expired.key_pem)
    bad = {
        "bad_pem": (b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n", first.key_pem),
        "key_mismatch": (first.chain_pem, other.key_pem),
        "expired": (expired.chain_pem, expired.key_pem),
    }
    for reason, (crt, key) in bad.items():
        d = root / "server-cert"
        write_cert_dir(root, "server-cert", None)
        stamp = d / f"..bad{reason}"
        stamp.mkdir()
        (stamp / "tls.crt").write_bytes(crt)
        (stamp / "tls.key").write_bytes(key)
        (d / "..tmp").symlink_to(stamp.name)
        (d / "..tmp").replace(d / "..data")
        wait_for(lambda reason=reason: any(e.get("reason") == reason and e.get("msg", "").startswith("secret rejected")
                             for e in agent.log_events()), timeout=5, what=f"rejection log for {reason}")
        assert serial(tls_get(port, ca.cert_pem)[0]) == first.certificate.serial_number
    import re

    for reason in bad:
        found = re.search(rf'sds_secrets_rejected_total\{{reason="{reason}"\}} (\S+)', agent.metrics())
        assert found and float(found.group(1)) >= 1, reason


def test_downstream_connection_limit_refuses_the_connection_past_it(procs, tmp_path, ca):
    """The injected bootstrap's overload manager: one client cannot exhaust the proxy."""
    import socket

    server = issue(ca)
    root, agent = serve_files(procs, tmp_path, ca, {"server-cert": server})
    port = free_port()
    config = cfg.tls_server(agent.socket, port, "server-cert")
    config["overload_manager"] = b.overload_manager(3)
    procs.envoy(config).wait_live()
    held = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(3)]
    try:
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", port), timeout=2)
        extra.settimeout(2)
        assert extra.recv(1) == b"", "a connection past the limit must be closed at once"
        extra.close()
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    assert serial(tls_get(port, ca.cert_pem)[0]) == server.certificate.serial_number  # below the limit again
