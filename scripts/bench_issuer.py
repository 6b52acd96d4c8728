"""Issuance throughput of one issuer process (`python -m webhook issuer`), EC P-256 CSRs from
5,000 pods, each on a new TLS connection (as agents renew), with both token verifiers.
Baseline in the same run: GET /healthz over new TLS connections to the same server.
The cluster is the API double (devkit/kube_api.py), served from this process: in TokenReview
mode its cost per review stands in for the API server's. --record appends to docs/benchmarks.md.
Figures, not pass/fail."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import ssl
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devkit.issuer_run import IssuerRun  # noqa: E402
from devkit.kube_api import KubeAPI  # noqa: E402
from scripts.bench_webhook import append_to_benchmarks, machine  # noqa: E402
from sds_core.sds.sources.issuer import csr_pem, new_key  # noqa: E402


def _worker(args) -> list[tuple[float, int]]:
    address, ca_pem, jobs, threads = args
    ctx = ssl.create_default_context(cadata=ca_pem)

    def one(job) -> tuple[float, int]:
        token, name, csr = job
        t = time.perf_counter()
        if token is None:
            req = urllib.request.Request(address + "/healthz")
        else:
            req = urllib.request.Request(address + "/v1/certificates", method="POST",
                                         data=json.dumps({"name": name, "csr": csr}).encode(),
                                         headers={"authorization": f"Bearer {token}",
                                                  "content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30, context=ctx) as r:
                r.read()
                code = r.status
        except urllib.error.HTTPError as e:
            code = e.code
        return time.perf_counter() - t, code

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, jobs))


def drive(issuer: IssuerRun, jobs: list, procs: int, threads: int) -> dict:
    chunks = [jobs[i::procs] for i in range(procs)]
    cpu0 = _cpu(issuer.proc.pid)
    t = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        results = [r for part in pool.map(_worker, [(issuer.address, issuer.ca_pem.decode(), c, threads)
                                                     for c in chunks]) for r in part]
    wall = time.perf_counter() - t
    lat = sorted(r[0] for r in results)
    return {"n": len(results), "ok": sum(1 for r in results if r[1] == 200), "wall": wall,
            "rate": len(results) / wall, "p50": statistics.median(lat) * 1000,
            "p99": lat[int(len(lat) * 0.99) - 1] * 1000, "cpu": _cpu(issuer.proc.pid) - cpu0}


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=5000)
    ap.add_argument("--procs", type=int, default=2, help="client processes")
    ap.add_argument("--threads", type=int, default=8, help="client threads per process")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()

    kube = KubeAPI().start()
    t = time.perf_counter()
    pods = []
    for i in range(args.pods):
        ns = f"shop{i // 100:03d}-prod"
        if i % 10 == 0:
            kube.add_service(ns, f"svc{i // 10}", {"app": f"svc{i // 10}"})
        pods.append(kube.add_pod(ns, f"pod-{i}", f"sa{i % 7}", {"app": f"svc{i // 10}"},
                                 {"sds-injector.io/env": "prod", "sds-injector.io/business-line": "retail"},
                                 ip=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"))
    tokens = [kube.mint(p) for p in pods]
    csrs = [csr_pem(new_key("ec"), "retail-service-cert") for _ in pods]
    print(f"{args.pods} pods, tokens and CSRs prepared in {time.perf_counter() - t:.1f} s", file=sys.stderr)

    rows = []
    for verifier in ("jwks", "tokenreview"):
        with tempfile.TemporaryDirectory() as tmp:
            issuer = IssuerRun(Path(tmp), kube, ROOT / "examples" / "config.yaml", verifier=verifier)
            issuer.env["ISSUER_LOG_LEVEL"] = "WARNING"
            issuer.start(timeout=120)
            try:
                base = drive(issuer, [(None, "", "")] * args.pods, args.procs, args.threads)
                csr = drive(issuer, list(zip(tokens, ["retail-service-cert"] * len(tokens), csrs, strict=True)), args.procs,
                            args.threads)
                rss = _rss_mb(issuer.proc.pid)
            finally:
                issuer.stop()
        assert csr["ok"] == csr["n"], f"{csr['n'] - csr['ok']} CSRs failed ({verifier})"
        rows.append((verifier, base, csr, rss))

    out = [f"## {dt.date.today()} scripts/bench_issuer.py", "", machine() + ".", "",
           f"One issuer process, {args.pods} pods (API double: {args.pods // 100} namespaces, {args.pods // 10} "
           f"Services), EC P-256 CSRs, a new TLS connection per request, {args.procs}×{args.threads} client "
           "threads on the same 2 cores.", "",
           "| verifier | workload | requests/s | p50 ms | p99 ms | issuer CPU ms/request | "
           f"time for {args.pods} | vs baseline | issuer RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
    for verifier, base, csr, rss in rows:
        for name, r in (("baseline GET /healthz", base), ("CSR → certificate", csr)):
            out.append(f"| {verifier} | {name} | {r['rate']:,.0f} | {r['p50']:.1f} | {r['p99']:.1f} | "
                       f"{r['cpu'] / r['n'] * 1000:.2f} | {r['wall']:.1f} s | {r['rate'] / base['rate']:.2f} | "
                       f"{rss:.0f} |")
    text = "\n".join(out) + "\n"
    print(text)
    if args.record:
        append_to_benchmarks(text)
    kube.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
