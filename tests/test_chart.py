"""The Helm chart with the real helm binary: lint, render over a matrix of values, strict
schema validation of every manifest, value schema errors, and the rendered webhook TLS."""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from cryptography import x509

from devkit.harness import Proc, free_port, wait_for
from sds_core.policy.config import InjectorConfig

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
               "--set", "webhook.failurePolicy=Ignore"],
    "signer-vault": ["--set", "issuer.caMode=vault", "--set", "issuer.vault.address=https://vault:8200"],
    "jwks": ["--set", "issuer.tokenVerifier=jwks", "--set", "issuer.certTTLSeconds=7200",
             "--set", "issuer.auditKeySecret=sds-audit-key", "--set", "issuer.caMode=plugin"],
    "files": ["--set", "config.agent.source=files"],
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
                             "resources": ["pods"], "scope": "Namespaced"},
                            {"operations": ["UPDATE"], "apiGroups": [""], "apiVersions": ["v1"],
                             "resources": ["pods/ephemeralcontainers"], "scope": "Namespaced"}]
    excluded = next(e for e in mwc["namespaceSelector"]["matchExpressions"] if e["operator"] == "NotIn")["values"]
    assert {"kube-system", "kube-public", "kube-node-lease", "sds-system"} <= set(excluded)
    # The webhook's own pods are out of scope by their namespace (which tenants cannot choose),
    # never by a pod label: any tenant may set a label on its own pods to skip the webhook.
    assert "objectSelector" not in mwc
    dep = next(d for d in docs if d["kind"] == "Deployment")
    if case == "cert-manager":
        assert "caBundle" not in mwc["clientConfig"]
        assert next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")["metadata"]["annotations"][
            "cert-manager.io/inject-ca-from"] == "sds-system/rel-sds-injector"
    rbac = {d["kind"]: d for d in docs if d["kind"] in ("ClusterRole", "Role")}
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    if case.startswith("vault") or case == "files":
        # Without the issuer, only the namespace environment label needs the API: read namespaces.
        assert rbac["ClusterRole"]["rules"] == [{"apiGroups": [""], "resources": ["namespaces"],
                                                 "verbs": ["get", "list", "watch"]}], rbac
        assert "WEBHOOK_ISSUER" not in env
        return
    # The issuer: read-only watches, token reviews (or the issuer keys), one Secret of its own.
    assert env["WEBHOOK_ISSUER"]["value"] == "true" and env["ISSUER_CONFIG"]["value"] == env["WEBHOOK_CONFIG"]["value"]
    rules = rbac["ClusterRole"]["rules"]
    assert rules[0] == {"apiGroups": [""], "resources": ["namespaces", "pods", "services"],
                        "verbs": ["get", "list", "watch"]}
    assert rules[1] == ({"nonResourceURLs": ["/.well-known/openid-configuration", "/openid/v1/jwks"], "verbs": ["get"]}
                        if case == "jwks" else
                        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]})
    assert all("secrets" not in r.get("resources", []) for r in rules), "no Secret access cluster-wide"
    assert rbac["Role"]["metadata"].get("namespace") in (None, "sds-system")
    assert {"get", "update"} == set(rbac["Role"]["rules"][1]["verbs"])
    assert rbac["Role"]["rules"][1]["resourceNames"] == ["rel-sds-injector-ca"]
    agent = yaml.safe_load(cm["data"]["config.yaml"])["agent"]
    assert agent["issuer"]["address"] == "https://rel-sds-injector.sds-system.svc:15012"
    svc = next(d for d in docs if d["kind"] == "Service")
    assert {"name": "issuer", "port": 15012, "targetPort": "issuer", "protocol": "TCP"} in svc["spec"]["ports"]


def _pem_blocks(text: str, label: str) -> list[bytes]:
    import re

    return [m.group(0).encode() for m in re.finditer(
        rf"-----BEGIN {label}-----[A-Za-z0-9+/=\s]+?-----END {label}-----", text)]


