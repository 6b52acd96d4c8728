"""AdmissionReview handling in-process: decisions, policy matrix, idempotency, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import jsonpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webhook import admission
from webhook import layout
from webhook.existing import strip
from webhook.patch import apply
from sds_core.policy.config import InjectorConfig, load_config
from webhook.injector import decide
from devkit.harness import wait_for
from tests.webhook_util import decode_patch, pod, review

CONFIG = load_config(Path(__file__).parent.parent / "examples" / "config.yaml")


def call(body, cfg=CONFIG, labels=None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, out = admission.handle(raw, lambda: cfg, labels)
    return status, json.loads(out)


def test_round_trip_echoes_uid_and_patches():
    r = review(pod({"sds-injector.io/env": "dev"}))
    status, out = call(r)
    assert status == 200 and out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    resp = out["response"]
    assert resp["uid"] == r["request"]["uid"] and resp["allowed"] and resp["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(r["request"]["object"], decode_patch(out))
    assert [c["name"] for c in patched["spec"]["initContainers"]] == ["sds-agent", "sds-envoy"]
    assert all(c["restartPolicy"] == "Always" for c in patched["spec"]["initContainers"])


def test_dry_run_and_reinvocation_give_the_same_answer():
    p = pod({"sds-injector.io/env": "dev"})
    _, a = call(review(p))
    _, b = call(review(p, dry_run=True))
    assert decode_patch(a) == decode_patch(b)
    injected = jsonpatch.apply_patch(p, decode_patch(a))
    _, again = call(review(injected))  # reinvocationPolicy: IfNeeded
    assert again["response"]["allowed"] and "patch" not in again["response"]


def test_older_injection_is_stripped_and_redone_never_doubled():
    p = pod({"sds-injector.io/env": "dev"})
    old_cfg = InjectorConfig.model_validate({**CONFIG.model_dump(by_alias=True), "images": {"envoy": "envoy:old"}})
    old = jsonpatch.apply_patch(p, decide(p, "shop", old_cfg).patch)
    out = decide(old, "shop", CONFIG)
    assert out.result == "injected" and out.reason == "reinjected"
    redone = jsonpatch.apply_patch(old, out.patch)
    names = [c["name"] for c in redone["spec"]["initContainers"]]
    assert names == ["sds-agent", "sds-envoy"]
    assert redone["spec"]["initContainers"][1]["image"] == CONFIG.images.envoy
    assert redone == jsonpatch.apply_patch(p, decide(p, "shop", CONFIG).patch)


def test_classic_sidecar_mode():
    cfg = InjectorConfig.model_validate({**CONFIG.model_dump(by_alias=True), "nativeSidecars": False})
    p = pod({"sds-injector.io/env": "dev"})
    injected = jsonpatch.apply_patch(p, decide(p, "shop", cfg).patch)
    assert [c["name"] for c in injected["spec"]["containers"]] == ["app", "sds-agent", "sds-envoy"]
    assert "initContainers" not in injected["spec"]
    assert all("restartPolicy" not in c for c in injected["spec"]["containers"])


@pytest.mark.parametrize("annotations,reason", [
    ({"sds-injector.io/inject": "false", "sds-injector.io/env": "dev"}, "opted_out"),
    ({"sds-injector.io/env": "dev"}, "system_namespace"),
])
def test_skips(annotations, reason):
    ns = "kube-system" if reason == "system_namespace" else "shop"
    out = decide(pod(annotations, ns), ns, CONFIG)
    assert (out.result, out.reason) == ("skipped", reason)


# Namespace × env × business line → allowed, or the denial's key phrase (examples/config.yaml).
MATRIX = [
    ("default", "dev", None, None),
    ("default", "dev", "corporate", "certificates ['corporate-service-cert'] (allowed: default-*)"),
    ("default", "prod", None, "environment 'prod' (allowed: dev)"),
    ("default", "dev", "retail", "certificates ['retail-service-cert'] (allowed: default-*)"),
    ("default", "staging", None, "environment 'staging' (allowed: dev)"),
    ("shop-prod", "prod", "retail", None),
    ("shop-prod", "prod", "corporate", None),
    ("shop-prod", "prod", None, None),
    ("shop-prod", "dev", "retail", "environment 'dev' (allowed: prod)"),
    ("bank-prod", "staging", "corporate", "environment 'staging' (allowed: prod)"),
    ("shop", "dev", "retail", None),
    ("shop", "staging", "corporate", None),
    ("shop", "prod", "retail", "environment 'prod' (allowed: dev, staging)"),
    ("bank", "prod", "corporate", "environment 'prod' (allowed: dev, staging)"),
    ("payments", "dev", None, "is not covered by any namespacePolicy rule"),
    ("payments", "prod", "retail", "is not covered by any namespacePolicy rule"),
]


@pytest.mark.parametrize("namespace,env,bl,denial", MATRIX)
def test_policy_matrix(namespace, env, bl, denial):
    annotations = {"sds-injector.io/env": env}
    if namespace == "default":  # the seed's rule: only default-prefixed names there
        annotations["sds-injector.io/service"] = "default-web"
    if bl:
        annotations["sds-injector.io/business-line"] = bl
    _, out = call(review(pod(annotations, namespace), namespace), labels=lambda ns: {})  # known: no labels
    resp = out["response"]
    if denial is None:
        assert resp["allowed"] and resp["patch"]
    else:
        assert not resp["allowed"] and resp["status"]["code"] in (403,)
        msg = resp["status"]["message"]
        assert denial in msg
        if "not covered" not in denial:
            assert f"namespace {namespace!r}" in msg and "namespacePolicy.rules[" in msg and f"env={env}" in msg


def test_label_selected_policy_uses_cached_namespace_labels(tmp_path):
    """Labels come from a watch-based cache of the API (the double, through the kubernetes
    client): 50 admissions, one list; a label added later is seen through the watch."""
    from devkit.kube_api import KubeAPI
    from sds_core.kube.client import api_client
    from sds_core.kube.namespaces import NamespaceLabels

    kube = KubeAPI().start()
    kube.add_namespace("payments", {"sds-injector.io/tier": "prod"})
    (tmp_path / "kubeconfig").write_text(kube.kubeconfig())
    labels = NamespaceLabels(api_client(tmp_path / "kubeconfig")).start()
    try:
        wait_for(lambda: labels.informer.synced.is_set(), what="namespace cache synced")
        p = pod({"sds-injector.io/env": "prod"}, "payments")
        for _ in range(50):
            assert call(review(p, "payments"), labels=labels)[1]["response"]["allowed"]
        assert [r for r in kube.requests if r[1] == "/api/v1/namespaces"] == [("GET", "/api/v1/namespaces")] * len(
            [r for r in kube.requests if r[1] == "/api/v1/namespaces"]) and len(
            [r for r in kube.requests if r[1] == "/api/v1/namespaces"]) <= 2, "one list (and a watch), not one per pod"
        kube.add_namespace("ledger", {"sds-injector.io/tier": "prod"})
        wait_for(lambda: call(review(pod({"sds-injector.io/env": "prod"}, "ledger"), "ledger"), labels=labels)[1][
            "response"]["allowed"], what="a new namespace seen through the watch")
    finally:
        labels.stop()
        kube.stop()


@pytest.mark.parametrize("mode", ["hang", "error"])
def test_an_api_server_in_trouble_never_freezes_admissions_and_label_rules_fail_closed(mode, tmp_path):
    import time

    from devkit.kube_api import KubeAPI
    from sds_core.kube.client import api_client
    from sds_core.kube.namespaces import NamespaceLabels

    kube = KubeAPI().start()
    kube.mode = mode
    (tmp_path / "kubeconfig").write_text(kube.kubeconfig())
    labels = NamespaceLabels(api_client(tmp_path / "kubeconfig")).start()
    try:
        t0 = time.monotonic()
        # "payments" matches no name rule; the label rule cannot be decided: denied, not let
        # through to a later, wider rule, and answered at once.
        _, out = call(review(pod({"sds-injector.io/env": "prod"}, "payments"), "payments"), labels=labels)
        assert time.monotonic() - t0 < 1.0
        resp = out["response"]
        assert not resp["allowed"] and resp["status"]["code"] == 503 and "labels are not known" in resp["status"]["message"]
        assert resp["status"]["reason"] == "ServiceUnavailable"
        # Name rules before any label rule still decide.
        assert call(review(pod({"sds-injector.io/env": "dev"}, "shop"), "shop"), labels=labels)[1]["response"]["allowed"]
    finally:
        labels.stop()
        kube.mode = "ok"
        kube.stop()


@pytest.mark.parametrize("annotations,fragment", [
    ({"sds-injector.io/env": "qa"}, "unknown environment 'qa'; known: prod, staging, dev"),
    ({"sds-injector.io/env": "dev", "sds-injector.io/business-line": "wholesale"},
     "unknown business line 'wholesale'; known: corporate, retail"),
    ({"sds-injector.io/env": "dev", "sds-injector.io/inbound": "8443"}, "expected TLS_PORT:APP_PORT"),
    ({"sds-injector.io/env": "dev", "sds-injector.io/inbound": "99999:80"}, "not a port number"),
    ({"sds-injector.io/env": "dev", "sds-injector.io/mtls": "yes"}, 'expected "true" or "false"'),
    ({"sds-injector.io/busines-line": "retail"}, "did you mean sds-injector.io/business-line?"),
    ({"sds-injector.io/env": "dev", "sds-injector.io/proxy-memory": "lots"}, "not a Kubernetes quantity"),
    ({}, "annotation sds-injector.io/env is required"),
])
def test_invalid_annotations_are_clear_400_denials(annotations, fragment):
    _, out = call(review(pod(annotations)))
    resp = out["response"]
    assert not resp["allowed"] and resp["status"]["code"] == 400 and fragment in resp["status"]["message"]


BAD_BODIES = [
    b"", b"{", b"[]", b"null", b'"x"',
    json.dumps({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "u"}}).encode(),
    json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(),
    json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 5}}).encode(),
    b"\xff\xfe garbage",
]


@pytest.mark.parametrize("body", BAD_BODIES)
def test_malformed_reviews_get_400_with_a_message(body):
    status, out = call(body)
    assert status == 400 and out["error"]


@pytest.mark.parametrize("mutate,fragment", [
    (lambda r: r["request"].update(kind={"group": "apps", "version": "v1", "kind": "Deployment"}), "only mutates pods"),
    (lambda r: r["request"].pop("object"), "request.object is missing"),
    (lambda r: r["request"].update(object={"metadata": {}}), "request.object.spec must be an object"),
    (lambda r: r["request"].update(object=[1, 2]), "request.object is missing or not an object"),
    (lambda r: r["request"]["object"]["metadata"].update(annotations={"sds-injector.io/env": 5}), "must be a string"),
])
def test_bad_requests_are_denied_with_reason(mutate, fragment):
    r = review(pod({"sds-injector.io/env": "dev"}))
    mutate(r)
    status, out = call(r)
    assert status == 200 and not out["response"]["allowed"]
    assert fragment in out["response"]["status"]["message"]
    assert out["response"]["uid"] == r["request"]["uid"]


def test_update_operation_is_admitted_unchanged():
    status, out = call(review(pod({"sds-injector.io/env": "dev"}), operation="UPDATE"))
    assert status == 200 and out["response"]["allowed"] and "patch" not in out["response"]


def test_internal_error_is_a_denial_naming_the_uid(monkeypatch):
    from webhook import injector

    monkeypatch.setattr(injector, "decide", lambda *a, **k: 1 / 0)
    r = review(pod({"sds-injector.io/env": "dev"}))
    status, out = call(r)
    assert status == 200 and not out["response"]["allowed"]
    assert r["request"]["uid"] in out["response"]["status"]["message"]
    assert out["response"]["status"]["reason"] == "InternalError"  # was labelled BadRequest


@pytest.mark.parametrize("code, reason", [(400, "BadRequest"), (403, "Forbidden"), (500, "InternalError"),
                                          (503, "ServiceUnavailable"), (429, "TooManyRequests"), (599, "InternalError")])
def test_each_denial_code_carries_its_kubernetes_status_reason(code, reason):
    assert admission.status_reason(code) == reason


names = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
containers = st.lists(st.builds(lambda n, ports: {"name": n, "image": "img:1",
                                                  **({"ports": [{"containerPort": p} for p in ports]} if ports else {})},
                                names, st.lists(st.integers(1024, 7000), max_size=2, unique=True)),
                      min_size=1, max_size=4, unique_by=lambda c: c["name"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(containers=containers,
       init=st.lists(st.builds(lambda n: {"name": "init-" + n, "image": "img:1"}, names), max_size=2,
                     unique_by=lambda c: c["name"]),
       volumes=st.lists(st.builds(lambda n: {"name": "vol-" + n, "emptyDir": {}}, names), max_size=3,
                        unique_by=lambda v: v["name"]),
       extra_annotations=st.dictionaries(st.sampled_from(["a", "b/c", "x.io/y~z"]), st.text(max_size=5), max_size=2),
       env=st.sampled_from(["dev", "staging"]), bl=st.sampled_from([None, "retail", "corporate"]),
       inbound=st.booleans())
def test_injection_is_idempotent_on_generated_pods(containers, init, volumes, extra_annotations, env, bl, inbound):
    annotations = {**extra_annotations, "sds-injector.io/env": env}
    if bl:
        annotations["sds-injector.io/business-line"] = bl
    if inbound:
        annotations["sds-injector.io/inbound"] = "8443:8080"
    spec = {"containers": containers}
    if init:
        spec["initContainers"] = init
    if volumes:
        spec["volumes"] = volumes
    p = {"metadata": {"name": "p", "namespace": "shop", "annotations": annotations}, "spec": spec}
    out = decide(p, "shop", CONFIG)
    assert out.result == "injected", out.message
    once = jsonpatch.apply_patch(p, out.patch)
    assert once == apply(p, out.plan)
    assert decide(once, "shop", CONFIG).reason == "already_injected"
    assert [o["op"] for o in out.patch] == ["add"] * len(out.patch)
    assert sum(o["path"] == "/spec/volumes" for o in out.patch) <= 1
    # Stripping gives back exactly the original pod.
    assert strip(once) == p


def test_files_source_mounts_one_secret_per_name():
    cfg = InjectorConfig.model_validate({**CONFIG.model_dump(by_alias=True),
                                         "agent": {**CONFIG.agent.model_dump(by_alias=True), "source": "files"}})
    p = pod({"sds-injector.io/env": "dev", "sds-injector.io/business-line": "retail"})
    injected = jsonpatch.apply_patch(p, decide(p, "shop", cfg).patch)
    agent = injected["spec"]["initContainers"][0]
    mounts = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in injected["spec"]["volumes"] if "secret" in v}
    assert secrets[mounts["/etc/sds/certs/retail-service-cert"]] == "retail-service-cert"
    assert secrets[mounts["/etc/sds/certs/retail-trust-bundle"]] == "retail-trust-bundle"
    assert {"name": "SDS_FILES_ROOT", "value": "/etc/sds/certs"} in agent["env"]


def test_config_file_is_reread_on_change_and_a_bad_file_keeps_the_old(tmp_path, monkeypatch):
    import time as _time

    from sds_core.policy.config import ConfigStore

    path = tmp_path / "config.yaml"
    path.write_text("environments: [prod, dev]\n")
    errors = []
    store = ConfigStore(path, on_error=errors.append)
    assert store.get().environments == ["prod", "dev"]
    clock = [_time.monotonic()]
    monkeypatch.setattr("sds_core.policy.config.time.monotonic", lambda: clock[0])
    path.write_text("environments: [prod, dev, qa]\n")
    clock[0] += 2
    assert store.get().environments == ["prod", "dev", "qa"]
    path.write_text("environments: 5\n")
    clock[0] += 2
    assert store.get().environments == ["prod", "dev", "qa"] and errors and "invalid" in str(errors[0])


def test_annotation_docs_are_generated_from_the_schema():
    from sds_core.policy.annotations import SCHEMA, markdown

    doc = (Path(__file__).parent.parent / "docs" / "annotations.md").read_text()
    assert doc == markdown(), "docs/annotations.md is stale: python -m webhook docs > docs/annotations.md"
    assert all(f"`{a.name}`" in doc for a in SCHEMA)


def test_injected_agent_env_is_understood_by_the_agent(monkeypatch):
    """Every SDS_* variable the webhook writes must be a setting the agent knows."""
    from sds_core.sds.settings import AgentSettings

    cfg = InjectorConfig.model_validate({**CONFIG.model_dump(by_alias=True), "agent": {
        **CONFIG.agent.model_dump(by_alias=True), "source": "vault",
        "vault": {"addresses": ["https://vault-a:8200", "https://vault-b:8200"], "mode": "kv", "crl": True}}})
    p = pod({"sds-injector.io/env": "dev", "sds-injector.io/business-line": "retail"})
    agent = jsonpatch.apply_patch(p, decide(p, "shop", cfg).patch)["spec"]["initContainers"][0]
    for e in agent["env"]:
        monkeypatch.setenv(e["name"], e.get("value", "from-downward-api"))
    s = AgentSettings.load([])
    assert s.source == "vault" and s.vault_addresses == ["https://vault-a:8200", "https://vault-b:8200"]
    assert s.vault_mode == "kv" and s.vault_crl and s.business_line == "retail" and s.env == "dev"
    assert s.certificates == ["retail-service-cert"] and str(s.vault_token_file).endswith("/token")


@pytest.mark.parametrize("irsa", [True, False])
def test_the_aws_source_is_injected_with_irsa_for_the_agent_alone(monkeypatch, irsa):
    """Source aws: the agent's settings (the Private CA's ARN for the pod's environment) and,
    with `roleARN`, IRSA for the agent alone: its own token of the STS audience, the role for
    the pod's namespace; the app container gets neither. Without it, EKS's pod identity webhook
    is relied on and nothing is mounted."""
    from sds_core.sds.settings import AgentSettings

    aws = {"mode": "pca", "regions": ["eu-west-1", "eu-central-1"],
           "pcaARN": "arn:aws:acm-pca:eu-west-1:111122223333:certificate-authority/{env}-ca"}
    if irsa:
        aws["roleARN"] = "arn:aws:iam::111122223333:role/sds-{namespace}-{env}"
    cfg = InjectorConfig.model_validate({**CONFIG.model_dump(by_alias=True), "agent": {
        **CONFIG.agent.model_dump(by_alias=True), "source": "aws", "aws": aws}})
    p = pod({"sds-injector.io/env": "dev", "sds-injector.io/business-line": "retail"})
    spec = jsonpatch.apply_patch(p, decide(p, "shop", cfg).patch)["spec"]
    agent = spec["initContainers"][0]
    env = {e["name"]: e.get("value", "from-downward-api") for e in agent["env"]}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = AgentSettings.load([])
    assert s.source == "aws" and s.aws_mode == "pca" and s.aws_regions == ["eu-west-1", "eu-central-1"]
    assert s.aws_pca_arn == "arn:aws:acm-pca:eu-west-1:111122223333:certificate-authority/dev-ca"
    token = [v for v in spec["volumes"] if v["name"] == "sds-token"]
    app = next(c for c in spec["containers"] if c["name"] == "app")
    assert not [m for m in app.get("volumeMounts", []) if m["name"] == "sds-token"]
    assert not [e for e in app.get("env", []) if e["name"].startswith("AWS_")]
    if irsa:
        assert env["AWS_ROLE_ARN"] == "arn:aws:iam::111122223333:role/sds-shop-dev"
        assert env["AWS_WEB_IDENTITY_TOKEN_FILE"].endswith("/token")
        assert token[0]["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "sts.amazonaws.com"
    else:
        assert not token and "AWS_ROLE_ARN" not in env


@pytest.mark.parametrize("where", ["containers", "initContainers"])
@pytest.mark.parametrize("volume", ["sds-socket", "sds-token", "sds-admin", "sds-files-0"])
def test_a_container_of_the_pod_may_not_mount_the_injectors_volumes(where, volume):
    """Attack: the app names `sds-socket` in its volumeMounts without defining it; once
    injected it would reach the agent (FetchSecrets hands out every private key)."""
    p = pod({"sds-injector.io/env": "dev"})
    thief = {"name": "thief", "image": "x", "volumeMounts": [{"name": volume, "mountPath": "/steal"}]}
    p["spec"].setdefault(where, []).append(thief)
    _, out = call(review(p))
    resp = out["response"]
    assert not resp["allowed"] and resp["status"]["code"] == 403
    assert volume in resp["status"]["message"] and "thief" in resp["status"]["message"]


def test_an_ephemeral_container_may_not_mount_the_injectors_volumes():
    injected = jsonpatch.apply_patch(pod({"sds-injector.io/env": "dev"}),
                                     decode_patch(call(review(pod({"sds-injector.io/env": "dev"})))[1]))
    debug = {"name": "debugger", "image": "busybox", "volumeMounts": [{"name": "sds-socket", "mountPath": "/s"}]}
    r = review({**injected, "spec": {**injected["spec"], "ephemeralContainers": [debug]}}, operation="UPDATE")
    r["request"]["subResource"] = "ephemeralcontainers"
    _, out = call(r)
    assert not out["response"]["allowed"] and "sds-socket" in out["response"]["status"]["message"]
    debug["volumeMounts"] = []
    _, out = call(r)
    assert out["response"]["allowed"] and "patch" not in out["response"]


def _injected(annotations: dict) -> dict:
    return jsonpatch.apply_patch(pod(annotations), decode_patch(call(review(pod(annotations)))[1]))


def test_a_copy_of_an_injected_pod_is_checked_like_any_other():
    """Attack: `kubectl debug --copy-to` (kubectl 1.35's default profile) copies the pod with its
    injection status; a debug container in the copy mounting `sds-token` or `sds-socket` was
    skipped as `already_injected`. The ownership checks run on every pod, injected or not."""
    copy_ = _injected({"sds-injector.io/env": "dev"})
    copy_["spec"]["containers"].append({"name": "debugger", "image": "busybox",
                                        "volumeMounts": [{"name": "sds-token", "mountPath": "/t"}]})
    _, out = call(review(copy_))
    resp = out["response"]
    assert not resp["allowed"] and resp["status"]["code"] == 403
    assert "sds-token" in resp["status"]["message"] and "debugger" in resp["status"]["message"]
    copy_["spec"]["containers"][-1]["volumeMounts"] = []
    _, out = call(review(copy_))
    assert out["response"]["allowed"] and "patch" not in out["response"]  # still just already injected


def test_a_pod_sharing_its_process_namespace_is_denied():
    """Attack: with shareProcessNamespace an app container running as the agent's uid read the
    agent's socket through /proc/<agent pid>/root/... and fetched the pod's private key."""
    for p in (pod({"sds-injector.io/env": "dev"}, shareProcessNamespace=True),
              {**_injected({"sds-injector.io/env": "dev"}), "spec": {
                  **_injected({"sds-injector.io/env": "dev"})["spec"], "shareProcessNamespace": True}}):
        _, out = call(review(p))
        resp = out["response"]
        assert not resp["allowed"] and resp["status"]["code"] == 403, resp
        assert "shareProcessNamespace" in resp["status"]["message"]
    _, out = call(review(pod({"sds-injector.io/env": "dev"}, shareProcessNamespace=False)))
    assert out["response"]["allowed"] and out["response"]["patch"]


ISTIO = {"sds-injector.io/env": "dev", "sidecar.istio.io/inject": "true"}


def test_in_istio_mode_only_istio_proxy_may_mount_the_workload_socket():
    """Attack: in Istio mode the agent serves `default` (with its private key) on Istio's
    `workload-socket`; an app container mounting that volume fetched it over SDS."""
    thief = pod(ISTIO)
    thief["spec"]["containers"].append({"name": "thief", "image": "x",
                                        "volumeMounts": [{"name": "workload-socket", "mountPath": "/s"}]})
    _, out = call(review(thief))
    resp = out["response"]
    assert not resp["allowed"] and "workload-socket" in resp["status"]["message"] and "thief" in resp["status"]["message"]
    proxy = pod(ISTIO)
    proxy["spec"]["containers"].append({"name": "istio-proxy", "image": "proxyv2",
                                        "volumeMounts": [{"name": "workload-socket", "mountPath": "/s"}]})
    _, out = call(review(proxy))
    assert out["response"]["allowed"] and out["response"]["patch"]
    injected = jsonpatch.apply_patch(proxy, decode_patch(out))
    debug = {"name": "debugger", "image": "busybox", "volumeMounts": [{"name": "workload-socket", "mountPath": "/s"}]}
    r = review({**injected, "spec": {**injected["spec"], "ephemeralContainers": [debug]}}, operation="UPDATE")
    r["request"]["subResource"] = "ephemeralcontainers"
    _, out = call(r)
    assert not out["response"]["allowed"] and "workload-socket" in out["response"]["status"]["message"]


def test_sidecars_get_no_api_token_and_envoy_admin_is_private():
    _, out = call(review(pod({"sds-injector.io/env": "dev", "sds-injector.io/inbound": "8443:8080"})))
    patched = jsonpatch.apply_patch(pod({"sds-injector.io/env": "dev"}), decode_patch(out))
    sidecars = {c["name"]: c for c in patched["spec"]["initContainers"]}
    volumes = {v["name"]: v for v in patched["spec"]["volumes"]}
    for c in sidecars.values():
        # The API server's ServiceAccount plugin skips containers that mount this path already.
        masked = [m for m in c["volumeMounts"] if m["mountPath"] == layout.SA_TOKEN_DIR]
        assert masked and "emptyDir" in volumes[masked[0]["name"]]
    agent_env = {e["name"]: e.get("value") for e in sidecars["sds-agent"]["env"]}
    assert agent_env["SDS_HTTP_HOST"] == "127.0.0.1" and "ports" not in sidecars["sds-agent"]
    token = volumes["sds-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "sds-injector" and token["expirationSeconds"] <= 3600
    bootstrap = json.loads(sidecars["sds-envoy"]["args"][1])
    assert "pipe" in bootstrap["admin"]["address"]
    # Only Envoy mounts the admin socket's volume; the app container mounts nothing of ours.
    assert [n for n, c in sidecars.items() if any(m["name"] == "sds-admin" for m in c["volumeMounts"])] == ["sds-envoy"]
    inbound = next(ls for ls in bootstrap["static_resources"]["listeners"] if ls["name"] == "inbound-8443")
    ctx = inbound["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
    matchers = ctx["combined_validation_context"]["default_validation_context"]["match_typed_subject_alt_names"]
    assert matchers == [{"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/ns/shop/sa/"}}]


def test_certificate_and_trust_bundle_names_are_limited_to_the_templates():
    """`certificates: serviceA-prod-cert` in a dev-only namespace was admitted while
    certificatePrefixes defaulted to [""]; trust-bundle names were checked by no rule."""
    for annos, what in [
        ({"sds-injector.io/env": "dev", "sds-injector.io/certificates": "servicea-prod-cert"}, "servicea-prod-cert"),
        ({"sds-injector.io/env": "dev", "sds-injector.io/trust-bundles": "prod-trust-bundle"}, "prod-trust-bundle"),
    ]:
        _, out = call(review(pod(annos)))
        assert not out["response"]["allowed"] and what in out["response"]["status"]["message"], annos
    _, out = call(review(pod({"sds-injector.io/env": "dev", "sds-injector.io/certificates": "web-dev-cert"})))
    assert out["response"]["allowed"]


@pytest.mark.parametrize("label, annotations, expected", [
    ("prod", {}, ("injected", "prod")),                              # the namespace's environment
    ("prod", {"sds-injector.io/env": "prod"}, ("injected", "prod")),
    ("prod", {"sds-injector.io/env": "dev"}, ("denied", "env_not_in_namespace")),
    ("dev.staging", {}, ("injected", "dev")),                        # several: the first is the default
    ("dev.staging", {"sds-injector.io/env": "staging"}, ("injected", "staging")),
    (None, {}, ("denied", "missing_env")),                           # no label, no annotation
])
def test_the_namespace_label_gives_the_environment(label, annotations, expected):
    """The README's install works without an env annotation: the platform team labels the
    namespace (tenants with `edit` cannot); an annotation may only choose among what it permits."""
    cfg = InjectorConfig.model_validate({"namespacePolicy": {"rules": [
        {"namespaces": ["team-*"], "environments": ["prod", "dev", "staging"]}]}})
    labels = {"kubernetes.io/metadata.name": "team-a", **({"sds-injector.io/env": label} if label else {})}
    _, out = call(review(pod(annotations or None, namespace="team-a"), namespace="team-a"), cfg,
                  lambda ns: labels)
    resp = out["response"]
    if expected[0] == "denied":
        message = {"env_not_in_namespace": "is not an environment of namespace 'team-a', whose label",
                   "missing_env": "or the platform team labels the namespace sds-injector.io/env=<env>"}[expected[1]]
        assert not resp["allowed"] and message in resp["status"]["message"], resp
        return
    patched = jsonpatch.apply_patch(pod(annotations or None, namespace="team-a"), decode_patch(out))
    agent = next(c for c in patched["spec"]["initContainers"] if c["name"] == "sds-agent")
    assert {e["name"]: e.get("value") for e in agent["env"]}["SDS_ENV"] == expected[1]


def _workload(kind: str, annotations: dict | None, group: str = "apps", name: str = "cart") -> dict:
    template = {"metadata": {"labels": {"app": name}, **({"annotations": annotations} if annotations else {})},
                "spec": {"containers": [{"name": "app", "image": "img:1"}]}}
    spec = {"jobTemplate": {"spec": {"template": template}}} if kind == "CronJob" else {"template": template}
    return {"apiVersion": f"{group}/v1", "kind": kind, "metadata": {"name": name, "namespace": "shop"}, "spec": spec}


def _validate(obj: dict, operation: str = "CREATE", old: dict | None = None) -> dict:
    from webhook.workloads import decide_workload

    group, _, _ = obj["apiVersion"].partition("/")
    r = review(obj, namespace="shop", operation=operation, kind=obj["kind"], group=group)
    if old is not None:
        r["request"]["oldObject"] = old
    status, out = admission.handle(json.dumps(r).encode(), lambda: CONFIG, None, decide_workload)
    assert status == 200
    return json.loads(out)["response"]


@pytest.mark.parametrize("kind,group", [("Deployment", "apps"), ("StatefulSet", "apps"), ("DaemonSet", "apps"),
                                        ("ReplicaSet", "apps"), ("Job", "batch"), ("CronJob", "batch")])
def test_a_workload_whose_pods_would_be_denied_is_denied_when_applied(kind, group):
    """`kubectl apply` of a Deployment used to succeed while its ReplicaSet could create no pod
    (the denial only in FailedCreate events). The same decision runs on the pod template."""
    resp = _validate(_workload(kind, {"sds-injector.io/env": "prod"}, group))  # prod is not shop's
    assert not resp["allowed"] and resp["status"]["code"] == 403
    assert resp["status"]["message"].startswith(f"the pods of {kind} cart would be denied by sds-injector:")
    assert "prod" in resp["status"]["message"]
    ok = _validate(_workload(kind, {"sds-injector.io/env": "dev"}, group))
    assert ok["allowed"] and "patch" not in ok  # validating: never changes the workload


def test_a_workload_update_that_keeps_its_pod_template_is_never_denied():
    """A policy changed after the Deployment was made must not freeze it (scale, labels...)."""
    old = _workload("Deployment", {"sds-injector.io/env": "prod"})
    new = {**old, "metadata": {**old["metadata"], "labels": {"team": "a"}}}
    assert _validate(new, "UPDATE", old)["allowed"]
    changed = _workload("Deployment", {"sds-injector.io/env": "prod", "sds-injector.io/inbound": "8443:8080"})
    assert not _validate(changed, "UPDATE", old)["allowed"]


def test_an_admission_review_passes_each_admission_module_once():
    """controller-runtime's shape: parse → decide (every check) → respond → record, each admission
    module entered in one stretch (it took six trips through plan.py: status, strip, ownership,
    collisions, build, apply)."""
    import os
    import sys

    stages = {f"webhook/{m}.py" for m in ("admission", "injector", "podshape", "existing", "plan", "patch",
                                          "verdict")} | {"sds_core/policy/selection.py"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + "/"
    body = json.dumps(review(pod({"sds-injector.io/env": "dev", "sds-injector.io/inbound": "8443:8080"}))).encode()
    entered: list[str] = []

    def profile(frame, event, arg):
        name = frame.f_code.co_filename.removeprefix(root)
        caller = frame.f_back.f_code.co_filename.removeprefix(root) if frame.f_back else ""
        if event == "call" and name in stages and caller != name and (not entered or entered[-1] != name):
            entered.append(name)

    sys.setprofile(profile)
    try:
        status, _ = admission.handle(body, lambda: CONFIG)
    finally:
        sys.setprofile(None)
    assert status == 200
    assert len(entered) == len(set(entered)), entered
    assert set(entered) == stages, entered
