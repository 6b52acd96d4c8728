"""Revocation: `python -m webhook revoke` writes a record in the issuer's namespace; every replica's
OCSP responder answers `revoked` for what it matches (by serial, pod, service account or
namespace, from the serial alone); a stapling agent under MUST_STAPLE replaces the certificate at
once and the real Envoy serves the new one; the revocation is audited."""
from __future__ import annotations

import datetime as dt
import json
import shutil
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import ocsp as x509_ocsp

from devkit import envoy_configs as cfg
from devkit.harness import free_port, wait_for
from devkit.issuer_run import IssuerRun
from devkit.kube_api import KubeAPI
from sds_core.pki import ocsp
from sds_core.sds.sources.issuer import new_key
from tests.test_ocsp_envoy import issuer_stapled_pod, status
from webhook.issuer import serials
from webhook.issuer.authority import Authority, Layout
from webhook.issuer.ocsp import respond
from webhook.issuer.revocations import Revocation, Revocations

ROOT = Path(__file__).resolve().parent.parent
NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def prod_ca():
    return Authority.generate(Layout(("prod",))).ca("prod")


def cert_of(ca, who: serials.Identity, at: dt.datetime):
    return ca.sign(new_key("ec").public_key(), "x", ["x"], [], [], serial=serials.mint(ca, who, at))


@pytest.mark.parametrize("record, revoked", [
    (dict(namespace="shop"), {"cart-1", "cart-2", "pay-1"}),
    (dict(namespace="shop", service_account="cart"), {"cart-1", "cart-2"}),
    (dict(namespace="shop", service_account="cart", pod_uid="uid-cart-1"), {"cart-1"}),
    (dict(namespace="bank"), set()),
])
def test_a_revocation_matches_by_identity_and_only_what_was_issued_before_it(prod_ca, record, revoked):
    who = {"cart-1": serials.Identity("shop", "cart", "uid-cart-1"),
           "cart-2": serials.Identity("shop", "cart", "uid-cart-2"),
           "pay-1": serials.Identity("shop", "pay", "uid-pay-1")}
    before = {n: cert_of(prod_ca, w, NOW - dt.timedelta(minutes=5)) for n, w in who.items()}
    after = {n: cert_of(prod_ca, w, NOW + dt.timedelta(minutes=5)) for n, w in who.items()}
    revocations = Revocations([Revocation("r", NOW, **record)])

    def is_revoked(cert) -> bool:
        return revocations.check(prod_ca, cert.serial_number) is not None
    assert {n for n, c in before.items() if is_revoked(c)} == revoked
    assert not any(is_revoked(c) for c in after.values()), "a certificate issued after the revocation is good"


def test_the_responder_answers_revoked_and_never_serves_a_cached_good_after_it(prod_ca):
    a = Authority.generate(Layout(("prod",)))
    ca = a.ca("prod")
    cert = cert_of(ca, serials.Identity("shop", "cart", "uid-1"), dt.datetime.now(dt.UTC))
    request = ocsp.request(cert, ca.cert)
    good = x509_ocsp.load_der_ocsp_response(respond(a, request, revocations=Revocations()))
    assert good.certificate_status == x509_ocsp.OCSPCertStatus.GOOD
    by_serial = Revocations([Revocation("r", dt.datetime.now(dt.UTC), "keyCompromise",
                                        serial=f"{cert.serial_number:x}")])
    answer = x509_ocsp.load_der_ocsp_response(respond(a, request, revocations=by_serial))
    assert answer.certificate_status == x509_ocsp.OCSPCertStatus.REVOKED
    assert answer.revocation_reason.name == "key_compromise"


def served_chain(port: int) -> list:
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
                          "-showcerts"], input=b"", capture_output=True, timeout=10).stdout
    return x509.load_pem_x509_certificates(out[out.index(b"-----BEGIN"):out.rindex(b"-----END CERTIFICATE-----") + 25])


def ask_ocsp(issuer: IssuerRun, request: bytes) -> bytes:
    req = urllib.request.Request(issuer.address + "/v1/ocsp", data=request, method="POST",
                                 headers={"content-type": "application/ocsp-request"})
    with urllib.request.urlopen(req, timeout=5, context=ssl.create_default_context(cadata=issuer.ca_pem.decode())) as r:
        return r.read()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not found")
