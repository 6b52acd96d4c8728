"""Pod-to-pod TLS between two real Envoys (outbound of one, inbound of the other, the contexts the
bootstrap builds): TLS 1.3 by default, the hybrid post-quantum group X25519MLKEM768 when both
allow it, X25519 when one does not, and refusal when a pod allows only the hybrid group and its
peer only classic ones."""
from __future__ import annotations

import http.client

import pytest

from devkit import envoy_configs as cfg
from devkit.harness import free_port, issue
from tests.test_sds_envoy import serve_files
from sds_core.envoy import bootstrap as b

CLIENT_ID = "spiffe://cluster.local/ns/shop/sa/client"


@pytest.fixture
def pair(procs, tmp_path, ca):
    server, client = issue(ca), issue(ca, "client", spiffe=CLIENT_ID)
    _, agent = serve_files(procs, tmp_path, ca, {"server-cert": server, "client-cert": client}, trust=["trust"])
    count = [0]

    def run(server_tls: dict, client_tls: dict):
        count[0] += 1
        sp, cp = free_port(), free_port()
        srv = procs.envoy(cfg.tls_server(agent.socket, sp, "server-cert", "trust",
                                         b.san_matchers(spiffe_ids=[CLIENT_ID]), **server_tls), f"server{count[0]}")
        cli = procs.envoy(cfg.mtls_client(agent.socket, cp, sp, "client-cert", "trust",
                                          b.san_matchers(dns=["localhost"]), **client_tls), f"client{count[0]}")
        srv.wait_live()
        cli.wait_live()
        c = http.client.HTTPConnection("127.0.0.1", cp, timeout=5)
        c.request("GET", "/")
        status = c.getresponse().status
        c.close()
        prefix = f"listener.127.0.0.1_{sp}.ssl."
        stats = {k[len(prefix):]: v for k, v in (line.split(": ", 1) for line in srv.admin(
            f"/stats?filter=^{prefix.replace('.', '[.]')}").splitlines() if ": " in line)}
        return status, {k: int(v) for k, v in stats.items() if v.isdigit()}
    return run


def test_pod_to_pod_is_tls13_by_default(pair):
    status, stats = pair({}, {})
    assert status == 200 and stats.get("versions.TLSv1.3", 0) >= 1 and stats.get("versions.TLSv1.2", 0) == 0, stats


def test_hybrid_post_quantum_group_when_both_allow_it_and_classic_fallback(pair):
    pq = {"curves": ["X25519MLKEM768", "X25519"]}
    status, stats = pair(pq, pq)
    assert status == 200 and stats.get("curves.X25519MLKEM768", 0) >= 1, stats
    status, stats = pair(pq, {"curves": ["X25519"]})
    assert status == 200 and stats.get("curves.X25519", 0) >= 1 and stats.get("curves.X25519MLKEM768", 0) == 0, stats


def test_a_pod_restricted_to_the_hybrid_group_refuses_a_classic_only_peer(pair):
    status, stats = pair({"curves": ["X25519MLKEM768"]}, {"curves": ["X25519", "P-256"]})
    assert status == 503 and stats.get("handshake", 0) == 0, stats


def test_tls_max_version_12_still_works_where_a_peer_needs_it(pair):
    status, stats = pair({}, {"max_version": "TLSv1_2"})
    assert status == 200 and stats.get("versions.TLSv1.2", 0) >= 1, stats
