"""Golden files: tests/golden/<case>.yaml → <case>.injected.yaml, auto-discovered.
REFRESH_GOLDEN=1 rewrites them; a golden without its case fails."""
from __future__ import annotations

import os
from pathlib import Path

import jsonpatch
import kubernetes_validate
import pytest
import yaml

from webhook.existing import strip
from webhook.patch import apply
from sds_core.policy.config import load_config
from webhook.injector import decide

GOLDEN = Path(__file__).parent / "golden"
CONFIG = load_config(Path(__file__).parent.parent / "examples" / "config.yaml")
CASES = sorted(p for p in GOLDEN.glob("*.yaml") if not p.name.endswith(".injected.yaml"))
K8S_VERSIONS = ["1.33", kubernetes_validate.latest_version()]


def outcome_of(pod: dict) -> dict:
    out = decide(pod, pod["metadata"]["namespace"], CONFIG)
    if out.result == "denied":
        return {"denied": {"code": out.code, "reason": str(out.reason), "message": out.message}}
    if out.result == "skipped":
        return {"skipped": str(out.reason)}
    patched = jsonpatch.apply_patch(pod, out.patch)
    # Two independent routes to the injected pod must agree: the patch, and the plan applied.
    assert patched == apply(strip(pod), out.plan)
    return patched


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_golden(case):
    pod = yaml.safe_load(case.read_text())
    got = outcome_of(pod)
    golden = case.with_name(case.stem + ".injected.yaml")
    rendered = yaml.safe_dump(got, sort_keys=False, width=1 << 16)
    if os.environ.get("REFRESH_GOLDEN"):
        golden.write_text(rendered)
    assert golden.exists(), f"{golden.name} missing: run with REFRESH_GOLDEN=1"
    assert yaml.safe_load(golden.read_text()) == got, f"{case.name} differs from {golden.name}"


def test_no_stale_goldens():
    cases = {c.stem for c in CASES}
    stale = [g.name for g in GOLDEN.glob("*.injected.yaml") if g.name[: -len(".injected.yaml")] not in cases]
    assert not stale, f"goldens without a case: {stale}"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_injected_pods_validate_strictly(version):
    injected = 0
    for case in CASES:
        got = outcome_of(yaml.safe_load(case.read_text()))
        if "denied" in got or "skipped" in got:
            continue
        kubernetes_validate.validate(got, version, strict=True)
        injected += 1
    assert injected >= 6
