"""Gateway mode at scale, real Envoy: N tenants' claims (a claims file) → the gateway agent
issues N certificates (embedded local CA, in the agent) → Envoy serves them by SNI over ADS.

Prints, per tenant count: seconds from start to every certificate issued, and from then to
Envoy serving all of them (the listener ACKed and every SNI checked by a handshake); Envoy's
and the agent's memory (RSS and private dirty) once all are served; TLS handshakes per second
across many SNIs versus one SNI (the baseline, same run, same client). Figures, not pass/fail.
    python scripts/bench_gateway.py --tenants 1000 10000 [--record]"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devkit.gatewayrun import EchoBackend, GatewayRun, claim, claim_configmap, sans, write_claims  # noqa: E402
from devkit.process import memory_mb  # noqa: E402
from devkit.harness import wait_for  # noqa: E402
from scripts.bench_webhook import machine  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def handshakes(gw: GatewayRun, names: list[str], count: int, threads: int = 4) -> float:
    """Handshakes per second, `threads` clients, each on a new connection."""
    picks = [names[i % len(names)] for i in range(count)]
    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        certs = list(pool.map(gw.handshake, picks))
    elapsed = time.perf_counter() - t
    assert all(certs)
    return count / elapsed


def run(n: int, workdir: Path, backend: EchoBackend, **extra) -> dict:
    # A live backend: with none, tcp_proxy's failed upstream connect can cut a handshake short.
    items = [claim_configmap(f"t{i}", claim([f"t{i}.example.com"], backend.port)) for i in range(n)]
    claims = write_claims(workdir / "claims.json", items)
    t0 = time.monotonic()
    gw = GatewayRun(workdir, backend.port, source="local-ca", claims_file=claims, claims_file_poll_seconds="0.05",
                    local_ca_cert_ttl_seconds="86400", **extra).start()
    try:
        wait_for(lambda: gw.status().get("served") == n, 600, 0.05, what="all certificates issued")
        issued = time.monotonic() - t0
        sample = [f"t{i}.example.com" for i in (0, n - 1, *random.sample(range(n), min(50, n)))]
        wait_for(lambda: all(gw.served(s) for s in sample), 600, 0.05, what="Envoy serving the sample")
        served = time.monotonic() - t0
        # One more tenant while N are served, then one fewer: what a tenant's change costs at this
        # size (the claims file is polled every 50 ms here; a cluster watch is as prompt).
        items.append(claim_configmap("late", claim(["late.example.com"], backend.port)))
        t_add = time.monotonic()
        write_claims(workdir / "claims.json", items)
        wait_for(lambda: gw.served("late.example.com"), 120, 0.02, what="the added tenant")
        added = time.monotonic() - t_add
        items.pop()
        t_rm = time.monotonic()
        write_claims(workdir / "claims.json", items)
        wait_for(lambda: not gw.served("late.example.com"), 120, 0.02, what="the removed tenant gone")
        removed = time.monotonic() - t_rm
        # Correctness, after the clock: every SNI gets its own tenant's certificate.
        wrong = [i for i in range(n) if sans(gw.handshake(f"t{i}.example.com")) != [f"t{i}.example.com"]]
        envoy_mem, agent_mem = memory_mb(gw.envoy.p.pid), memory_mb(gw.agent.p.pid)
        names = [f"t{i}.example.com" for i in range(n)]
        many = handshakes(gw, names, 2000)
        one = handshakes(gw, names[:1], 2000)
        return {"tenants": n, "issued_s": issued, "served_after_issuance_s": served - issued, "wrong": len(wrong),
                "one_added_s": added, "one_removed_s": removed, "shards": extra.get("gateway_shards", "64"), "envoy_cpu_s": cpu_seconds(gw.envoy.p.pid), "agent_cpu_s": cpu_seconds(gw.agent.p.pid),
                "envoy_rss_mb": envoy_mem[0], "envoy_private_mb": envoy_mem[1],
                "agent_rss_mb": agent_mem[0], "agent_private_mb": agent_mem[1],
                "hs_many": many, "hs_one": one}
    finally:
        gw.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--shards", nargs="+", default=["1", "64"],
                    help="gateway_shards to compare; 1 is the baseline: every tenant in one listener")
    ap.add_argument("--record", action="store_true", help="append the figures to docs/benchmarks.md")
    a = ap.parse_args()
    rows = []
    backend = EchoBackend()
    for n in a.tenants:
        for shards in a.shards:
            with tempfile.TemporaryDirectory() as d:
                r = run(n, Path(d), backend, gateway_shards=shards)
            rows.append(r)
            report(r)
    if a.record:
        record(rows)
    return 0


def report(r: dict) -> None:
    n = r["tenants"]
    print(f"{n:>6} tenants, {r['shards']} shard(s): issued in {r['issued_s']:.1f}s, all served by Envoy {r['served_after_issuance_s']:.2f}s "
              f"later ({r['wrong']} wrong; CPU so far: Envoy {r['envoy_cpu_s']:.1f}s, agent {r['agent_cpu_s']:.1f}s); "
              f"one tenant added at run time served in {r['one_added_s']:.2f}s, removed in {r['one_removed_s']:.2f}s; Envoy {r['envoy_rss_mb']:.0f} MB RSS / {r['envoy_private_mb']:.0f} MB "
              f"private, agent {r['agent_rss_mb']:.0f} / {r['agent_private_mb']:.0f} MB; handshakes/s "
              f"{r['hs_many']:.0f} across {n} SNIs vs {r['hs_one']:.0f} on one ({r['hs_many'] / r['hs_one']:.2f}x)",
              flush=True)


def record(rows: list[dict]) -> None:
    lines = [f"\n### Gateway, {dt.date.today()} ({machine()})\n",
             "| tenants | shards | all issued (s) | all served after issuance (s) | one tenant added / removed (s) | "
             "Envoy RSS / private (MB) | agent RSS / private (MB) | handshakes/s many SNIs vs one |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['tenants']:,} | {r['shards']} | {r['issued_s']:.1f} | {r['served_after_issuance_s']:.2f} | "
                     f"{r['one_added_s']:.2f} / {r['one_removed_s']:.2f} | "
                     f"{r['envoy_rss_mb']:.0f} / {r['envoy_private_mb']:.0f} | {r['agent_rss_mb']:.0f} / "
                     f"{r['agent_private_mb']:.0f} | {r['hs_many']:.0f} vs {r['hs_one']:.0f} "
                     f"({r['hs_many'] / r['hs_one']:.2f}x) |")
    with open(ROOT / "docs" / "benchmarks.md", "a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
