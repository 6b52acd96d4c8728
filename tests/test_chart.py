"""The Helm chart with the real helm binary: lint, render over a matrix of values, strict
schema validation of every manifest, value schema errors, and the rendered webhook TLS."""
from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from cryptography import x509

from tests.harness import Proc, free_port, wait_for
from webhook.config import InjectorConfig

ROOT = Path(__file__).parent.parent
CHART = ROOT / "charts" / "sds-injector"
HELM = shutil.which("helm", path=f"{Path(sys.executable).parent}:{shutil.os.environ.get('PATH', '')}")
CRDS = {"Issuer", "Certificate", "ServiceMonitor"}  # not in Kubernetes' own schemas
pytestmark = pytest.mark.skipif(HELM is None, reason="no helm: scripts/get_helm.py installs one on x86_64 Linux")

MATRIX = {
    "defaults": [],
    "cert-manager": ["--set", "tls.mode=cert-manager"],
    "vault-kv": ["--set", "config.agent.source=vault", "--set", "config.agent.vault.mode=kv",
                 "--set", "config.agent.vault.addresses={https://vault-a:8200,https://vault-b:8200}"],
    "vault-pki": ["--set", "config.agent.source=vault", "--set", "config.agent.vault.mode=pki",
                  "--set", "config.agent.vault.addresses={https://vault:8200}"],
    "classic-sidecars": ["--set", "config.nativeSidecars=false"],
    "extras": ["--set", "metrics.serviceMonitor.enabled=true", "--set", "networkPolicy.enabled=true",
               "--set", "localCA.namespaces={shop,bank}", "--set", "webhook.failurePolicy=Ignore"],
}


def helm(*args, check=True) -> subprocess.CompletedProcess:
    return subprocess.run([HELM, *args], capture_output=True, text=True, check=check)


def render(*extra) -> list[dict]:
    out = helm("template", "rel", str(CHART), "--namespace", "sds-system", *extra).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_lint_strict():
    r = helm("lint", "--strict", str(CHART), check=False)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("case", list(MATRIX))
def test_rendered_manifests_validate_strictly(case):
    docs = render(*MATRIX[case])
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ServiceAccount", "ConfigMap", "PodDisruptionBudget",
            "MutatingWebhookConfiguration"} <= kinds
    for d in docs:
        if d["kind"] in CRDS:
            continue
        kubernetes_validate.validate(d, "1.33", strict=True)
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    InjectorConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))  # the webhook accepts it
    mwc = next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")["webhooks"][0]
    assert mwc["sideEffects"] == "None" and mwc["admissionReviewVersions"] == ["v1"]
    assert mwc["reinvocationPolicy"] == "IfNeeded" and mwc["timeoutSeconds"] == 5
    assert mwc["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                             "resources": ["pods"], "scope": "Namespaced"}]
    excluded = next(e for e in mwc["namespaceSelector"]["matchExpressions"] if e["operator"] == "NotIn")["values"]
    assert {"kube-system", "kube-public", "kube-node-lease", "sds-system"} <= set(excluded)
    assert mwc["objectSelector"]["matchExpressions"][0]["values"] == ["webhook"]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["template"]["metadata"]["labels"]["sds-injector.io/component"] == "webhook"
    if case == "cert-manager":
        assert "caBundle" not in mwc["clientConfig"]
        assert next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")["metadata"]["annotations"][
            "cert-manager.io/inject-ca-from"] == "sds-system/rel-sds-injector"
    rbac = [d for d in docs if d["kind"].startswith("ClusterRole")]
    assert not rbac, "the default name-based policy needs no API access"


def test_label_policy_gets_only_namespace_read_rbac(tmp_path):
    values = tmp_path / "v.yaml"
    values.write_text(yaml.safe_dump({"config": {"namespacePolicy": {"rules": [
        {"namespaceSelector": {"matchLabels": {"tier": "prod"}}, "environments": ["prod"]}]}}}))
    docs = render("-f", str(values))
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}]


@pytest.mark.parametrize("args,message", [
    (["--set", "replicaCount=two"], "replicaCount"),
    (["--set", "webhook.failurePolicy=Maybe"], "failurePolicy"),
    (["--set", "webhook.timeoutSeconds=60"], "timeoutSeconds"),
    (["--set", "surprise=1"], "surprise"),
    (["--set", "image.pullpolicy=Always"], "pullpolicy"),
    (["--set", "config.agent.source=ldap"], "source"),
])
def test_bad_values_are_rejected_with_readable_errors(args, message):
    r = helm("template", "rel", str(CHART), *args, check=False)
    assert r.returncode != 0
    assert "values don't meet the specifications of the schema" in r.stderr and message in r.stderr, r.stderr


def test_rendered_webhook_certificate_serves_admission_over_https(procs, tmp_path):
    import httpx

    from tests.webhook_util import pod, review

    docs = render()
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "rel-sds-injector-tls")
    bundle = base64.b64decode(next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")
                              ["webhooks"][0]["clientConfig"]["caBundle"])
    assert bundle == base64.b64decode(secret["data"]["ca.crt"])
    crt, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    crt.write_bytes(base64.b64decode(secret["data"]["tls.crt"]))
    key.write_bytes(base64.b64decode(secret["data"]["tls.key"]))
    from tests.conftest import remember_key

    remember_key(key.read_bytes())
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    dns = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "rel-sds-injector.sds-system.svc" in dns
    port = free_port()
    procs.add(Proc([sys.executable, "-m", "webhook", "serve", "--port", str(port), "--cert-file", str(crt),
                    "--key-file", str(key), "--config", str(ROOT / "examples" / "config.yaml")],
                   tmp_path / "webhook.log").start())
    import ssl

    ctx = ssl.create_default_context(cadata=bundle.decode())
    name = "rel-sds-injector.sds-system.svc"
    client = httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ctx, timeout=5)

    def post():
        return client.post("/mutate", json=review(pod({"sds-injector.io/env": "dev"})),
                           extensions={"sni_hostname": name})
    r = wait_for(lambda: post(), what="webhook over HTTPS with the chart's certificate")
    assert r.status_code == 200 and r.json()["response"]["allowed"] and r.json()["response"]["patch"]
