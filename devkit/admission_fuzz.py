"""Hostile AdmissionReviews for the webhook, as hypothesis strategies, and the properties every
answer must keep. Used by tests/test_webhook_fuzz.py (a few hundred cases per run) and by
scripts/fuzz_webhook.py (a long run whose figures go to docs/benchmarks.md)."""
from __future__ import annotations

import base64
import json

import jsonpatch
from hypothesis import strategies as st

from webhook import admission
from sds_core.policy.annotations import SCHEMA
from webhook.layout import AGENT, PROXY

from .reviews import review

PREFIX = "sds-injector.io/"
NAMES = st.sampled_from(["app", "web", "sidecar", "sds-agent", "sds-envoy", "init", "data", "sds-socket", "cache"])
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)
PORTISH = st.one_of(st.integers(0, 70000).map(str), st.sampled_from(["15021", "15090", "8443", "²", "８０", "-1", ""]))


def _value(key: str):
    """Mostly plausible values for each annotation, with hostile ones mixed in."""
    plausible = {
        "env": st.sampled_from(["dev", "staging", "prod", "qa", ""]),
        "business-line": st.sampled_from(["retail", "corporate", "other"]),
        "inbound": st.lists(st.tuples(PORTISH, PORTISH).map(":".join), min_size=1, max_size=3).map(",".join),
        "outbound": st.lists(st.tuples(PORTISH, st.sampled_from(["a.b", "svc.ns.svc", ""]), PORTISH).map(
            lambda t: f"{t[0]}={t[1]}:{t[2]}"), min_size=1, max_size=3).map(",".join),
        "inject": st.sampled_from(["true", "false", "TRUE", "maybe"]),
        "status": st.one_of(JSON.map(json.dumps), st.fixed_dictionaries({
            "revision": st.text(max_size=4), "containers": st.lists(NAMES, max_size=3),
            "initContainers": st.lists(NAMES, max_size=3), "volumes": st.lists(NAMES, max_size=3)}).map(json.dumps)),
    }.get(key)
    hostile = st.text(max_size=40)
    # Three plausible draws to one hostile: enough pods get injected to check injected pods.
    return st.one_of(plausible, plausible, plausible, hostile) if plausible is not None else hostile


ANNOTATIONS = st.tuples(
    st.one_of(st.just({PREFIX + "env": "dev"}), st.just({PREFIX + "env": "staging"}), st.just({})),
    st.dictionaries(st.sampled_from([a.key for a in SCHEMA if a.key != "env"] + ["typo", "status"]), st.none(),
                    max_size=3).flatmap(lambda keys: st.fixed_dictionaries({PREFIX + k: _value(k) for k in keys})),
).map(lambda parts: {**parts[0], **parts[1]})


@st.composite
def pods(draw) -> dict:
    names = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    volumes = draw(st.lists(NAMES, max_size=2, unique=True))
    containers = [{"name": n, "image": "img:1", **({"volumeMounts": [{"name": v, "mountPath": f"/m/{v}"}
                                                                     for v in draw(st.lists(st.sampled_from(volumes),
                                                                                            max_size=2, unique=True))]}
                                                    if volumes else {}),
                   **({"ports": [{"containerPort": draw(st.integers(1, 65535))}]} if draw(st.booleans()) else {})}
                  for n in names]
    spec = {"containers": containers, "serviceAccountName": draw(st.sampled_from(["default", "web", "cart"]))}
    if volumes:
        spec["volumes"] = [{"name": v, "emptyDir": {}} for v in volumes]
    if draw(st.booleans()):
        spec["initContainers"] = [{"name": "init", "image": "busybox"}]
    labels = draw(st.dictionaries(st.sampled_from(["app", "app.kubernetes.io/name"]),
                                  st.text(alphabet="abc_.-XYZ09", min_size=1, max_size=10), max_size=2))
    meta = {"generateName": "web-", "namespace": "shop", "labels": labels, "annotations": draw(ANNOTATIONS)}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


@st.composite
def broken_reviews(draw) -> dict:
    """A valid review with one value anywhere replaced by arbitrary JSON."""
    r = review(draw(pods()))
    paths = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, path + [i])
    walk(r["request"], ["request"])
    path = draw(st.sampled_from(paths[1:]))
    node = r
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = draw(JSON)
    return r


class Broken(AssertionError):
    pass


def check(r: dict, config) -> tuple[dict | None, str]:
    """Send `r`; assert the properties that hold for every answer. Returns (the injected pod or
    None, the outcome label)."""
    status, out = admission.handle(json.dumps(r).encode(), lambda: config)
    body = json.loads(out)
    if status == 400:
        assert body.get("error"), body
        return None, "bad_request"
    if status != 200:
        raise Broken(f"HTTP {status}")
    resp = body["response"]
    # (Not a search for the words: a hostile annotation value is quoted back in a denial.)
    if resp.get("status", {}).get("code") == 500 or resp.get("status", {}).get("message", "").startswith(
            "sds-injector internal error"):
        raise Broken(f"internal error: {resp}")
    if not resp["allowed"]:
        assert resp["status"]["message"], resp
        return None, "denied"
    if "patch" not in resp:
        return None, "skipped"
    original = r["request"]["object"]
    patched = jsonpatch.apply_patch(original, json.loads(base64.b64decode(resp["patch"])))
    spec = patched["spec"]
    every = [c["name"] for key in ("initContainers", "containers") for c in spec.get(key) or []]
    before = [c["name"] for key in ("initContainers", "containers") for c in original["spec"].get(key) or []]
    assert spec["containers"], "no containers left"
    assert every.count(AGENT) == 1 and every.count(PROXY) == 1, f"sidecars not exactly once: {every}"
    if len(before) == len(set(before)):  # the API server refuses duplicates anyway
        assert len(every) == len(set(every)), f"duplicate container names {every}"
    def dangling(s: dict) -> set:
        names = {v.get("name") for v in s.get("volumes") or []}
        return {(c.get("name"), m.get("name")) for c in (s.get("initContainers") or []) + (s.get("containers") or [])
                for m in c.get("volumeMounts") or [] if m.get("name") not in names}
    broken_mounts = dangling(spec) - dangling(original["spec"])  # the input's own defects are the API's to refuse
    assert not broken_mounts, f"mounts resolving to no volume after injection: {broken_mounts}"
    assert PROXY in every
    return patched, "injected"


def readmit(patched: dict, config) -> None:
    """Re-admission of an injected pod changes nothing (reinvocation, dry runs)."""
    status, out = admission.handle(json.dumps(review(patched)).encode(), lambda: config)
    resp = json.loads(out)["response"]
    assert status == 200 and resp["allowed"] and "patch" not in resp, resp
