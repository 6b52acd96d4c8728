"""HostnameClaim, the claim resource: its CRD is what the chart installs and validates as a
Kubernetes object; the API double enforces its schema, its CEL immutability rule and its status
subresource as kube-apiserver does; the gateway turns the claims' fate into status conditions;
ConfigMap claims convert to HostnameClaims in the order they own hostnames."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from devkit.kube_api import KubeAPI
from devkit.kube_crd import Invalid
from gateway import status
from sds_core.kube.claims_informer import slim_hostname_claim
from sds_core.policy import claim_crd
from sds_core.policy.claims import resolve
from sds_core.policy.config import InjectorConfig

ROOT = Path(__file__).resolve().parent.parent
CRD_FILE = ROOT / "charts" / "sds-injector" / "crds" / "hostnameclaims.yaml"
SPEC = {"hostnames": ["shop.example.com"], "backendRef": {"name": "web", "port": 8443}, "environment": "dev"}
GRANTS = InjectorConfig.model_validate({"namespacePolicy": {"rules": [
    {"namespaces": ["shop", "rival"], "environments": ["dev"], "gatewayHostnames": ["*.example.com"]},
    {"namespaces": ["*"], "environments": ["dev"], "gatewayHostnames": []}]}})


def test_the_chart_installs_the_generated_crd_and_it_is_a_valid_kubernetes_object():
    generated = subprocess.run([sys.executable, "-m", "gateway", "crd"], capture_output=True, text=True,
                               cwd=ROOT, check=True).stdout
    assert CRD_FILE.read_text() == generated, "run: python -m gateway crd > " + str(CRD_FILE.relative_to(ROOT))
    crd = yaml.safe_load(generated)
    kubernetes_validate.validate(crd, "1.33", strict=True)
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["x-kubernetes-validations"] == [{"rule": "self == oldSelf", "message": claim_crd.IMMUTABLE}]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Hostnames", "Backend", "Port", "Accepted",
                                                                        "Age"]


@pytest.mark.parametrize("bad", [
    {"hostnames": [], "backendRef": {"name": "web", "port": 1}},
    {"hostnames": ["not a name"], "backendRef": {"name": "web", "port": 1}},
    {"hostnames": ["a.example.com"], "backendRef": {"name": "web", "port": 70000}},
    {"hostnames": ["a.example.com"], "backendRef": {"name": "Web_1", "port": 1}},
    {"hostnames": ["a.example.com"], "backendRef": {"name": "web", "port": 1}, "backendTLS": "Sometimes"},
    {"hostnames": ["a.example.com"]},
])
def test_the_api_double_refuses_what_the_schema_refuses(bad):
    kube = KubeAPI()
    with pytest.raises(Invalid):
        kube.add_hostname_claim("shop", "site", bad)


def test_the_spec_cannot_change_and_the_status_is_the_subresource_s():
    kube = KubeAPI()
    obj = kube.add_hostname_claim("shop", "site", SPEC)
    assert obj["spec"]["backendTLS"] == "Mutual", "defaulted as the API server does"
    assert obj["metadata"]["generation"] == 1
    changed = json.loads(json.dumps(obj))
    changed["spec"]["hostnames"] = ["bank.example.com"]
    with pytest.raises(Invalid, match="spec is immutable"):
        kube.update_hostname_claim("shop", "site", changed)
    # An update of the main resource keeps the stored status; /status changes only the status.
    kube.set_claim_status("shop", "site", {"observedGeneration": 1, "conditions": [
        {"type": "Accepted", "status": "True", "reason": "Accepted"}]})
    forged = json.loads(json.dumps(kube.objects["hostnameclaims"][("shop", "site")]))
    forged["status"] = {"conditions": [{"type": "Accepted", "status": "False", "reason": "Forged"}]}
    forged["metadata"]["labels"] = {"team": "shop"}
    kept = kube.update_hostname_claim("shop", "site", forged)
    assert kept["status"]["conditions"][0]["reason"] == "Accepted"
    assert kept["metadata"]["labels"] == {"team": "shop"} and kept["metadata"]["generation"] == 1


def test_the_api_double_serves_claims_over_http_as_the_kubernetes_client_calls_it(tmp_path):
    from kubernetes import client

    from sds_core.kube.client import api_client

    kube = KubeAPI().start()
    try:
        (tmp_path / "kubeconfig.json").write_text(kube.kubeconfig())
        custom = client.CustomObjectsApi(api_client(tmp_path / "kubeconfig.json"))
        body = {"apiVersion": claim_crd.API_VERSION, "kind": claim_crd.KIND, "metadata": {"name": "site"},
                "spec": SPEC}
        custom.create_namespaced_custom_object(claim_crd.GROUP, claim_crd.VERSION, "shop", claim_crd.PLURAL, body)
        listed = custom.list_cluster_custom_object(claim_crd.GROUP, claim_crd.VERSION, claim_crd.PLURAL)
        assert [i["metadata"]["name"] for i in listed["items"]] == ["site"]
        custom.patch_namespaced_custom_object_status(claim_crd.GROUP, claim_crd.VERSION, "shop", claim_crd.PLURAL,
                                                     "site", {"status": {"observedGeneration": 1}})
        assert kube.objects["hostnameclaims"][("shop", "site")]["status"] == {"observedGeneration": 1}
        bad = {**body, "metadata": {"name": "bad"}, "spec": {**SPEC, "hostnames": ["UPPER.example.com"]}}
        with pytest.raises(client.ApiException) as e:
            custom.create_namespaced_custom_object(claim_crd.GROUP, claim_crd.VERSION, "shop", claim_crd.PLURAL, bad)
        assert e.value.status == 422
    finally:
        kube.stop()


def statuses(objects: list[dict]) -> dict:
    slim = [slim_hostname_claim(o) for o in objects]
    resolved = resolve(slim, GRANTS, lambda ns: {"kubernetes.io/metadata.name": ns})
    return {f"{k[0]}/{k[1]}": {c["type"]: (c["status"], c["reason"]) for c in v["conditions"]} | {"_": v}
            for k, v in status.changes(slim, resolved).items()}


def test_status_says_accepted_conflicted_or_not_allowed_and_names_the_owner():
    kube = KubeAPI()
    kube.add_hostname_claim("shop", "site", {**SPEC, "hostnames": ["shop.example.com", "www.example.com"]},
                            created="2026-01-01T00:00:00Z")
    kube.add_hostname_claim("rival", "site", {**SPEC, "hostnames": ["shop.example.com", "deals.example.com"]},
                            created="2026-01-02T00:00:00Z")
    kube.add_hostname_claim("rival", "late", SPEC, created="2026-01-03T00:00:00Z")
    kube.add_hostname_claim("other", "site", {**SPEC, "hostnames": ["other.example.com"]})
    got = statuses(list(kube.objects["hostnameclaims"].values()))
    assert got["shop/site"]["Accepted"] == ("True", "Accepted")
    assert got["shop/site"]["Conflicted"] == ("False", "NoConflicts")
    assert got["rival/site"]["Accepted"] == ("True", "PartiallyAccepted")
    assert got["rival/site"]["Conflicted"] == ("True", "HostnameConflict")
    assert got["rival/site"]["_"]["owners"] == [{"hostname": "shop.example.com", "claim": "shop/site"}]
    assert got["rival/site"]["_"]["servedHostnames"] == ["deals.example.com"]
    assert got["rival/late"]["Accepted"] == ("False", "HostnameConflict")
    assert got["other/site"]["Accepted"] == ("False", "NotAllowed")
    assert got["other/site"]["NotAllowed"] == ("True", "NotAllowedByPolicy")
    assert all(v["_"]["observedGeneration"] == 1 for v in got.values())

    # Written back, nothing is to be written again (replicas agree instead of rewriting).
    for key, st in status.changes([slim_hostname_claim(o) for o in kube.objects["hostnameclaims"].values()],
                                  resolve([slim_hostname_claim(o) for o in kube.objects["hostnameclaims"].values()],
                                          GRANTS, lambda ns: {"kubernetes.io/metadata.name": ns})).items():
        kube.set_claim_status(*key, st)
    assert statuses(list(kube.objects["hostnameclaims"].values())) == {}


def test_configmap_claims_convert_to_hostname_claims_oldest_first():
    from devkit.gatewayrun import claim, claim_configmap

    cms = [claim_configmap("b", claim(["b.example.com"], 8443, backend_tls="none"), created="2026-02-01T00:00:00Z"),
           claim_configmap("a", claim(["a.example.com", "*.a.example.com"], 8443, backend_tls="mutual"),
                           created="2026-01-01T00:00:00Z")]
    r = subprocess.run([sys.executable, "-m", "gateway", "convert-claims"], input=json.dumps({"items": cms}),
                       capture_output=True, text=True, cwd=ROOT, check=True)
    out = list(yaml.safe_load_all(r.stdout))
    assert [o["metadata"]["namespace"] for o in out] == ["a", "b"]
    assert out[0]["spec"] == {"hostnames": ["a.example.com", "*.a.example.com"], "backendRef": {"name": "web",
                              "port": 8443}, "environment": "dev", "backendTLS": "Mutual"}
    assert out[1]["spec"]["backendTLS"] == "None"
    kube = KubeAPI()
    for o in out:  # each is a HostnameClaim the API server accepts
        kube.add_hostname_claim(o["metadata"]["namespace"], o["metadata"]["name"], o["spec"])
    bad = subprocess.run([sys.executable, "-m", "gateway", "convert-claims"], input="not json",
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "not JSON" in bad.stderr
