"""OCSP stapling end to end: real OpenBao's responder (and the real issuer's), the agent, the real
Envoy, and `openssl s_client -status` as the client asking for the staple."""
from __future__ import annotations

from sds_core.pki.validation import serial_hex

import re
import shutil
import subprocess
import time

import pytest

from devkit import envoy_configs as cfg
from devkit.harness import free_port, wait_for

pytestmark = [pytest.mark.vault_real,
              pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not found")]


def status(port: int) -> dict:
    """What a client asking for certificate status sees: the served serial and the staple."""
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
                          "-status", "-showcerts"], input=b"", capture_output=True, timeout=10).stdout.decode()
    served = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=out.encode(), capture_output=True,
                            timeout=10).stdout.decode().strip().partition("=")[2]
    served = serial_hex(int(served, 16)) if served else ""
    if "OCSP response: no response sent" in out or "OCSP Response Status" not in out:
        return {"served": served, "staple": None}
    cert_status = re.search(r"Cert Status: (\w+)", out).group(1)
    # Normalised: the two openssl printouts need not agree on a leading zero; ours keeps it.
    stapled = serial_hex(int(re.search(r"Serial Number: ([0-9A-F]+)", out).group(1), 16))
    return {"served": served, "staple": cert_status, "stapled_serial": stapled}


def openbao_stapled_pod(procs, openbao):
    """An agent on OpenBao's pki_shop (sign/prod) stapling every second, and the Envoy it feeds:
    (agent, Envoy's TLS port)."""
    token = openbao.token(["pki_shop/sign/prod"])
    agent = procs.agent(source="vault", certificates="server-cert", vault_addresses=openbao.addr,
                        vault_allow_http="true", vault_auth="token", vault_token=token, namespace="shop",
                        service_account="web", service="web", env="prod", business_line="x", dns_names="localhost",
                        vault_pki_path="pki_shop/sign/prod", ocsp_stapling="true", ocsp_poll_seconds=1)
    port = free_port()
    procs.envoy(cfg.tls_server(agent.socket, port, "server-cert")).wait_live()
    return agent, port


def issuer_stapled_pod(procs, tmp_path, kube, issuer):
    """Pod default/web-1's agent on the project's issuer, stapling every second, and an Envoy serving
    its certificate under MUST_STAPLE: (agent, Envoy's TLS port)."""
    pod = kube.add_pod("default", "web-1", "web", annotations={"sds-injector.io/env": "dev"})
    token = tmp_path / "token"
    token.write_text(kube.mint(pod))
    agent = procs.agent(source="issuer", certificates="web-dev-cert", issuer_address=issuer.address,
                        issuer_ca=issuer.ca_pem.decode(), issuer_token_file=str(token), ocsp_stapling="true",
                        ocsp_poll_seconds=1)
    port = free_port()
    conf = cfg.tls_server(agent.socket, port, "web-dev-cert")
    conf["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]["typed_config"][
        "ocsp_staple_policy"] = "MUST_STAPLE"
    procs.envoy(conf).wait_live()
    return agent, port


def vault_serial(hex_serial: str) -> str:
    raw = bytes.fromhex(hex_serial.rjust(len(hex_serial) + len(hex_serial) % 2, "0"))
    return ":".join(f"{b:02x}" for b in raw)


def test_openbao_staple_good_then_revoked_then_replaced_and_outage(procs, openbao):
    openbao.pki("pki_shop")
    admin = openbao.client()
    admin.write("pki_shop/config/crl", ocsp_expiry="6s")  # short nextUpdate, so expiry is observable
    agent, port = openbao_stapled_pod(procs, openbao)

    # A good staple, about the certificate being served.
    first = wait_for(lambda: (s := status(port))["staple"] == "good" and s, 15, what="a good staple")
    assert first["stapled_serial"] == first["served"]

    # Revoked in OpenBao: the staple would say so; the agent replaces the certificate at once.
    admin.secrets.pki.revoke_certificate(vault_serial(first["served"]), mount_point="pki_shop")
    t0 = time.monotonic()
    new = wait_for(lambda: (s := status(port))["served"] != first["served"] and s["staple"] == "good" and s, 15,
                   what="a new certificate with a good staple")
    assert new["stapled_serial"] == new["served"]
    assert time.monotonic() - t0 < 5, "replaced within the 1 s poll plus a signing, not at the CRL poll"
    events = [e for e in agent.log_events() if e.get("event") == "revoked"]
    assert events and events[0]["serial"] == first["served"]
    assert all(s != "revoked" for s in [status(port)["staple"]]), "a revoked staple is never served"

    # Responder outage (OpenBao stopped): the last good staple is kept until its nextUpdate,
    # then the certificate is served without one; serving never stops (lenient policy).
    openbao.pause()
    try:
        assert status(port) == new
        wait_for(lambda: status(port)["staple"] is None, 15, what="staple dropped after its nextUpdate")
        assert status(port)["served"] == new["served"], "still serving the same certificate"
    finally:
        openbao.resume()
    wait_for(lambda: status(port)["staple"] == "good", 15, what="stapling resumed after the outage")


def test_issuer_staples_its_own_responses(procs, tmp_path):
    """The project's issuer signs OCSP responses for what it issued; with MUST_STAPLE (the
    injected listener's policy when the pod asks) Envoy serves the stapled certificate."""
    from devkit.issuer_run import IssuerRun
    from devkit.kube_api import KubeAPI

    kube = KubeAPI().start()
    issuer = IssuerRun(tmp_path, kube, verifier="jwks").start()
    try:
        agent, port = issuer_stapled_pod(procs, tmp_path, kube, issuer)
        got = wait_for(lambda: (s := status(port))["staple"] == "good" and s, 15, what="issuer staple")
        assert got["stapled_serial"] == got["served"]
    finally:
        issuer.stop()
        kube.stop()


def test_openbao_answers_that_change_nothing_push_nothing(procs, openbao):
    """OpenBao signs a fresh thisUpdate at every request: each 1 s poll used to push a new secret
    version to Envoy and write an audit line though nothing changed. Now a staple is replaced only
    when its status changes or the current one is past half its window."""
    openbao.pki("pki_shop")
    agent, port = openbao_stapled_pod(procs, openbao)
    first = wait_for(lambda: (s := status(port))["staple"] == "good" and s, 15, what="a good staple")

    def versions() -> float:  # secret versions sent to Envoy, over every stream API
        return sum(float(ln.split()[-1]) for ln in agent.metrics().splitlines() if ln.startswith("sds_pushes_total{"))

    def audit_lines() -> int:
        return sum(1 for e in agent.log_events() if e.get("event") in ("loaded", "rotated", "served"))

    before, lines = versions(), audit_lines()
    time.sleep(5)  # five polls, five fresh responses from OpenBao
    assert versions() == before and audit_lines() == lines
    assert status(port) == first, "the same certificate and staple served"
