"""Names are identity (issue: no tenant can obtain a certificate that another namespace's
clients would accept). A DNS SAN goes into a certificate only if no other namespace could be
given it, and an outbound call to an in-cluster name verifies the SPIFFE ID of the namespace
the name designates, never the DNS name alone. Attacks run against the real issuer process and
real Envoys; the cluster is the API double."""
from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from devkit import harness
from sds_core import names
from sds_core.sds.sources.issuer import csr_pem, new_key
from tests.test_issuer_pods import call, cluster, config, issued_pair  # noqa: F401 - fixture
from webhook.issuer.authority import Authority

PROD = {"sds-injector.io/env": "prod", "sds-injector.io/business-line": "retail"}
TD = "spiffe://cluster.local"


@pytest.mark.parametrize("host,own,expected", [
    ("ledger", "bank-prod", "bank-prod"),
    ("ledger.shop-prod", "bank-prod", "shop-prod"),
    ("ledger.shop-prod.svc", "bank-prod", "shop-prod"),
    ("ledger.shop-prod.svc.cluster.local", "bank-prod", "shop-prod"),
    ("ledger.shop-prod.svc.corp.example", "bank-prod", "shop-prod"),
    ("api.stripe.com", "bank-prod", None),
    ("example.com.", "bank-prod", None),
    ("localhost", "bank-prod", None),
    ("10.0.0.1", "bank-prod", None),
])
def test_which_namespace_an_outbound_host_names(host, own, expected):
    assert names.target_namespace(host, own) == expected


def test_outbound_checks_are_never_dns_only_inside_the_cluster():
    check = names.outbound_peer_check
    assert check("ledger", None, "bank-prod", "cluster.local") == names.PeerCheck(
        spiffe_prefixes=(f"{TD}/ns/bank-prod/sa/",))
    assert check("ledger.shop-prod.svc", f"{TD}/ns/shop-prod/sa/ledger", "bank-prod", "cluster.local") == \
        names.PeerCheck(spiffe_ids=(f"{TD}/ns/shop-prod/sa/ledger",))
    assert check("api.stripe.com", None, "bank-prod", "cluster.local") == names.PeerCheck(dns=("api.stripe.com",))
    assert check("example.com.", None, "bank-prod", "cluster.local") == names.PeerCheck(dns=("example.com",))
    with pytest.raises(ValueError, match="not in it"):
        check("ledger.bank-prod.svc", f"{TD}/ns/shop-prod/sa/ledger", "bank-prod", "cluster.local")


def test_dns_names_always_contain_the_namespace():
    assert names.workload_dns_names(["ledger", "api"], "bank", "corp.local") == [
        "ledger.bank.svc", "ledger.bank.svc.corp.local", "api.bank.svc", "api.bank.svc.corp.local"]
    assert names.common_name(["a" * 60 + ".bank"]) == ""  # never a truncated name
    assert names.common_name(["ledger.bank"]) == "ledger.bank"


@pytest.mark.parametrize("host,internal", [
    ("ledger", True), ("ledger.bank.svc", True), ("x.svc.cluster.local", True), ("cluster.local", True),
    ("a.b.corp.internal", True), ("www.shop.example.com", False), ("svc.example.com", False)])
def test_cluster_internal_hostnames(host, internal):
    assert names.is_cluster_internal(host, "corp.internal") is internal


def _sans(chain_pem: bytes) -> tuple[list[str], x509.Name]:
    cert = x509.load_pem_x509_certificates(chain_pem)[0]
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName), cert.subject


def test_a_service_named_like_another_namespaces_gets_no_bare_name(cluster, tmp_path):
    """The attack: a tenant allowed prod creates Service `ledger` in its own namespace selecting
    its own pod. Before, the issuer signed DNS SAN `ledger` with the prod CA, which bank-prod's
    clients calling `ledger` accepted."""
    kube, issuer, _ = cluster
    kube.add_service("shop-prod", "ledger", {"app": "ledger"})
    token = kube.mint(kube.add_pod("shop-prod", "evil-1", "ledger", {"app": "ledger"}, PROD))

    def naming_the_service() -> bytes | None:
        status, out = issuer.post("/v1/certificates", {"name": "retail-service-cert",
                                                       "csr": csr_pem(new_key("ec"), "evil")}, token)
        assert status == 200, out
        pem = out["certificate_chain"].encode()
        return pem if _sans(pem)[0] else None
    # The issuer learns of Services through its watch: ask until its answer names the Service.
    pem = harness.wait_for(naming_the_service, what="a certificate naming the Service")
    dns, subject = _sans(pem)
    assert dns == ["ledger.shop-prod.svc", "ledger.shop-prod.svc.cluster.local"]
    assert subject.rfc4514_string() == "CN=ledger.shop-prod.svc"


