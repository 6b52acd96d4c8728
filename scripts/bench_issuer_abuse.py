"""The issuer under abuse (one `python -m webhook issuer` process, TokenReview mode, the API double
served from this process). Measured in one run:
- junk-token floods: TokenReviews they cause (target 0), per kind of junk;
- an OCSP flood: signatures made per serial (target ≤ 1 per reuse window);
- legitimate issuance (one CSR per pod, new TLS connection each) alone, then during both floods
  at once: the ratio.
--record appends the table to docs/benchmarks.md. Figures, not pass/fail."""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import re
import ssl
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devkit.issuer_run import IssuerRun  # noqa: E402
from devkit.kube_api import KubeAPI  # noqa: E402
from scripts.bench_webhook import append_to_benchmarks, machine  # noqa: E402
from sds_core.pki.ocsp import leaf_and_issuer, request  # noqa: E402
from sds_core.sds.sources.issuer import csr_pem, new_key  # noqa: E402

PROD = {"sds-injector.io/env": "prod", "sds-injector.io/business-line": "retail"}


class Client:
    """A new TLS connection per request (as agents renew), from `source`: the attackers use another
    loopback address than the legitimate pods, as they would another pod IP."""

    def __init__(self, issuer: IssuerRun, source: str = "127.0.0.1"):
        self.port, self.source = issuer.port, source
        self.ctx = ssl.create_default_context(cadata=issuer.ca_pem.decode())

    def post(self, path: str, data: bytes, token: str | None = None,
             content_type: str = "application/json") -> tuple[int, bytes]:
        headers = {"content-type": content_type, **({"authorization": f"Bearer {token}"} if token else {})}
        conn = http.client.HTTPSConnection("localhost", self.port, timeout=30, context=self.ctx,
                                           source_address=(self.source, 0))
        try:
            conn.request("POST", path, body=data, headers=headers)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def csr(self, token: str | None, csr: str) -> int:
        return self.post("/v1/certificates", json.dumps({"name": "retail-service-cert", "csr": csr}).encode(),
                         token)[0]


def reviews(kube: KubeAPI) -> int:
    return sum(1 for m, p in list(kube.requests) if m == "POST" and p.endswith("/tokenreviews"))


def junk_kinds(kube: KubeAPI, pod: dict) -> dict[str, list[str | None]]:
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "no token / not a JWT": [None, "not-a-jwt", "x" * 900, "a.b.c"],
        "well-formed, wrong audience or expired": [kube.mint(pod, audience="other"),
                                                   kube.mint(pod, ttl=-3600, now=time.time() - 10)],
        "unsigned (alg none)": [jwt.encode({"aud": ["sds-injector"], "exp": time.time() + 3600}, None,
                                           algorithm="none")],
        # The pod's real claims, signed with the attacker's own key: only the API server can tell.
        "forged signature, a real pod's claims": [kube.mint(pod, key=forger)],
    }


def flood(fn, n: int, threads: int) -> float:
    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: fn(i), range(n)))
    return time.perf_counter() - t


def legit(client: Client, jobs: list[tuple[str, str]], threads: int) -> tuple[float, int]:
    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        codes = list(pool.map(lambda j: client.csr(*j), jobs))
    return len(jobs) / (time.perf_counter() - t), sum(1 for c in codes if c == 200)


def ocsp_signatures(issuer: IssuerRun) -> float:
    text = issuer.get("/metrics", ops=True)[1].decode()
    m = re.search(r"^sds_issuer_ocsp_signatures_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=400, help="legitimate pods (half alone, half under the floods)")
    ap.add_argument("--junk", type=int, default=500, help="requests per kind of junk")
    ap.add_argument("--ocsp", type=int, default=5000, help="OCSP requests in the flood")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()

    kube = KubeAPI().start()
    pods = [kube.add_pod(f"shop{i // 100}-prod", f"pod-{i}", "cart", {"app": "cart"}, PROD,
                         ip=f"10.0.{i // 256}.{i % 256}") for i in range(args.pods)]
    jobs = [(kube.mint(p), csr_pem(new_key("ec"), "retail-service-cert")) for p in pods]
    half = args.pods // 2
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        issuer = IssuerRun(Path(tmp), kube, ROOT / "examples" / "config.yaml", verifier="tokenreview",
                           log_level="WARNING")
        issuer.start(timeout=120)
        client, attacker = Client(issuer), Client(issuer, source="127.0.0.2")
        try:
            for kind, tokens in junk_kinds(kube, pods[0]).items():
                before = reviews(kube)
                flood(lambda i, t=tokens: attacker.csr(t[i % len(t)], jobs[0][1]), args.junk, args.threads)
                rows.append(f"| junk flood: {kind} | {args.junk} requests | TokenReviews: "
                            f"**{reviews(kube) - before}** | target 0 |")
            alone, ok_alone = legit(client, jobs[:half], args.threads)
            # Serials to ask about: certificates of the pods just issued.
            chains = []
            for token, csr in jobs[:4]:
                status, body = client.post("/v1/certificates", json.dumps(
                    {"name": "retail-service-cert", "csr": csr}).encode(), token)
                chains.append(json.loads(body)["certificate_chain"].encode())
            ocsp_requests = [request(*leaf_and_issuer(c)) for c in chains]
            signed0 = ocsp_signatures(issuer)
            took = flood(lambda i: attacker.post("/v1/ocsp", ocsp_requests[i % len(ocsp_requests)],
                                               content_type="application/ocsp-request"), args.ocsp, args.threads)
            signed = ocsp_signatures(issuer) - signed0
            rows.append(f"| OCSP flood: {args.ocsp} requests for {len(ocsp_requests)} serials in {took:.1f} s | "
                        f"{args.ocsp / took:,.0f}/s | signatures: **{signed:.0f}** "
                        f"({signed / len(ocsp_requests):.1f} per serial) | ≤ 1 per serial per 30 min |")
            stop = threading.Event()
            junk = [t for ts in junk_kinds(kube, pods[0]).values() for t in ts]

            def abuse(i: int) -> None:
                while not stop.is_set():
                    if i % 2:
                        attacker.csr(junk[int(time.perf_counter() * 1000) % len(junk)], jobs[0][1])
                    else:
                        attacker.post("/v1/ocsp", ocsp_requests[i % len(ocsp_requests)],
                                    content_type="application/ocsp-request")

            floods = [threading.Thread(target=abuse, args=(i,), daemon=True) for i in range(args.threads)]
            for f in floods:
                f.start()
            during, ok_during = legit(client, jobs[half:], args.threads)
            stop.set()
            for f in floods:
                f.join()
        finally:
            issuer.stop()
    rows.append(f"| legitimate issuance alone ({half} pods, {args.threads} clients) | {alone:,.0f}/s | "
                f"{ok_alone}/{half} issued | |")
    rows.append(f"| legitimate issuance during junk + OCSP floods ({args.threads} more clients flooding) | "
                f"{during:,.0f}/s | {ok_during}/{args.pods - half} issued | ratio **{during / alone:.2f}** |")
    out = [f"### Issuer under abuse, {dt.date.today()} (scripts/bench_issuer_abuse.py)", "", machine() + ".", "",
           "| what | load | result | goal |", "|---|---|---|---|", *rows]
    text = "\n".join(out) + "\n"
    print(text)
    if args.record:
        append_to_benchmarks(text)
    kube.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
