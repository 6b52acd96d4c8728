"""The seed's flash-sale scale-out (50 → 5,000 pods) on one machine, stage by stage:
1. admission: one AdmissionReview per new pod (50 Deployments' pods, distinct names) through the
   webhook over HTTPS (`python -m webhook serve`, one worker);
2. issuance: each pod's CSR + projected token through the issuer (`python -m webhook issuer`,
   JWKS verification; the cluster is the API double holding the 5,000 pods);
3. issuance through real OpenBao instead (`pki/sign`, token auth);
4. the sidecars: pod start → first mTLS response, for a sample of injected pods run from their
   specs (real agent + Envoy), one after another.
Prints pods/minute per stage and which limits; the webhook's and the issuer's RSS after the
5,000. Stages run one after another on the same 2 cores (a cluster spreads them over nodes).
    python scripts/bench_scaleout.py [--pods 5000] [--sample 5] [--record]"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devkit.issuer_run import IssuerRun  # noqa: E402
from devkit.kube_api import KubeAPI  # noqa: E402
from devkit.webhook_run import WebhookRun  # noqa: E402
from scripts.bench_issuer import _rss_mb, drive  # noqa: E402
from scripts.bench_webhook import machine  # noqa: E402
from sds_core.pki.ca import LocalCA  # noqa: E402
from sds_core.sds.sources.issuer import csr_pem, new_key  # noqa: E402

CONFIG = ROOT / "examples" / "config.yaml"
ANNOTATIONS = {"sds-injector.io/env": "prod", "sds-injector.io/business-line": "retail",
               "sds-injector.io/inbound": "8443:8080"}


def review(i: int) -> bytes:
    deployment = f"svc{i // 100}"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": f"{deployment}-{i:05d}", "namespace": "shop-prod", "labels": {"app": deployment},
        "annotations": ANNOTATIONS}, "spec": {"serviceAccountName": deployment, "containers": [
            {"name": "app", "image": "registry.example/web:1", "ports": [{"containerPort": 8080}]}]}}
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(i), "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE",
        "namespace": "shop-prod", "object": pod}}).encode()


def admission(pods: int, threads: int = 8) -> tuple[float, int, float]:
    """(seconds for `pods` reviews, how many were injected, webhook RSS MB after)."""
    with WebhookRun(namespaces=("shop-prod",)) as hook:
        local = threading.local()

        def post(body: bytes) -> bool:
            if not hasattr(local, "c"):
                local.c = http.client.HTTPSConnection("127.0.0.1", hook.port, context=hook.ssl, timeout=10)
            local.c.request("POST", "/mutate", body, {"Content-Type": "application/json"})
            out = json.loads(local.c.getresponse().read())
            return bool(out["response"].get("patch"))
        bodies = [review(i) for i in range(pods)]
        t = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            injected = sum(pool.map(post, bodies))
        return time.perf_counter() - t, injected, _rss_mb(hook.proc.pid)


def issuance(pods: int) -> tuple[dict, float]:
    kube = KubeAPI().start()
    try:
        made = []
        for i in range(pods):
            d = f"svc{i // 100}"
            if i % 100 == 0:
                kube.add_service("shop-prod", d, {"app": d})
            made.append(kube.add_pod("shop-prod", f"{d}-{i:05d}", d, {"app": d}, ANNOTATIONS,
                                     ip=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"))
        jobs = [(kube.mint(p), "retail-service-cert", csr_pem(new_key("ec"), "retail-service-cert")) for p in made]
        with tempfile.TemporaryDirectory() as tmp:
            issuer = IssuerRun(Path(tmp), kube, CONFIG, verifier="jwks")
            issuer.env["ISSUER_LOG_LEVEL"] = "WARNING"
            issuer.start(timeout=120)
            try:
                r = drive(issuer, jobs, 2, 8)
                return r, _rss_mb(issuer.proc.pid)
            finally:
                issuer.stop()
    finally:
        kube.stop()


def openbao(pods: int) -> tuple[float, int]:
    from devkit.openbao import OpenBao
    from scripts.bench_vault import Load

    with tempfile.TemporaryDirectory() as tmp:
        bao = OpenBao(Path(tmp)).start()
        try:
            bao.pki("pki_ec", key_type="ec", role="prod")
            load = Load(bao, bao.token(["pki_ec/sign/prod"]))
            csrs = [csr_pem(new_key("ec"), "web") for _ in range(min(pods, 500))]
            body = {"common_name": "web", "alt_names": "web.shop-prod.svc", "ttl": "24h",
                    "uri_sans": "spiffe://cluster.local/ns/shop-prod/sa/web"}
            jobs = [("POST", "pki_ec/sign/prod", {**body, "csr": csrs[i % len(csrs)]}) for i in range(pods)]
            wall, _, failures = load.run(jobs, threads=8)
            return wall, failures
        finally:
            bao.stop()


def sidecars(sample: int) -> list[float]:
    from scripts.bench_footprint import one_pod

    from devkit.harness import issue, save_pair

    ca = LocalCA.generate("scale-out CA")
    with tempfile.TemporaryDirectory() as d:
        client = save_pair(Path(d), issue(ca, "tester", spiffe="spiffe://cluster.local/ns/shop-prod/sa/tester"), "c")
        out = []
        for i in range(sample):
            (Path(d) / f"p{i}").mkdir()
            out.append(one_pod(Path(d) / f"p{i}", ca, client)["start_s"])
        return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=5000)
    ap.add_argument("--sample", type=int, default=5)
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args()
    per_min = lambda n, s: n / s * 60  # noqa: E731
    adm_s, injected, webhook_rss = admission(a.pods)
    assert injected == a.pods, f"only {injected} of {a.pods} injected"
    iss, issuer_rss = issuance(a.pods)
    assert iss["ok"] == iss["n"], f"{iss['n'] - iss['ok']} CSRs refused"
    bao_s, bao_failures = openbao(a.pods)
    starts = sidecars(a.sample)
    stages = {"admission (webhook, HTTPS)": per_min(a.pods, adm_s),
              "issuance (issuer, JWKS)": per_min(a.pods, iss["wall"]),
              "issuance (OpenBao pki/sign)": per_min(a.pods, bao_s)}
    both = per_min(a.pods, adm_s + iss["wall"])
    lines = [f"### Scale-out 50 → {a.pods:,} pods, {dt.date.today()} ({machine()})", "",
             "| stage | time for all | pods/minute |", "|---|---|---|",
             f"| admission (webhook, HTTPS, 8 clients) | {adm_s:.1f} s | {stages['admission (webhook, HTTPS)']:,.0f} |",
             f"| issuance (issuer, JWKS, 2×8 clients) | {iss['wall']:.1f} s | {stages['issuance (issuer, JWKS)']:,.0f} |",
             f"| issuance (OpenBao pki/sign, 8 clients; {bao_failures} failures) | {bao_s:.1f} s | "
             f"{stages['issuance (OpenBao pki/sign)']:,.0f} |",
             f"| admission + issuer issuance, one after the other on these 2 cores | {adm_s + iss['wall']:.1f} s | "
             f"**{both:,.0f}** |",
             f"| sidecars: pod start → first mTLS response (sample of {a.sample}, sequential) | median "
             f"{statistics.median(starts):.2f} s, max {max(starts):.2f} s | per node, in parallel |", "",
             f"Limiting stage: {min(stages, key=stages.get)}. Webhook RSS after {a.pods:,} reviews: "
             f"{webhook_rss:.0f} MB; issuer RSS after {a.pods:,} issuances (inventory of {a.pods:,}, caches of "
             f"{a.pods:,} pods): {issuer_rss:.0f} MB."]
    text = "\n".join(lines)
    print(text)
    if a.record:
        with open(ROOT / "docs" / "benchmarks.md", "a") as f:
            f.write("\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