@pytest.mark.parametrize("case", list(MATRIX))
def test_no_ca_key_is_rendered_and_no_secret_leaves_the_release_namespace(case):
    """Whatever the values: the only private key Helm renders is the webhook's serving key,
    never a CA's; every Secret is in the release namespace."""
    from cryptography.hazmat.primitives import serialization

    docs = render(*MATRIX[case])
    text = yaml.safe_dump_all(docs)
    for d in docs:  # Secret data is base64: decode it so nothing hides there
        if d["kind"] == "Secret":
            assert d["metadata"].get("namespace", "sds-system") == "sds-system", d["metadata"]
            text += "\n".join(base64.b64decode(v).decode(errors="replace") for v in (d.get("data") or {}).values())
    certs = [x509.load_pem_x509_certificate(b) for b in _pem_blocks(text, "CERTIFICATE")]
    ca_keys = {c.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
               for c in certs if c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca}
    keys = _pem_blocks(text, "(?:RSA |EC )?PRIVATE KEY")
    for k in keys:
        pub = serialization.load_pem_private_key(k, None).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        assert pub not in ca_keys, "a CA private key is rendered"
    assert len(keys) == (1 if case != "cert-manager" else 0)  # the webhook's own serving key only
    assert not [d for d in docs if d["kind"] == "Secret" and "ca" in d["metadata"]["name"].split("-")[-1:]]


def test_label_policy_gets_only_namespace_read_rbac(tmp_path):
    values = tmp_path / "v.yaml"
    values.write_text(yaml.safe_dump({"config": {"agent": {"source": "vault"}, "namespacePolicy": {"rules": [
        {"namespaceSelector": {"matchLabels": {"tier": "prod"}}, "environments": ["prod"]}]}}}))
    docs = render("-f", str(values))
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}]


@pytest.mark.parametrize("args,message", [
    (["--set", "replicaCount=two"], "replicaCount"),
    (["--set", "webhook.failurePolicy=Maybe"], "failurePolicy"),
    (["--set", "webhook.timeoutSeconds=60"], "timeoutSeconds"),
    (["--set", "surprise=1"], "surprise"),
    (["--set", "image.pullpolicy=Always"], "pullpolicy"),
    (["--set", "config.agent.source=ldap"], "source"),
    # config is the webhook's own model (generated): unknown keys and wrong types anywhere in it
    (["--set", "config.agent.sourc=vault"], "sourc"),
    (["--set", "config.agent.vault.pollSeconds=soon"], "pollSeconds"),
    (["--set", "config.businessLineCAs=maybe"], "businessLineCAs"),
    (["--set", "config.namespacePolicy.rules[0].namespaces[0]=a", "--set", "config.namespacePolicy.rules[0].envs[0]=x"],
     "envs"),
])
def test_bad_values_are_rejected_with_readable_errors(args, message):
    r = helm("template", "rel", str(CHART), *args, check=False)
    assert r.returncode != 0
    assert "values don't meet the specifications of the schema" in r.stderr and message in r.stderr, r.stderr


