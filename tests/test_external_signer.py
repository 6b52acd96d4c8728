"""External signer (issuer.caMode=vault) against a real OpenBao: the issuer decides identity,
policy and names; OpenBao PKI signs; no CA key exists in Kubernetes. A role that would put other
names in the certificate (use_csr_sans) is caught: the certificate is discarded. OpenBao down:
503, and a running agent keeps serving its certificate."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devkit.harness import wait_for
from devkit.issuer_run import IssuerRun
from devkit.kube_api import KubeAPI
from tests.test_issuer import sign

pytestmark = pytest.mark.vault_real
ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "config.yaml"
PROD = {"sds-injector.io/env": "prod", "sds-injector.io/business-line": "retail"}
CAS = [f"{e}{s}" for e in ("prod", "staging", "dev") for s in ("", "-edge")]
STRICT_ROLE = {"use_csr_sans": False, "use_csr_common_name": False, "allow_ip_sans": True,
               "allowed_uri_sans": "spiffe://*", "allow_any_name": True, "enforce_hostnames": False,
               "require_cn": False}  # a pod no Service selects has no DNS name, hence no CN


@pytest.fixture
def world(openbao, tmp_path):
    roots = {ca: openbao.pki(f"pki_{ca}", cn=f"{ca} CA in OpenBao", role="sds-injector", role_params=STRICT_ROLE)
             for ca in CAS}
    token = tmp_path / "vault-token"
    token.write_text(openbao.token([f"pki_{ca}/sign/sds-injector" for ca in CAS]
                                   + [f"pki_{ca}/cert/ca_chain" for ca in CAS] + [f"pki_{ca}/ca/pem" for ca in CAS]))
    kube = KubeAPI().start()
    issuer = IssuerRun(tmp_path, kube, CONFIG, verifier="jwks", ca_mode="vault", vault_address=openbao.addr,
                       vault_token_file=token, vault_timeout_seconds=1).start()
    yield openbao, kube, issuer, roots
    issuer.stop()
    kube.stop()


def leaf_of(out: dict) -> x509.Certificate:
    return x509.load_pem_x509_certificates(out["certificate_chain"].encode())[0]


def test_openbao_signs_what_the_issuer_decided_and_no_ca_key_is_in_kubernetes(world):
    openbao, kube, issuer, roots = world
    pod = kube.add_pod("shop-prod", "cart-1", "cart", {"app": "cart"}, PROD)
    kube.add_service("shop-prod", "cart", {"app": "cart"})
    status, out = wait_for(lambda: (r := sign(issuer, kube.mint(pod), "retail-service-cert"))[0] == 200 and r,
                           what="a certificate signed by OpenBao")
    leaf = leaf_of(out)
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(roots["prod"].encode()))
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cluster.local/ns/shop-prod/sa/cart"]
    assert set(san.get_values_for_type(x509.DNSName)) == {"cart.shop-prod.svc", "cart.shop-prod.svc.cluster.local"}
    assert not kube.objects["secrets"], "no CA Secret: the keys stay in OpenBao"
    bundle = x509.load_pem_x509_certificates(out["trust_bundle"].encode())
    assert [c.subject.rfc4514_string() for c in bundle] == ["CN=prod CA in OpenBao"]


def test_a_role_that_would_sign_other_names_is_caught(world, tmp_path):
    """A role left at OpenBao's defaults (use_csr_sans, use_csr_common_name) signs the names of the
    CSR, not the issuer's: a pod asking for another service's name would get it. The issuer
    discards such a certificate and refuses."""
    openbao, kube, issuer, _ = world
    openbao.role("pki_prod", "sds-injector", {"allow_any_name": True, "allowed_uri_sans": "spiffe://*"})
    pod = kube.add_pod("shop-prod", "cart-2", "cart", {"app": "cart"}, PROD)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ledger.bank-prod.svc")]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("ledger.bank-prod.svc")]), critical=False)
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
    status, out = sign(issuer, kube.mint(pod), "retail-service-cert", csr=csr)
    assert (status, out["reason"]) == (502, "signer_names"), out
    assert "ledger.bank-prod.svc" in out["error"] and "certificate_chain" not in out


def test_openbao_down_is_a_503_and_a_running_agent_keeps_its_certificate(world, procs, tmp_path):
    openbao, kube, issuer, _ = world
    pod = kube.add_pod("shop-prod", "cart-3", "cart", {"app": "cart"}, PROD)
    token = tmp_path / "token"
    token.write_text(kube.mint(pod))
    agent = procs.agent(source="issuer", certificates="retail-service-cert", issuer_address=issuer.address,
                        issuer_ca=issuer.ca_pem.decode(), issuer_token_file=str(token), retry_initial_seconds=0.2,
                        retry_max_seconds=0.5)
    agent.wait_ready()
    openbao.pause()
    try:
        t0 = time.monotonic()
        status, out = sign(issuer, kube.mint(pod), "retail-service-cert")
        assert (status, out["reason"]) == (503, "signer_unavailable") and time.monotonic() - t0 < 5, out
        agent.p.send_signal(signal.SIGHUP)  # a renewal while OpenBao is down
        wait_for(lambda: agent.status()[1]["degraded"], 10, what="the agent noticing the outage")
        assert agent.status()[0] == 200, "the cached certificate is still served"
    finally:
        openbao.resume()
    wait_for(lambda: not agent.status()[1]["degraded"], 15, what="recovery")
