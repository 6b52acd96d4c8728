"""Webhook benchmark. Starts the webhook as users run it (`python -m webhook serve`: uvicorn, one
worker, TLS) in its own process, and drives it from another: wrk with a Lua body script when wrk is
installed, else a multi-process Python generator (the output says which ran). Workloads: a typical
pod, a large pod (1,500 env vars) and a skipped pod, against a baseline on the same server (POST
/noop: parse the body, return a fixed allowed AdmissionReview). Also the in-process time to
compute the answer, to show where the time goes. Prints tables; --record appends to
docs/benchmarks.md. Figures, not pass/fail."""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import multiprocessing as mp
import os
import platform
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from devkit.webhook_run import WebhookRun  # noqa: E402
from webhook import admission  # noqa: E402
from sds_core.policy.config import load_config  # noqa: E402

CONFIG_FILE = ROOT / "examples" / "config.yaml"
CFG = load_config(CONFIG_FILE)
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("BODY_FILE"), "rb"); wrk.body = f:read("*a"); f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %f %d %d %d %d\\n", summary.requests, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(95), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


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


INJECT = {"sds-injector.io/env": "dev", "sds-injector.io/inbound": "8443:8080"}
WORKLOADS = {
    "typical": review(INJECT, 20),
    "large": review(INJECT, 1500),
    "skipped": review({"sds-injector.io/inject": "false"}, 20),
}


# -- load generators ------------------------------------------------------------------------
def run_wrk(port: int, path: str, body: bytes, conc: int, seconds: float, tmp: Path) -> dict:
    body_file, script = tmp / "body.json", tmp / "bench.lua"
    body_file.write_bytes(body)
    script.write_text(LUA)
    out = subprocess.run(["wrk", "-t1", f"-c{conc}", f"-d{max(1, round(seconds))}s", "-s", str(script),
                          f"https://127.0.0.1:{port}{path}"], capture_output=True, text=True,
                         env={**os.environ, "BODY_FILE": str(body_file)}, check=True).stdout
    n, dur, p50, p95, p99, errors = next(ln.split()[1:] for ln in out.splitlines() if ln.startswith("RESULT"))
    return {"rps": int(n) / float(dur), "p50": int(p50) / 1e3, "p95": int(p95) / 1e3, "p99": int(p99) / 1e3,
            "errors": int(errors)}


