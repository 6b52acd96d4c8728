"""SDS agent benchmark: rotation propagation to a real Envoy, cold start, resident memory, many
secrets to one subscriber, and Vault load at scale (with the Vault API test double). Prints
tables; --record appends to docs/benchmarks.md. Figures, not pass/fail."""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
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
from sds_sidecar import material  # noqa: E402
from sds_sidecar.ca import LocalCA  # noqa: E402
from sds_sidecar.renewal import renew_delay  # noqa: E402
from sds_sidecar.settings import AgentSettings  # noqa: E402
from sds_sidecar.server import TYPE_URL  # noqa: E402
from tests import envoy_configs, harness  # noqa: E402


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
            harness.wait_for(lambda: harness.peer_cert(port, ca.cert_pem).serial_number
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


def vault_load(work: Path, lifetime_s: int) -> list[str]:
    from sds_sidecar.cache import SecretCache
    from sds_sidecar.renewal import Renewer
    from sds_sidecar.sources.base import SecretSpec
    from sds_sidecar.sources.vault import VaultSource
    from tests.vault_double import VaultDouble

    d = VaultDouble().start()
    d.add_pki("pki_retail", {"prod": {"not_before_duration": "0s"}})
    tok = d.root_token()
    s = AgentSettings(source="vault", vault_addresses=[d.addr], vault_auth="token", vault_token=tok,
                      certificates=["web-cert"], trust_bundles=["trust"], service="web", namespace="shop",
                      env="prod", business_line="retail", vault_pki_ttl=f"{lifetime_s}s", vault_poll_seconds=1,
                      rotation_floor_seconds=0, vault_crl=True)
    specs = [SecretSpec("web-cert", material.TLS_CERTIFICATE), SecretSpec("trust", material.VALIDATION_CONTEXT)]

    async def run():
        src = VaultSource(s)
        r = Renewer(s, SecretCache(), specs, {sp.name: src for sp in specs})
        await r.start()
        await asyncio.sleep(lifetime_s)
        await r.stop()
    asyncio.run(run())
    d.stop()
    issues = d.requests_to("/v1/pki_retail/issue")
    reads = len(d.log) - issues
    per_round = reads / lifetime_s  # 1 s poll
    poll = AgentSettings().vault_poll_seconds
    # 1,000 agents whose 24 h certificates were issued in the same second (a scale-out burst).
    rng, s24 = random.Random(1), AgentSettings()
    now = dt.datetime.now(dt.timezone.utc)
    m = material.SecretMaterial(kind=material.TLS_CERTIFICATE, not_before=now, not_after=now + dt.timedelta(hours=24))
    delays = sorted(renew_delay(m, s24, now, rng) for _ in range(1000))
    spread = delays[-1] - delays[0]
    per_sec = max(sum(1 for x in delays if t <= x < t + 1) for t in range(int(delays[0]), int(delays[-1]) + 1))
    return ["| measure | value |", "|---|---|",
            f"| one agent, one {lifetime_s} s certificate lifetime (1 certificate + 1 trust bundle, CRL on, 1 s poll) | "
            f"{len(d.log)} requests: {issues} issue, {reads} CA chain / CRL reads (≤{per_round:.1f} per poll round, "
            "initial reads included) |",
            "| one agent, 24 h certificate: issue requests per day | 2 (renewal at half the lifetime, ±10 %) |",
            f"| one agent, default {poll:.0f} s poll: unauthenticated CA chain / CRL reads per day | "
            f"{per_round * 86400 / poll:,.0f} |",
            f"| 1,000 agents issued in the same second (24 h certificates): renewal times | spread over "
            f"{spread / 3600:.1f} h, at most {per_sec} renewals in any one second |",
            f"| projected to 5,000 pods | ≈{5000 / spread:.2f} issue requests/s, peak ≈{per_sec * 5} in one second; "
            f"≈{5000 * per_round / poll:,.0f} CA chain / CRL reads/s |"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rotations", type=int, default=50)
    ap.add_argument("--rss-seconds", type=float, default=60)
    ap.add_argument("--names", default="1000,10000")
    ap.add_argument("--vault-lifetime", type=int, default=10)
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
            ("Vault load (Vault API test double, not Vault)", lambda: vault_load(work, args.vault_lifetime)),
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
