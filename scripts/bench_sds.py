"""SDS agent benchmark: rotation propagation to a real Envoy, cold start, resident memory, many
secrets to one subscriber. (Vault load is scripts/bench_vault.py, against real OpenBao.) Prints
tables; --record appends to docs/benchmarks.md. Figures, not pass/fail."""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from envoy.service.discovery.v3 import discovery_pb2  # noqa: E402
from envoy.service.secret.v3 import sds_pb2_grpc  # noqa: E402

from scripts.bench_webhook import machine  # noqa: E402
from sds_core.pki.ca import LocalCA  # noqa: E402
from sds_core.sds.server import TYPE_URL  # noqa: E402
from devkit import envoy_configs, harness  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def private_mb(pid: int) -> float:
    """Anonymous memory: what each agent costs beyond the library code all agents on a node share."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(samples: list[float], p: int) -> float:
    return statistics.quantiles(samples, n=100)[p - 1] if len(samples) > 1 else samples[0]


def rotation_and_footprint(work: Path, rotations: int, rss_seconds: float) -> list[str]:
    ca = LocalCA.generate("bench CA")
    root = work / "certs"
    harness.write_cert_dir(root, "server-cert", ca.issue("localhost", ["localhost"]))
    harness.write_cert_dir(root, "trust", ca_pem=ca.cert_pem)
    sock, port = work / "sds.sock", harness.free_port()
    envoy = harness.Envoy(work, envoy_configs.tls_server(sock, port, "server-cert")).start()
    agent = harness.Agent(work, "agent", socket_path=str(sock), source="files", files_root=str(root),
                          certificates="server-cert", trust_bundles="trust")
    out = []
    try:
        time.sleep(1)  # Envoy is up and asking before the agent exists
        t0 = time.monotonic()
        agent.start()
        harness.wait_for(lambda: harness.peer_cert(port, ca.cert_pem), 20, interval=0.005, what="first secret")
        cold = time.monotonic() - t0
        lat = []
        for _ in range(rotations):
            new = ca.issue("localhost", ["localhost"])
            t = time.monotonic()
            harness.write_cert_dir(root, "server-cert", new)
            harness.wait_for(lambda new=new: harness.peer_cert(port, ca.cert_pem).serial_number
                             == new.certificate.serial_number, 10, interval=0.002, what="rotation")
            lat.append((time.monotonic() - t) * 1000)
        time.sleep(rss_seconds)
        rss, private = rss_mb(agent.p.pid), private_mb(agent.p.pid)
        out += ["| measure | value | target |", "|---|---|---|",
                f"| rotation → new serial at Envoy, p50 ({rotations} rotations, files source, 50 ms poll) | "
                f"{pct(lat, 50):.0f} ms | |",
                f"| rotation → new serial at Envoy, p99 | {pct(lat, 99):.0f} ms | ≤ 100 ms |",
                f"| cold start: agent process start → first handshake on Envoy's listener | {cold * 1000:.0f} ms | ≤ 1 s |",
                f"| agent resident memory after serving 2 names for {rss_seconds:.0f} s | {rss:.1f} MB RSS, of which "
                f"{private:.1f} MB private (the rest is shared library code) | ≤ 50 MB |"]
    finally:
        agent.stop()
        envoy.stop()
    return out


async def subscribe_all(sock: Path, names: list[str]) -> tuple[float, int]:
    async with grpc.aio.insecure_channel(f"unix:{sock}", options=[("grpc.max_receive_message_length", -1)]) as ch:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(ch)
        q: asyncio.Queue = asyncio.Queue()

        async def requests():
            while (r := await q.get()) is not None:
                yield r
        t0 = time.monotonic()
        q.put_nowait(discovery_pb2.DiscoveryRequest(type_url=TYPE_URL, resource_names=names))
        got, call = 0, stub.StreamSecrets(requests())
        async for resp in call:
            got += len(resp.resources)
            q.put_nowait(discovery_pb2.DiscoveryRequest(type_url=TYPE_URL, resource_names=names,
                                                        version_info=resp.version_info, response_nonce=resp.nonce))
            if got >= len(names):
                break
        elapsed = time.monotonic() - t0
        q.put_nowait(None)
        call.cancel()
        return elapsed, got


def many_secrets(work: Path, counts: list[int]) -> list[str]:
    out = ["| names | agent ready (issue all, local CA) | delivered + ACKed to one subscriber | agent RSS |",
           "|---|---|---|---|"]
    for n in counts:
        names = [f"tenant-{i:05d}-cert" for i in range(n)]
        names_file = work / f"names-{n}.txt"
        names_file.write_text("\n".join(names))
        a = harness.Agent(work, f"agent-{n}", source="local-ca", certificates_file=str(names_file), service="gw",
                          log_level="WARNING")
        t0 = time.monotonic()
        a.start()
        try:
            a.wait_ready(timeout=600)
            ready = time.monotonic() - t0
            elapsed, got = asyncio.run(subscribe_all(a.socket, names))
            out.append(f"| {n:,} | {ready:.1f} s | {elapsed:.2f} s ({got:,} secrets) | {rss_mb(a.p.pid):.0f} MB "
                       f"({private_mb(a.p.pid):.0f} MB private) |")
        finally:
            a.stop()
        print(out[-1], flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rotations", type=int, default=50)
    ap.add_argument("--rss-seconds", type=float, default=60)
    ap.add_argument("--names", default="1000,10000")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    if harness.ENVOY is None:
        print("envoy not found: run ./scripts/bootstrap.sh first")
        return 1
    sections = []
    with tempfile.TemporaryDirectory(prefix="bench-sds-") as tmp:
        work = Path(tmp)
        for title, rows in [
            ("Rotation, cold start and footprint (real Envoy)", lambda: rotation_and_footprint(work, args.rotations, args.rss_seconds)),
            ("Many secrets to one subscriber (gRPC client, SotW, one request for all names)",
             lambda: many_secrets(work, [int(n) for n in args.names.split(",")])),
        ]:
            table = "\n".join(rows())
            print(f"\n{title}\n\n{table}", flush=True)
            sections.append(f"### {title}\n\n{table}\n")
    if args.record:
        with open(ROOT / "docs" / "benchmarks.md", "a") as f:
            f.write(f"\n## {dt.date.today()} scripts/bench_sds.py\n\n{machine()}.\n\n" + "\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