def test_a_pod_selected_by_too_many_services_is_refused_by_name(cluster, tmp_path):
    kube, issuer, _ = cluster
    for i in range(60):  # 2 names each: 120 > the default cap of 100
        kube.add_service("shop-prod", f"s{i}", {"app": "wide"})
    stored = kube.add_pod("shop-prod", "wide-1", "wide", {"app": "wide"}, PROD)

    def ask():
        return issuer.post("/v1/certificates", {"name": "retail-service-cert", "csr": csr_pem(new_key("ec"), "w")},
                           kube.mint(stored))
    # The issuer learns of the 60 Services through its watch: ask until it has seen them all.
    status, out = harness.wait_for(lambda: (a := ask())[0] != 200 and "120 DNS names" in a[1].get("error", "") and a,
                                   what="the refusal naming all 120 names")
    assert status == 403 and out["reason"] == "too_many_dns_names", out
    assert "120 DNS names" in out["error"] and "max_dns_names" in out["error"]


def test_outbound_to_an_in_cluster_name_verifies_the_namespace_not_the_dns_name(cluster, tmp_path):
    """bank-prod's teller calls `ledger` and `ledger.bank-prod.svc` without a SPIFFE pin. A
    server holding a valid prod certificate whose DNS SANs name both (made with the prod CA, as
    an older issuer or any other signer of that CA could) but whose SPIFFE ID is shop-prod's is
    refused (before: DNS SAN matching accepted it and learned the caller's identity); bank-prod's
    own ledger is accepted on the same names."""
    kube, issuer, run = cluster
    authority = Authority.from_secret_data(kube.objects["secrets"][("sds-system", "sds-injector-ca")]["data"])
    issued = authority.ca("prod").issue("ledger", dns_names=["ledger", "ledger.bank-prod.svc"],
                                        uris=[f"{TD}/ns/shop-prod/sa/ledger"])
    impostor = harness.TLSAnswerer(*harness.save_pair(tmp_path, issued, "impostor"))
    try:
        run("bank-prod", "ledger-1", "ledger", {**PROD, "sds-injector.io/inbound": "9443:9080"},
            config(issuer, 18021, 18090), [9080])
        run("bank-prod", "teller-1", "teller", {
            **PROD, "sds-injector.io/outbound": f"15011=ledger:{impostor.port},"
                                                f"15012=ledger.bank-prod.svc:{impostor.port},"
                                                "15013=ledger:9443,15014=ledger.bank-prod.svc:9443"},
            config(issuer, 19021, 19090), dns={"ledger": "127.0.0.1", "ledger.bank-prod.svc": "127.0.0.1"})
        assert call(15011)[0] == 503, "a shop-prod identity answered for bank-prod's `ledger`"
        assert call(15012)[0] == 503, "a shop-prod identity answered for ledger.bank-prod.svc"
        for port in (15013, 15014):
            status, answer = call(port)
            assert status == 200 and answer["app"] == "ledger-1", answer
    finally:
        impostor.stop()


def test_a_leaked_workload_ca_key_cannot_mint_an_outside_hostname(cluster, tmp_path):
    """Environment (workload) CAs carry DNS name constraints: `svc` and the cluster domain. With
    the prod CA's key (a leak), a certificate for api.stripe.com is made; a prod pod calling
    api.stripe.com, redirected to its holder, refuses it (before: 200, the caller trusting the
    prod CA for any name). In-cluster names keep working (the tests above)."""
    kube, issuer, run = cluster
    authority = Authority.from_secret_data(kube.objects["secrets"][("sds-system", "sds-injector-ca")]["data"])
    constraints = authority.ca("prod").cert.extensions.get_extension_for_class(x509.NameConstraints).value
    assert constraints.permitted_subtrees is not None and {
        n.value for n in constraints.permitted_subtrees if isinstance(n, x509.DNSName)} == {"svc", "cluster.local"}
    issued = authority.ca("prod").issue("api.stripe.com", dns_names=["api.stripe.com"])
    holder = harness.TLSAnswerer(*harness.save_pair(tmp_path, issued, "minted"))
    try:
        run("bank-prod", "teller-2", "teller", {**PROD, "sds-injector.io/outbound": f"15021=api.stripe.com:{holder.port}"},
            config(issuer, 19121, 19190), dns={"api.stripe.com": "127.0.0.1"})
        assert call(15021)[0] == 503, "a certificate for an outside hostname from the workload CA was accepted"
    finally:
        holder.stop()


def test_workload_cas_sign_no_ip_outside_the_pod_cidrs(tmp_path):
    """With the issuer's pod_cidrs set, a workload CA's key cannot vouch for an address outside
    them either (checked by openssl's verifier, as TLS clients do)."""
    import shutil
    import subprocess

    from webhook.issuer.authority import Layout

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    auth = Authority.generate(Layout(("prod",), pod_cidrs=("10.0.0.0/8",)))
    prod = auth.ca("prod")
    (tmp_path / "root.pem").write_bytes(auth.root.cert_pem)
    (tmp_path / "prod.pem").write_bytes(prod.cert_pem)

    def verifies(ip: str) -> bool:
        leaf = prod.sign(prod.issue("x").certificate.public_key(), "", ["web.shop.svc"], [], [ip])
        (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        r = subprocess.run([openssl, "verify", "-CAfile", str(tmp_path / "root.pem"), "-untrusted",
                            str(tmp_path / "prod.pem"), str(tmp_path / "leaf.pem")], capture_output=True, text=True)
        return r.returncode == 0
    assert verifies("10.1.2.3")
    assert not verifies("8.8.8.8")
    with pytest.raises(ValueError):
        Layout(("prod",), pod_cidrs=("not-a-cidr",)).check()
