"""Hostile and malformed AdmissionReviews: never a 500-coded or "internal error" answer, never a
broken pod. Each case below was a crash or a wrong answer before."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonpatch
import pytest

from webhook import admission
from sds_core.policy.config import load_config
from tests.webhook_util import decode_patch, pod, review

CONFIG = load_config(Path(__file__).parent.parent / "examples" / "config.yaml")


def call(body) -> tuple[int, dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, out = admission.handle(raw, lambda: CONFIG)
    return status, json.loads(out)


def answer(r: dict) -> dict:
    status, out = call(r)
    assert status in (200, 400), status
    if status == 400:
        return {"allowed": False, "status": {"code": 400, "message": out["error"]}}
    resp = out["response"]
    assert resp.get("status", {}).get("code") != 500 and "internal error" not in json.dumps(resp), resp
    return resp


DEV = {"sds-injector.io/env": "dev"}


def set_path(r: dict, path: list, value) -> dict:
    r = copy.deepcopy(r)
    node = r
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return r


@pytest.mark.parametrize("path,value,fragment", [
    (["request", "kind"], "Pod", "kind"),
    (["request", "namespace"], 42, "namespace"),
    (["request", "object", "metadata"], None, None),  # schema-valid: null metadata
    (["request", "object", "metadata", "annotations"], ["a", "b"], "annotations"),
    (["request", "object", "metadata", "annotations"], {"sds-injector.io/env": 3}, "annotation"),
    (["request", "object", "metadata", "labels"], "app=web", "labels"),
    (["request", "object", "spec", "containers"], 7, "containers"),
    (["request", "object", "spec", "containers"], [7], "containers"),
    (["request", "object", "spec", "initContainers"], {"a": 1}, "initContainers"),
    (["request", "object", "spec", "volumes"], "none", "volumes"),
    (["request", "object", "spec", "serviceAccountName"], {"name": "x"}, "serviceAccountName"),
    (["request", "object", "spec", "serviceAccountName"], "Not_A_Name", "serviceAccountName"),
])
def test_wrong_types_are_clear_denials(path, value, fragment):
    resp = answer(set_path(review(pod(DEV)), path, value))
    if fragment is None:
        return  # answered without crashing is all a null metadata needs (injected or denied)
    assert not resp["allowed"] and resp["status"]["code"] == 400 and fragment in resp["status"]["message"], resp


@pytest.mark.parametrize("value", ["8443:²", "８４４３:8080", "8443:8080x", "99999:1"])
def test_ports_are_ascii_digits_only(value):
    resp = answer(review(pod({**DEV, "sds-injector.io/inbound": value})))
    assert not resp["allowed"] and resp["status"]["code"] == 400 and "port" in resp["status"]["message"]


@pytest.mark.parametrize("status", ['{"containers":1}', '{"revision":"0","volumes":"x"}', "[1,2]", "{{{"])
def test_malformed_status_annotation_is_not_an_internal_error(status):
    resp = answer(review(pod({**DEV, "sds-injector.io/status": status})))
    if resp["allowed"]:
        jsonpatch.apply_patch(pod({**DEV, "sds-injector.io/status": status}), decode_patch({"response": resp}))


def test_a_hand_written_status_cannot_delete_the_pods_own_containers_or_volumes():
    p = pod({**DEV, "sds-injector.io/status": json.dumps({"revision": "0", "containers": ["app"],
                                                         "volumes": ["data"], "initContainers": ["setup"]})},
            volumes=[{"name": "data", "emptyDir": {}}],
            initContainers=[{"name": "setup", "image": "busybox"}])
    p["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    resp = answer(review(p))
    assert resp["allowed"], resp
    patched = jsonpatch.apply_patch(p, decode_patch({"response": resp}))
    spec = patched["spec"]
    assert [c["name"] for c in spec["containers"]] == ["app"]
    assert "setup" in [c["name"] for c in spec["initContainers"]]
    assert "data" in [v["name"] for v in spec["volumes"]]


def test_label_values_that_are_not_dns_labels_still_name_a_service():
    for labels, service in [({"app": "my_app"}, "my-app"), ({"app.kubernetes.io/name": "web.frontend"}, "web-frontend"),
                            ({"app": "___"}, "default")]:
        p = pod(DEV)
        p["metadata"]["labels"] = labels
        resp = answer(review(p))
        assert resp["allowed"], (labels, resp)
        patched = jsonpatch.apply_patch(p, decode_patch({"response": resp}))
        env = {e["name"]: e.get("value") for e in patched["spec"]["initContainers"][0]["env"]}
        assert env["SDS_SERVICE"] == service, (labels, env["SDS_SERVICE"])


@pytest.mark.parametrize("annotations,containers_port,fragments", [
    ({"sds-injector.io/inbound": "15021:8080"}, None, ["15021", "proxy.statusPort", "inbound"]),
    ({"sds-injector.io/inbound": "15090:8080"}, None, ["15090", "agent.httpPort"]),
    ({"sds-injector.io/inbound": "8443:15021"}, None, ["15021", "not the app"]),
    ({"sds-injector.io/outbound": "15001=a.b:443,15001=c.d:443"}, None, ["15001", "a.b:443", "c.d:443"]),
    ({"sds-injector.io/inbound": "8443:8080", "sds-injector.io/outbound": "8443=a.b:443"}, None,
     ["8443", "inbound", "outbound"]),
    ({}, 15021, ["15021", "proxy.statusPort", "declared by a container"]),
])
def test_port_collisions_are_denied_naming_both_users(annotations, containers_port, fragments):
    p = pod({**DEV, **annotations})
    if containers_port:
        p["spec"]["containers"][0]["ports"] = [{"containerPort": containers_port}]
    resp = answer(review(p))
    assert not resp["allowed"] and resp["status"]["code"] == 400, resp
    assert all(f in resp["status"]["message"] for f in fragments), resp["status"]["message"]


def test_inject_passes_untouched_documents_through_byte_for_byte_and_knows_more_kinds(tmp_path):
    import subprocess
    import sys

    from sds_core.pki.ca import LocalCA

    ca = tmp_path / "ca.crt"
    ca.write_bytes(LocalCA.generate().cert_pem)
    template = ("metadata:\n      labels: {app: web}\n      annotations: {sds-injector.io/env: dev}\n"
                "    spec:\n      containers: [{name: web, image: web:1}]\n")
    text = ("\n\n# a comment-only part\n---\n"
            "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: rc, namespace: shop}\nspec:\n"
            "  replicas: 1\n  template:\n    " + template +
            "---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: apps/v1\n  kind: Deployment\n"
            "  metadata: {name: d, namespace: shop}\n  spec:\n    template:\n      metadata:\n"
            "        annotations: {sds-injector.io/env: dev}\n      spec:\n        containers: [{name: a, image: a}]\n"
            "---\napiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: ro}\nspec:\n  template:\n    "
            + template +
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata:\n  script: |\n    echo hi\n    exit 0")
    src = tmp_path / "in.yaml"
    src.write_text(text)
    r = subprocess.run([sys.executable, "-m", "webhook", "inject", "-f", str(src), "--config",
                        str(Path(__file__).parent.parent / "examples" / "config.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("\n\n# a comment-only part\n---\n")
    last = text[text.rindex("---\napiVersion: v1\nkind: ConfigMap"):]
    assert r.stdout.endswith(last), "the last document (no final newline, a | block) must be unchanged"
    import yaml

    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    rc, lst = docs[0], docs[1]
    assert [c["name"] for c in rc["spec"]["template"]["spec"]["initContainers"]] == ["sds-agent", "sds-envoy"]
    assert lst["items"][0]["spec"]["template"]["spec"]["initContainers"][0]["name"] == "sds-agent"
    assert "Rollout/ro" in r.stderr and "not injected" in r.stderr


def kubelet_can_read(default_mode: int, fs_group: int | None, uid: int, gid: int) -> bool:
    """A Secret volume file as the kubelet writes it: owner root; group fsGroup when the pod sets
    one (then group-readable), else root; mode defaultMode. Can the container process read it?"""
    owner, group = 0, fs_group if fs_group is not None else 0
    mode = default_mode | (0o040 if fs_group is not None else 0)
    groups = {gid} | ({fs_group} if fs_group is not None else set())  # fsGroup is a supplementary group
    if uid == owner:
        return bool(mode & 0o400)
    if group in groups:
        return bool(mode & 0o040)
    return bool(mode & 0o004)


@pytest.mark.parametrize("fs_group", [None, 2000])
def test_the_agent_can_read_the_mounted_secrets_as_the_kubelet_writes_them(fs_group):
    from sds_core.policy.config import InjectorConfig

    cfg = InjectorConfig.model_validate({**CONFIG.model_dump(by_alias=True),
                                        "agent": {**CONFIG.agent.model_dump(by_alias=True), "source": "files"}})
    p = pod(DEV)
    if fs_group is not None:
        p["spec"]["securityContext"] = {"fsGroup": fs_group}
    status, out = admission.handle(json.dumps(review(p)).encode(), lambda: cfg)
    patched = jsonpatch.apply_patch(p, decode_patch(json.loads(out)))
    agent = next(c for c in patched["spec"]["initContainers"] if c["name"] == "sds-agent")
    sc = agent["securityContext"]
    files = [v for v in patched["spec"]["volumes"] if v["name"].startswith("sds-files-")]
    assert files
    for v in files:
        assert kubelet_can_read(v["secret"]["defaultMode"], fs_group, sc["runAsUser"], sc["runAsGroup"]), v
        # ...and no container of the pod's own mounts it (enforced at admission).
        assert not any(m["name"] == v["name"] for c in patched["spec"]["containers"] for m in c.get("volumeMounts", []))
    assert not kubelet_can_read(0o440, None, sc["runAsUser"], sc["runAsGroup"]), "the old mode was unreadable"


def test_a_forged_status_cannot_leave_a_pod_without_containers():
    """Found by the long fuzz run: the pod's only container named like a sidecar, plus a
    status annotation claiming it, stripped everything."""
    p = pod({**DEV, "sds-injector.io/status": json.dumps({"revision": "0", "containers": ["sds-envoy"]})})
    p["spec"]["containers"][0]["name"] = "sds-envoy"
    resp = answer(review(p))
    assert not resp["allowed"] and resp["status"]["code"] == 400 and "reserved" in resp["status"]["message"]


@pytest.mark.parametrize("annotations,fragment", [
    ({"sds-injector.io/ecdh-curves": "X25519MLKEM768,X448"}, "'X448' is not one of"),
    ({"sds-injector.io/ecdh-curves": "X25519MLKEM768", "sds-injector.io/tls-max-version": "TLSv1_2"}, "only in TLS 1.3"),
    ({"sds-injector.io/tls-min-version": "TLSv1_3", "sds-injector.io/tls-max-version": "TLSv1_2"}, "below"),
])
def test_key_exchange_annotations_are_checked(annotations, fragment):
    resp = answer(review(pod({**DEV, **annotations})))
    assert not resp["allowed"] and resp["status"]["code"] == 400 and fragment in resp["status"]["message"], resp


def test_key_exchange_groups_and_tls13_reach_every_context_of_the_bootstrap():
    resp = answer(review(pod({**DEV, "sds-injector.io/inbound": "8443:8080",
                               "sds-injector.io/outbound": "15001=pay.shop.svc:8443",
                               "sds-injector.io/ecdh-curves": "X25519MLKEM768,X25519"})))
    patched = jsonpatch.apply_patch(pod({**DEV}), decode_patch({"response": resp}))
    envoy = next(c for c in patched["spec"]["initContainers"] if c["name"] == "sds-envoy")
    text = envoy["args"][1]
    boot = json.loads(text)
    listeners = {ls["name"]: ls for ls in boot["static_resources"]["listeners"]}
    clusters = {c["name"]: c for c in boot["static_resources"]["clusters"]}
    for ctx in (listeners["inbound-8443"]["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"],
                clusters["outbound-15001"]["transport_socket"]["typed_config"]["common_tls_context"]):
        assert ctx["tls_params"] == {"tls_minimum_protocol_version": "TLSv1_2",
                                     "tls_maximum_protocol_version": "TLSv1_3",
                                     "ecdh_curves": ["X25519MLKEM768", "X25519"]}


def test_a_deeply_nested_field_is_a_clear_denial_not_an_internal_error():
    """Reinjection copies the pod's lists whole; a 300-deep unknown field in one made the
    response encoder fail (orjson stops at 255 levels): 31 of 20,000 fuzzed reviews were
    answered as internal errors. Now a 400 that says what to remove."""
    deep: dict = {}
    node = deep
    for _ in range(300):
        node["x"] = {}
        node = node["x"]
    injected = jsonpatch.apply_patch(pod(DEV), decode_patch({"response": answer(review(pod(DEV)))}))
    status = json.loads(injected["metadata"]["annotations"]["sds-injector.io/status"])
    injected["metadata"]["annotations"]["sds-injector.io/status"] = json.dumps({**status, "revision": "older"})
    injected["spec"]["volumes"].append({"name": "v", "emptyDir": {}, "unknownField": deep})
    resp = answer(review(injected))
    assert not resp["allowed"] and resp["status"]["code"] == 400 and "255 levels" in resp["status"]["message"], resp
    assert resp["status"]["reason"] == "BadRequest"


def test_inject_keeps_crlf_and_a_documents_own_namespace_wins(tmp_path):
    """`inject -f FILE` lost the \\r of CRLF files in untouched documents (stdin kept them), and
    --namespace silently overrode a document's own namespace (a Pod declaring kube-system was
    injected; without the flag it is skipped as a system namespace)."""
    import subprocess
    import sys

    from sds_core.pki.ca import LocalCA

    ca = tmp_path / "ca.crt"
    ca.write_bytes(LocalCA.generate().cert_pem)
    config = str(Path(__file__).parent.parent / "examples" / "config.yaml")
    untouched = "apiVersion: v1\r\nkind: ConfigMap\r\nmetadata: {name: c}\r\ndata: {a: grüß ✓}\r\n"
    system_pod = ("---\r\napiVersion: v1\r\nkind: Pod\r\nmetadata: {name: p, namespace: kube-system, annotations: "
                  "{sds-injector.io/env: dev}}\r\nspec: {containers: [{name: a, image: a}]}\r\n")
    src = tmp_path / "crlf.yaml"
    src.write_bytes((untouched + system_pod).encode())
    r = subprocess.run([sys.executable, "-m", "webhook", "inject", "-f", str(src), "--config", config,
                        "--namespace", "shop"], capture_output=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (untouched + system_pod).encode(), "both documents come back byte for byte"
    err = r.stderr.decode()
    assert "declares namespace kube-system; --namespace shop does not apply to it" in err
    assert "not injected (system_namespace)" in err


@pytest.mark.parametrize("annotations, warning", [
    ({}, "Envoy is injected but terminates and originates no TLS"),
    ({"sidecar.istio.io/inject": "true", "sds-injector.io/inbound": "8443:8080", "sds-injector.io/mtls": "false"},
     "sds-injector.io/inbound, sds-injector.io/mtls ignored in Istio mode"),
    ({"sds-injector.io/inbound": "8443:8080"}, None),
])
def test_what_a_pod_will_not_get_is_said_in_warnings(annotations, warning):
    """kubectl shows AdmissionResponse warnings: a pod whose annotations do nothing was injected
    silently before."""
    resp = answer(review(pod({**DEV, **annotations})))
    assert resp["allowed"] and resp.get("patch")
    if warning is None:
        assert "warnings" not in resp
    else:
        assert any(warning in w for w in resp["warnings"]), resp.get("warnings")