def test_revoking_a_pod_replaces_its_certificate_under_must_staple(procs, tmp_path):
    kube = KubeAPI().start()
    issuer = IssuerRun(tmp_path, kube, verifier="jwks").start()
    try:
        agent, port = issuer_stapled_pod(procs, tmp_path, kube, issuer)
        first = wait_for(lambda: (s := status(port))["staple"] == "good" and s, 15, what="a good staple")
        leaf, ca = served_chain(port)
        kubeconfig = tmp_path / "kubeconfig.json"  # IssuerRun wrote it
        r = subprocess.run([sys.executable, "-m", "webhook", "revoke", "--pod", "default/web-1", "--reason",
                            "keyCompromise", "--kubeconfig", str(kubeconfig)], capture_output=True, text=True,
                           cwd=ROOT, timeout=30)
        assert r.returncode == 0, r.stderr
        # The agent's next poll hears `revoked`, renews at once, and Envoy serves the new certificate.
        after = wait_for(lambda: (s := status(port))["staple"] == "good" and s["served"] != first["served"] and s,
                         20, what="a new certificate, stapled good")
        assert after["stapled_serial"] == after["served"]
        answer = x509_ocsp.load_der_ocsp_response(ask_ocsp(issuer, ocsp.request(leaf, ca)))
        assert answer.certificate_status == x509_ocsp.OCSPCertStatus.REVOKED
        assert answer.serial_number == int(first["served"], 16)
        records = [json.loads(x) for x in issuer.audit_file.read_text().splitlines()]
        rev = [x for x in records if x["decision"] == "revocation"]
        assert rev and rev[0]["pod"] == "web-1" and rev[0]["reason"] == "keyCompromise"
    finally:
        issuer.stop()
        kube.stop()


def test_revoke_says_what_is_wrong_in_one_line(tmp_path):
    kube = KubeAPI().start()
    try:
        (tmp_path / "kc.json").write_text(kube.kubeconfig())
        cli = [sys.executable, "-m", "webhook", "revoke", "--kubeconfig", str(tmp_path / "kc.json")]
        bad = subprocess.run([*cli, "--serial", "zz"], capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert bad.returncode == 2 and "is not a hex serial" in bad.stderr, bad.stderr
        gone = subprocess.run([*cli, "--pod", "shop/nobody"], capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert gone.returncode == 1 and "the API server refused (404" in gone.stderr, gone.stderr
        assert "Traceback" not in bad.stderr + gone.stderr
    finally:
        kube.stop()


def test_a_serial_revocation_reaches_a_crl_checking_envoy(procs, tmp_path):
    """ISSUER_CRL: trust bundles carry a CRL per CA of the serials revoked by serial. An Envoy that
    checks CRLs (its validation context from the agent) refuses the revoked client at its next
    bundle refresh and still accepts another."""
    from sds_core.envoy import bootstrap as b
    from sds_core.sds.sources.issuer import csr_pem, private_pem

    kube = KubeAPI().start()
    issuer = IssuerRun(tmp_path, kube, verifier="jwks", crl="true").start()
    try:
        def pod_token(name: str) -> str:
            return kube.mint(kube.add_pod("default", name, name.split("-")[0],
                                          annotations={"sds-injector.io/env": "dev"}))

        (tmp_path / "web.token").write_text(pod_token("web-1"))
        agent = procs.agent(source="issuer", certificates="web-dev-cert", trust_bundles="dev-trust-bundle",
                            issuer_address=issuer.address, issuer_ca=issuer.ca_pem.decode(),
                            issuer_token_file=str(tmp_path / "web.token"), static_refresh_seconds=0.5)
        port = free_port()
        peers = b.san_matchers(spiffe_prefixes=["spiffe://cluster.local/ns/default/"])
        procs.envoy(cfg.tls_server(agent.socket, port, "web-dev-cert", "dev-trust-bundle", peers)).wait_live()

        def client(name: str) -> tuple[ssl.SSLContext, str]:
            key = new_key("ec")
            status, out = issuer.post("/v1/certificates", {"name": "cli-dev-cert", "csr": csr_pem(key, "x")},
                                      pod_token(name))
            assert status == 200, out
            (tmp_path / f"{name}.crt").write_text(out["certificate_chain"])
            (tmp_path / f"{name}.key").write_bytes(private_pem(key))
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            ctx.load_cert_chain(tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
            return ctx, out["serial"]

        def accepted(ctx: ssl.SSLContext) -> bool:
            import socket

            try:
                with socket.create_connection(("127.0.0.1", port), timeout=3) as raw, ctx.wrap_socket(raw) as s:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    return b" 200 " in s.recv(4096)
            except (OSError, ssl.SSLError):
                return False

        revoked_ctx, serial = client("cli-1")
        other_ctx, _ = client("cli-2")
        assert wait_for(lambda: accepted(revoked_ctx), 10, what="the client accepted before")
        r = subprocess.run([sys.executable, "-m", "webhook", "revoke", "--serial", serial, "--kubeconfig",
                            str(tmp_path / "kubeconfig.json")], capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: not accepted(revoked_ctx), 15, what="the revoked client refused (CRL)")
        assert accepted(other_ctx), "a certificate not revoked is still accepted"
    finally:
        issuer.stop()
        kube.stop()
