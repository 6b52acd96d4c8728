"""In-process admission cost (no HTTP): time to answer an AdmissionReview for a typical pod, a
large pod (1,500 env vars) and a skipped pod, against a baseline that parses the body and returns
a fixed allowed AdmissionReview. Prints a table; --record appends it to docs/benchmarks.md.
(The HTTP load part of issue 6 — uvicorn over TLS with wrk or a multi-process generator — is not
built yet.)"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from webhook import admission  # noqa: E402
from webhook.config import load_config  # noqa: E402

CFG = load_config(ROOT / "examples" / "config.yaml")


def review(annotations: dict, env_count: int) -> bytes:
    probe = {"httpGet": {"path": "/health", "port": 8080}}
    containers = [
        {"name": "app", "image": "registry.example/web:1", "ports": [{"containerPort": 8080}],
         "env": [{"name": f"VAR_{i:04d}", "value": "x" * 24} for i in range(env_count)],
         "readinessProbe": probe, "livenessProbe": probe},
        {"name": "logs", "image": "registry.example/fluent-bit:3", "env": [{"name": "A", "value": "b"}]},
    ]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-", "namespace": "shop",
           "labels": {"app": "web"}, "annotations": annotations}, "spec": {"containers": containers}}
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE",
        "namespace": "shop", "object": pod}}).encode()


def baseline(body: bytes) -> bytes:
    uid = orjson.loads(body)["request"]["uid"]
    return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                         "response": {"uid": uid, "allowed": True}})


def timeit(fn, body: bytes, seconds: float = 2.0) -> list[float]:
    samples, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        fn(body)
        samples.append(time.perf_counter() - t)
    return samples


def main() -> int:
    inject = {"sds-injector.io/env": "dev", "sds-injector.io/inbound": "8443:8080"}
    cases = {
        "typical (2 containers, 20 env)": review(inject, 20),
        "large (1,500 env, ~64 KB)": review(inject, 1500),
        "skipped (opted out)": review({"sds-injector.io/inject": "false"}, 20),
    }
    rows = []
    base_body = cases["typical (2 containers, 20 env)"]
    base = timeit(baseline, base_body)
    base_rate = len(base) / sum(base)
    rows.append(("baseline: parse + fixed answer", len(base_body), base, 1.0))
    for name, body in cases.items():
        status, _ = admission.handle(body, lambda: CFG)
        assert status == 200
        s = timeit(lambda b: admission.handle(b, lambda: CFG), body)
        rows.append((name, len(body), s, (len(s) / sum(s)) / base_rate))
    lines = [f"| workload | body | per second | p50 | p99 | vs baseline |", "|---|---|---|---|---|---|"]
    for name, size, s, ratio in rows:
        q = statistics.quantiles(s, n=100)
        lines.append(f"| {name} | {size / 1024:.1f} KB | {len(s) / sum(s):,.0f} | {q[49] * 1e3:.3f} ms | "
                     f"{q[98] * 1e3:.3f} ms | {ratio:.2f} |")
    table = "\n".join(lines)
    print(table)
    if "--record" in sys.argv:
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), platform.processor())
        with open(ROOT / "docs" / "benchmarks.md", "a") as f:
            f.write(f"\n## {dt.date.today()} webhook, in-process (no HTTP)\n\n{cpu}, {os.cpu_count()} cores, "
                    f"Python {platform.python_version()}, one thread.\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
