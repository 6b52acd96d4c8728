"""Business-line CAs (businessLineCAs, off by default): under each environment, one intermediate
per business line. The issuer signs a pod's certificate with its business line's CA and gives it
a trust bundle of that CA (plus the lines it `trusts`), so a retail certificate fails a corporate
handshake unless allowed. Real issuer process, real agents and Envoys from injected specs."""
from __future__ import annotations

import pytest
import yaml
from cryptography import x509

from devkit.podrun import ROOT, LocalPod
from sds_core.policy.config import InjectorConfig
from tests.test_issuer_pods import call, config, local_cluster
from webhook.issuer.authority import Authority, Layout

RETAIL = {"sds-injector.io/env": "prod", "sds-injector.io/business-line": "retail"}
CORPORATE = {"sds-injector.io/env": "prod", "sds-injector.io/business-line": "corporate"}
CART = "spiffe://cluster.local/ns/shop-prod/sa/cart"


def test_the_layout_and_its_validation():
    a = Authority.generate(Layout(("prod",), business_lines=("retail", "corporate")))
    assert sorted(a.envs) == ["prod", "prod--corporate", "prod--retail", "prod-edge"]
    assert a.ca("prod--retail").cert.subject.rfc4514_string() == "CN=sds-injector prod retail CA"
    with pytest.raises(ValueError, match="unknown business lines"):
        InjectorConfig.model_validate({"businessLines": {"retail": {"trusts": ["wholesale"]}}})
    # The CA layout injects nothing: switching it on does not redo every pod.
    assert InjectorConfig.model_validate({"businessLineCAs": True}).revision == InjectorConfig().revision


@pytest.fixture
def world(tmp_path):
    cfg = yaml.safe_load((ROOT / "examples" / "config.yaml").read_text())
    cfg["businessLineCAs"] = True
    cfg["businessLines"]["corporate"]["trusts"] = ["retail"]  # corporate accepts retail; not the reverse
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    with local_cluster(tmp_path, tmp_path / "config.yaml") as (kube, issuer, run):
        def run_in_shop(name, sa, annotations, ports: tuple[int, int], app_ports=()) -> LocalPod:
            return run("shop-prod", name, sa, annotations, config(issuer, *ports), app_ports)
        yield kube, issuer, run_in_shop


def test_a_retail_workload_refuses_a_corporate_peer_unless_its_line_trusts_it(world):
    kube, issuer, run = world
    run("cart-1", "cart", {**RETAIL, "sds-injector.io/inbound": "8443:8080"}, (15021, 15090), [8080])
    run("frontend-1", "frontend", {**RETAIL, "sds-injector.io/outbound": f"15001=localhost:8443@{CART}"}, (16021, 16090))
    run("teller-1", "teller", {**CORPORATE, "sds-injector.io/outbound": f"15002=localhost:8443@{CART}"}, (17021, 17090))
    status, answer = call(15001)
    assert status == 200 and answer["app"] == "cart-1", answer  # same line, same environment
    assert call(15002)[0] == 503, "a corporate certificate passed a retail handshake"

    def bundle(name, sa, annotations, trust_name):
        stored = kube.add_pod("shop-prod", name, sa, {"app": sa}, annotations)
        status, out = issuer.post("/v1/trust-bundles", {"name": trust_name}, kube.mint(stored))
        assert status == 200, out
        return [c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(out["trust_bundle"].encode())]
    assert bundle("b-1", "cart", RETAIL, "retail-trust-bundle") == ["CN=sds-injector prod retail CA"]
    assert bundle("b-2", "teller", CORPORATE, "corporate-trust-bundle") == [
        "CN=sds-injector prod corporate CA", "CN=sds-injector prod retail CA"]