def test_rendered_webhook_certificate_serves_admission_over_https(procs, tmp_path, kubeconfig):
    import httpx

    from tests.webhook_util import pod, review

    docs = render()
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "rel-sds-injector-tls")
    bundle = base64.b64decode(next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")
                              ["webhooks"][0]["clientConfig"]["caBundle"])
    assert bundle == base64.b64decode(secret["data"]["ca.crt"])
    crt, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    crt.write_bytes(base64.b64decode(secret["data"]["tls.crt"]))
    (tmp_path / "ca.crt").write_bytes(base64.b64decode(secret["data"]["ca.crt"]))  # WEBHOOK_ISSUER_CA_FILE
    key.write_bytes(base64.b64decode(secret["data"]["tls.key"]))
    from tests.conftest import remember_key

    remember_key(key.read_bytes())
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    dns = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "rel-sds-injector.sds-system.svc" in dns
    port = free_port()
    procs.add(Proc([sys.executable, "-m", "webhook", "serve", "--port", str(port), "--cert-file", str(crt),
                    "--key-file", str(key), "--config", str(ROOT / "examples" / "config.yaml"),
                    "--kubeconfig", str(kubeconfig)],
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


GATEWAY = ["--set", "gateway.enabled=true"]


@pytest.mark.parametrize("extra", [[], ["--set", "gateway.source=files", "--set", "gateway.ecdhCurves={X25519MLKEM768,X25519}"],
                                   ["--set", "gateway.source=vault", "--set", "config.agent.vault.addresses={https://vault:8200}",
                                    "--set", "gateway.ocspStapling=true", "--set", "gateway.ocspStaplePolicy=MUST_STAPLE"]])
def test_gateway_renders_strictly_and_passes_pod_security_restricted(extra):
    from devkit.pod_security import violations
    from gateway.envoy import bootstrap

    docs = render(*GATEWAY, *extra)
    for d in docs:
        if d["kind"] not in CRDS:
            kubernetes_validate.validate(d, "1.33", strict=True)
    deps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    gw = deps["rel-sds-injector-gateway"]
    assert gw["spec"]["replicas"] >= 2
    for dep in deps.values():  # the webhook too
        assert violations(dep["spec"]["template"]["spec"]) == [], dep["metadata"]["name"]
    # No selector of the webhook matches a gateway pod, and the reverse.
    labels = gw["spec"]["template"]["metadata"]["labels"]
    webhook_sel = deps["rel-sds-injector"]["spec"]["selector"]["matchLabels"]
    assert not all(labels.get(k) == v for k, v in webhook_sel.items())
    objs = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert objs[("PodDisruptionBudget", "rel-sds-injector-gateway")]["spec"]["selector"]["matchLabels"] == \
        gw["spec"]["selector"]["matchLabels"] == objs[("Service", "rel-sds-injector-gateway")]["spec"]["selector"]
    # The rendered bootstrap is the one the code builds.
    cm = objs[("ConfigMap", "rel-sds-injector-gateway-envoy")]
    assert yaml.safe_load(cm["data"]["bootstrap.yaml"]) == bootstrap(
        "/var/run/sds/sds.sock", "/var/run/sds-admin/admin.sock", max_connections=50000)
    # One connection budget: the backends cluster's circuit breakers (the agent's setting) are
    # Envoy's downstream limit, not Envoy's default of 1,024 for every tenant together.
    agent_env = {e["name"]: e.get("value") for c in gw["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
    assert agent_env["SDS_GATEWAY_MAX_CONNECTIONS"] == "50000"
    # Least privilege: claims (and their status) and namespace labels; no ConfigMap, no Secret.
    role = objs[("ClusterRole", "rel-sds-injector-gateway")]
    assert role["rules"] == [
        {"apiGroups": ["sds-injector.io"], "resources": ["hostnameclaims"], "verbs": ["list", "watch"]},
        {"apiGroups": ["sds-injector.io"], "resources": ["hostnameclaims/status"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}]
    spec = gw["spec"]["template"]["spec"]
    issuer_ca = [v for v in spec["volumes"] if v["name"] == "issuer-ca"]
    webhook_env = {e["name"]: e.get("value") for e in deps["rel-sds-injector"]["spec"]["template"]["spec"]
                   ["containers"][0]["env"]}
    if not extra:
        # Only ca.crt of the webhook's TLS Secret: its key never reaches the gateway pod.
        assert issuer_ca[0]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
        assert json.loads(webhook_env["ISSUER_GATEWAY_IDENTITIES"]) == ["sds-system/rel-sds-injector-gateway"]
        assert {"apiGroups": ["sds-injector.io"], "resources": ["hostnameclaims"], "verbs": ["list", "watch"]} in \
            objs[("ClusterRole", "rel-sds-injector")]["rules"]
    else:
        assert not issuer_ca and "ISSUER_GATEWAY_IDENTITIES" not in webhook_env
        agent_env = {e["name"]: e.get("value") for e in spec["containers"][1]["env"]}
        token = next(v for v in spec["volumes"] if v["name"] == "token")["projected"]["sources"][0]
        if "gateway.source=vault" in extra:
            # The pods' Vault settings, a token for Vault's audience, stapling as asked.
            assert agent_env["SDS_VAULT_ADDRESSES"] == "https://vault:8200"
            assert agent_env["SDS_VAULT_PKI_PATH"] == "pki_{business_line}/sign/{env}"
            assert token["serviceAccountToken"]["audience"] == "vault"
            assert agent_env["SDS_OCSP_STAPLING"] == "true" and agent_env["SDS_GATEWAY_OCSP_STAPLE_POLICY"] == "MUST_STAPLE"
        else:
            assert agent_env["SDS_GATEWAY_ECDH_CURVES"] == "X25519MLKEM768,X25519"
    # What the chart sets, the gateway agent accepts (unknown settings are errors there).
    from gateway.settings import GatewaySettings

    agent_env = {e["name"]: e.get("value") for e in spec["containers"][1]["env"]}
    GatewaySettings(**{k[4:].lower(): v for k, v in agent_env.items() if k.startswith("SDS_") and v is not None})


def test_pod_security_check_catches_what_restricted_forbids():
    """The checker can fail: each of these breaks the restricted profile."""
    from devkit.pod_security import violations

    ok = {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
          "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": False,
                                                          "capabilities": {"drop": ["ALL"]}}}]}
    assert violations(ok) == []
    bad = [
        {"hostNetwork": True},
        {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]},
        {"containers": [{"name": "c", "securityContext": {"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}}}]},
        {"containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": True, "capabilities": {"drop": ["ALL"]}}}]},
        {"securityContext": {"runAsNonRoot": False}},
        {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "Unconfined"}}},
        {"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}],
                         "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]},
    ]
    for change in bad:
        spec = json.loads(json.dumps(ok))
        for k, v in change.items():
            spec[k] = v
        assert violations(spec), change


def test_the_config_schema_is_generated_from_the_configuration_model():
    """values.schema.json's `config` is the webhook's InjectorConfig (python -m webhook
    chart-schema); a field added to the model without regenerating the schema fails here."""
    from sds_core.policy.config import chart_values_schema

    current = json.loads((CHART / "values.schema.json").read_text())
    assert (CHART / "values.schema.json").read_text() == chart_values_schema(current), \
        "stale: python -m webhook chart-schema > charts/sds-injector/values.schema.json"


def test_the_notes_say_the_ca_secret_is_kept_and_how_to_destroy_it():
    out = helm("install", "sds", str(CHART), "-n", "sds-system", "--dry-run=client").stdout
    notes = out.split("NOTES:", 1)[1]
    assert "KEPT by `helm uninstall`" in notes
    assert "kubectl delete secret sds-sds-injector-ca -n sds-system" in notes


@pytest.mark.parametrize("example", sorted(p for p in (ROOT / "examples").glob("*.yaml") if p.name != "config.yaml"),
                         ids=lambda p: p.name)
def test_every_shipped_example_passes_pod_security_restricted_once_injected(example):
    """The examples are written for `restricted` (README): their own containers and the
    sidecars the webhook adds. Checked with devkit/pod_security.py, a model of the profile."""
    from devkit.pod_security import violations
    from sds_core.policy.config import load_config
    from webhook.manifests import inject_document

    cfg = load_config(ROOT / "examples" / "config.yaml")
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
    templates = [d for d in docs if d.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Pod")]
    assert templates, f"{example.name} holds no workload"
    for i, doc in enumerate(templates):
        injected = inject_document(doc, cfg, None, i, lambda _: None) or doc
        spec = injected["spec"] if injected["kind"] == "Pod" else injected["spec"]["template"]["spec"]
        assert any(c["name"] == "sds-agent" for c in spec.get("initContainers", []) + spec["containers"])
        assert violations(spec) == [], (example.name, violations(spec))


def test_rbac_in_gateway_mode_is_as_narrow_as_rbac_allows():
    """What each service account may do, rule by rule: the only write verbs are creating
    TokenReviews, the CA Secret and the issuer-CA ConfigMaps (create cannot be limited by name;
    get, update and delete are, to that one Secret and that one ConfigMap name), the gateway's
    patch of HostnameClaim status, and the tenants' create/delete of HostnameClaims (aggregated
    into edit/admin). Claims are read as HostnameClaims: no account lists or watches ConfigMaps
    cluster-wide (only the revocation records of the release namespace). Nothing may read or
    write Secrets cluster-wide."""
    docs = render("--set", "gateway.enabled=true")
    roles = {(d["kind"], d["metadata"]["name"]): d["rules"] for d in docs if d["kind"] in ("ClusterRole", "Role")}
    claims_edit = {"apiGroups": ["sds-injector.io"], "resources": ["hostnameclaims"],
                   "verbs": ["get", "list", "watch", "create", "delete"]}
    status = {"apiGroups": ["sds-injector.io"], "resources": ["hostnameclaims/status"], "verbs": ["patch"]}
    assert status in roles[("ClusterRole", "rel-sds-injector-gateway")]
    assert roles[("ClusterRole", "rel-sds-injector-gateway-claims-edit")] == [claims_edit]
    for (kind, name), rules in roles.items():
        for r in rules:
            writes = set(r.get("verbs", [])) - {"get", "list", "watch"}
            if kind == "ClusterRole" and "configmaps" in r.get("resources", []):
                assert not {"list", "watch"} & set(r["verbs"]), (name, r)
            if r in (claims_edit, status):
                continue
            if "secrets" in r.get("resources", []):
                assert kind == "Role", f"{name}: Secrets only in the release namespace"
                assert writes <= {"create", "update"} and ("update" not in writes or r.get("resourceNames")), r
            elif "configmaps" in r.get("resources", []) and writes:
                assert writes == {"create"} or r.get("resourceNames") == ["sds-injector-issuer-ca"], (name, r)
                assert writes <= {"create", "update", "delete"} and "list" not in r["verbs"], (name, r)
            elif writes:
                assert r == {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"],
                             "verbs": ["create"]}, (name, r)
            elif "configmaps" in r.get("resources", []):
                assert set(r["verbs"]) in ({"list", "watch"}, {"get"}), (name, r)


def test_workloads_are_validated_fail_open_on_the_same_namespaces():
    docs = render()
    vwc = next(d for d in docs if d["kind"] == "ValidatingWebhookConfiguration")["webhooks"][0]
    mwc = next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")["webhooks"][0]
    assert vwc["failurePolicy"] == "Ignore" and vwc["clientConfig"]["service"]["path"] == "/validate"
    assert vwc["namespaceSelector"] == mwc["namespaceSelector"] and vwc["clientConfig"]["caBundle"]
    assert {r for rule in vwc["rules"] for r in rule["resources"]} == {
        "deployments", "statefulsets", "daemonsets", "replicasets", "jobs", "cronjobs"}
    assert not [d for d in render("--set", "webhook.validateWorkloads=false")
                if d["kind"] == "ValidatingWebhookConfiguration"]


def test_the_issuers_inventory_port_is_closed_to_the_pod_network_by_default():
    """/inventory and /metrics list every pod, SPIFFE ID and serial: by default they are on their own
    port, which the default NetworkPolicy opens to the monitoring namespace only, while the issuer
    and webhook ports stay open to every pod and the API server."""
    docs = render()
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rel-sds-injector")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    ops_port = int(env["ISSUER_OPS_PORT"])
    open_ports = {p["port"] for rule in policy["spec"]["ingress"] if "from" not in rule for p in rule["ports"]}
    assert open_ports == {8443, 15012} and ops_port not in open_ports
    scrape = [rule for rule in policy["spec"]["ingress"] if "from" in rule]
    assert [p["port"] for p in scrape[0]["ports"]] == [ops_port]
    assert scrape[0]["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    monitor = next(d for d in render("--set", "metrics.serviceMonitor.enabled=true") if d["kind"] == "ServiceMonitor")
    assert "issuer-ops" in [e["port"] for e in monitor["spec"]["endpoints"]]
    # Nobody may scrape: the rule goes, the port stays closed.
    closed = next(d for d in render("--set", "networkPolicy.metricsFrom=null") if d["kind"] == "NetworkPolicy")
    assert all("from" not in rule for rule in closed["spec"]["ingress"])