def _worker(port, path, body, conns, seconds, queue):
    import threading

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    lat, errors, end = [], [0], time.perf_counter() + seconds

    def loop():
        c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
        while time.perf_counter() < end:
            t = time.perf_counter()
            try:
                c.request("POST", path, body, {"Content-Type": "application/json"})
                r = c.getresponse()
                r.read()
                if r.status != 200:
                    errors[0] += 1
            except OSError:
                errors[0] += 1
                c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
                continue
            lat.append(time.perf_counter() - t)

    threads = [threading.Thread(target=loop) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put((lat, errors[0]))


def run_python(port: int, path: str, body: bytes, conc: int, seconds: float, tmp: Path) -> dict:
    procs_n = min(conc, 2)
    q = mp.Queue()
    ps = [mp.Process(target=_worker, args=(port, path, body, conc // procs_n + (i < conc % procs_n), seconds, q))
          for i in range(procs_n)]
    for p in ps:
        p.start()
    lat, errors = [], 0
    for _ in ps:
        got, err = q.get()
        lat += got
        errors += err
    for p in ps:
        p.join()
    q_ = statistics.quantiles(lat, n=100)
    return {"rps": len(lat) / seconds, "p50": q_[49] * 1e3, "p95": q_[94] * 1e3, "p99": q_[98] * 1e3,
            "errors": errors}


# -- in-process -----------------------------------------------------------------------------
def in_process(seconds: float = 1.5) -> list[tuple[str, float, float]]:
    rows = []
    for name, body in [("baseline", WORKLOADS["typical"]), *WORKLOADS.items()]:
        fn = admission.noop if name == "baseline" else (lambda b: admission.handle(b, lambda: CFG))
        samples, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            fn(body)
            samples.append(time.perf_counter() - t)
        q = statistics.quantiles(samples, n=100)
        rows.append((name, q[49] * 1e3, q[98] * 1e3))
    return rows


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def append_to_benchmarks(text: str) -> None:
    """--record: the table goes to the end of docs/benchmarks.md."""
    with open(ROOT / "docs" / "benchmarks.md", "a") as f:
        f.write("\n" + text)


RATIOS = ROOT / "scripts" / "bench_webhook.json"
TOLERANCE = 0.25  # a ratio may be 25 % worse than recorded before --check fails (2 noisy cores)


def check(ratios: dict, record: bool) -> int:
    """--record: keep these ratios; --check: exit 1 when one is worse than recorded."""
    if record:
        RATIOS.write_text(json.dumps(ratios, indent=1) + "\n")
        return 0
    recorded = json.loads(RATIOS.read_text())
    worse = {k: (v, recorded[k]) for k, v in ratios.items() if k in recorded and v < recorded[k] * (1 - TOLERANCE)}
    for k, (v, r) in worse.items():
        print(f"REGRESSION {k}: {v:.2f} of the baseline vs recorded {r:.2f} (tolerance {TOLERANCE:.0%})",
              file=sys.stderr)
    return 1 if worse else 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    ap.add_argument("--record", action="store_true", help="append the tables to docs/benchmarks.md")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail on a regression of the throughput ratios "
                      "(workload / the /noop baseline, same run) against scripts/bench_webhook.json")
    mode.add_argument("--record-ratios", action="store_true", help="write the ratios to scripts/bench_webhook.json")
    args = ap.parse_args()
    gen = args.generator if args.generator != "auto" else ("wrk" if shutil.which("wrk") else "python")
    load = run_wrk if gen == "wrk" else run_python
    lines = [f"Load generator: {gen} (one process; the server is one uvicorn worker with TLS)", ""]
    ratios = {}
    with tempfile.TemporaryDirectory() as tmp_s, WebhookRun(baseline=True) as hook:
        tmp, port = Path(tmp_s), hook.port
        # Warm-up (first TLS handshakes, first plan per selection): steady state is measured.
        for path, body in [("/noop", WORKLOADS["typical"]), *[("/mutate", b) for b in WORKLOADS.values()]]:
            load(port, path, body, 1, 1, tmp)
        header = "| workload | concurrency | requests/s | p50 ms | p95 ms | p99 ms | errors | vs baseline |"
        lines += [header, "|---|---|---|---|---|---|---|---|"]
        for conc in [int(c) for c in args.concurrency.split(",")]:
            base = load(port, "/noop", WORKLOADS["typical"], conc, args.seconds, tmp)
            for name, path, body in [("baseline /noop", "/noop", WORKLOADS["typical"]),
                                     *[(n, "/mutate", b) for n, b in WORKLOADS.items()]]:
                r = base if path == "/noop" else load(port, path, body, conc, args.seconds, tmp)
                if path != "/noop":
                    ratios[f"{name}@{conc}"] = r["rps"] / base["rps"]
                lines.append(f"| {name} | {conc} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p95']:.2f} | "
                             f"{r['p99']:.2f} | {r['errors']} | {r['rps'] / base['rps']:.2f} |")
                print(lines[-1], flush=True)
    if args.check or args.record_ratios:
        return check(ratios, args.record_ratios)
    lines += ["", "In-process (no HTTP, one thread): time to answer the AdmissionReview", "",
              "| workload | body | p50 ms | p99 ms |", "|---|---|---|---|"]
    for name, p50, p99 in in_process():
        body = WORKLOADS.get(name, WORKLOADS["typical"])
        lines.append(f"| {name} | {len(body) / 1024:.1f} KB | {p50:.3f} | {p99:.3f} |")
    table = "\n".join(lines)
    print(table)
    if args.record:
        with open(ROOT / "docs" / "benchmarks.md", "a") as f:
            f.write(f"\n## {dt.date.today()} scripts/bench_webhook.py\n\n{machine()}.\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
