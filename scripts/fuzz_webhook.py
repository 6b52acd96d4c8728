"""A long fuzzing run of the webhook (the properties of devkit/admission_fuzz.py), for figures:
N pods with hostile annotations and N reviews with arbitrary JSON at some path. Every injected
pod is checked for the API server's rules and re-admission; every 50th is validated strictly
against the newest Kubernetes schema. --record appends the counts to docs/benchmarks.md."""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import kubernetes_validate  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402

from devkit.admission_fuzz import broken_reviews, check, pods, readmit, review  # noqa: E402
from scripts.bench_webhook import machine  # noqa: E402
from sds_core.policy.config import load_config  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=100_000, help="per kind of case")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    cfg = load_config(ROOT / "examples" / "config.yaml")
    latest = kubernetes_validate.latest_version()
    outcomes: dict[str, Counter] = {"hostile annotations": Counter(), "arbitrary JSON at a path": Counter()}
    failures: list[str] = []
    run = settings(max_examples=args.cases, deadline=None, suppress_health_check=list(HealthCheck), database=None)

    @run
    @given(pods())
    def hostile(pod):
        try:
            patched, outcome = check(review(pod), cfg)
            if patched is not None:
                readmit(patched, cfg)
                if outcomes["hostile annotations"]["injected"] % 50 == 0:
                    kubernetes_validate.validate(patched, latest, strict=True)
        except Exception as e:  # noqa: BLE001 - counted and shown, the run goes on
            failures.append(f"{type(e).__name__}: {str(e)[:300]}")
            outcome = "FAILED"
        outcomes["hostile annotations"][outcome] += 1

    @run
    @given(broken_reviews())
    def broken(r):
        try:
            outcome = check(r, cfg)[1]
        except Exception as e:  # noqa: BLE001
            failures.append(f"{type(e).__name__}: {str(e)[:300]}")
            outcome = "FAILED"
        outcomes["arbitrary JSON at a path"][outcome] += 1

    t0 = time.monotonic()
    hostile()
    broken()
    wall = time.monotonic() - t0
    out = [f"## {dt.date.today()} scripts/fuzz_webhook.py", "", machine() + ".", "",
           f"{sum(sum(c.values()) for c in outcomes.values()):,} AdmissionReviews in {wall:.0f} s "
           "(hypothesis; properties of devkit/admission_fuzz.py: no 500 or internal error, patches apply, "
           "the API server's rules kept, re-admission idempotent; every 50th injected pod validated strictly "
           f"against Kubernetes {latest}).", "",
           "| cases | injected | denied (clear message) | 400 (malformed) | skipped | failed |", "|---|---|---|---|---|---|"]
    for name, c in outcomes.items():
        out.append(f"| {name} | {c['injected']:,} | {c['denied']:,} | {c['bad_request']:,} | {c['skipped']:,} | "
                   f"{c['FAILED']:,} |")
    if failures:
        out += ["", "Failures (first 10):", *[f"- {f}" for f in failures[:10]]]
    text = "\n".join(out) + "\n"
    print(text)
    if args.record:
        with open(ROOT / "docs" / "benchmarks.md", "a") as f:
            f.write("\n" + text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
