"""Signed audit checkpoints: an attacker who can write the audit stream (but does not hold the
audit key) can recompute the hash chain after any rewrite, which the chain alone accepts
(`chain intact`). Each of the four rewrites the issue tried must now be reported."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devkit.issuer_run import IssuerRun
from devkit.kube_api import KubeAPI
from tests.test_issuer import CONFIG, PROD, ROOT, sign
from webhook.issuer.audit import CHECKPOINT, GENESIS, AuditLog, digest
from webhook.issuer.audit_verify import verify

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))  # fixed: the test is deterministic
PUBLIC = KEY.public_key()


def stream(tmp_path: Path, per_replica: int = 6) -> list[dict]:
    """Two replicas on one file (as a shared volume or the collector's merge), checkpoints every 3 records."""
    path = tmp_path / "audit.jsonl"
    logs = [AuditLog(r, path, stream=io.StringIO(), key=KEY, every_records=3) for r in ("issuer-a", "issuer-b")]
    for i in range(per_replica):
        for log in logs:
            log.record("issued", namespace="shop", pod=f"cart-{i}", serial=f"{log.replica[-1]}{i}")
    for log in logs:
        log.checkpoint()  # at shutdown
    return [json.loads(x) for x in path.read_text().splitlines()]


def rechain(recs: list[dict]) -> list[dict]:
    """What an attacker without the key does after a rewrite: renumber and rehash every replica's chain."""
    out, last = [], {}
    for rec in recs:
        rec = dict(rec)
        prev, seq = last.get(rec["replica"], (GENESIS, -1))
        rec["seq"], rec["prev"] = seq + 1, prev
        rec["hash"] = digest(rec)
        last[rec["replica"]] = (rec["hash"], rec["seq"])
        out.append(rec)
    return out


def data(recs: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in recs)


def issued(recs: list[dict], replica: str) -> list[int]:
    return [i for i, r in enumerate(recs) if r["replica"] == replica and r["decision"] == "issued"]


def test_an_untouched_stream_verifies_and_every_record_is_confirmed(tmp_path):
    recs = stream(tmp_path)
    report = verify(data(recs), PUBLIC)
    assert report.problems == [] and report.unconfirmed == {}
    checkpoints = [r for r in recs if r["decision"] == CHECKPOINT]
    assert checkpoints and all("signature" in r for r in checkpoints)
    assert {"issuer-a", "issuer-b"} <= set(checkpoints[-1]["replicas"])


def test_records_after_the_last_checkpoint_are_reported_unconfirmed(tmp_path):
    recs = stream(tmp_path)
    log = AuditLog("issuer-a", tmp_path / "audit.jsonl", stream=io.StringIO(), key=None)
    log.record("issued", namespace="shop", pod="late")
    recs = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    report = verify(data(recs), PUBLIC)
    assert report.problems == [] and report.unconfirmed == {"issuer-a": 1}


@pytest.mark.parametrize("attack", ["delete a record", "reassign an issuance to another pod",
                                    "append a forged replica", "delete a whole replica's stream"])
def test_each_rewrite_that_recomputes_the_chain_is_detected(tmp_path, attack):
    recs = stream(tmp_path)
    if attack == "delete a record":
        forged = rechain([r for i, r in enumerate(recs) if i != issued(recs, "issuer-a")[1]])
    elif attack == "reassign an issuance to another pod":
        victim = issued(recs, "issuer-b")[2]
        forged = rechain([{**r, "pod": "someone-else"} if i == victim else r for i, r in enumerate(recs)])
    elif attack == "append a forged replica":
        fake = {"time": recs[-1]["time"], "replica": "issuer-z", "decision": "issued", "reason": "",
                "namespace": "bank-prod", "pod": "ledger-0", "serial": "z0"}
        signed_elsewhere = {**fake, "decision": CHECKPOINT, "replicas": ["issuer-z"], "heads": {}}
        forged = rechain(recs + [fake, signed_elsewhere])
        forged[-1]["signature"] = "AAAA"  # not made with the audit key
    else:
        forged = rechain([r for r in recs if r["replica"] != "issuer-b"])
    assert verify(data(forged)).problems == [], "the chain alone accepts the rewrite (as the issue found)"
    problems = verify(data(forged), PUBLIC).problems
    assert problems, attack


def test_the_issuer_signs_checkpoints_and_names_its_peers(tmp_path):
    """Two real issuer processes, each with its own audit file (as each pod's stdout would be): the
    collector's merge verifies with the public key; dropping one replica's whole stream is
    reported, because the other's checkpoints name it (its peers come from the pods it watches)."""
    key_file = tmp_path / "audit.key"
    public_file = tmp_path / "audit.pub"
    cli = [sys.executable, "-m", "webhook", "audit"]
    r = subprocess.run([*cli, "keygen", "--private-key", str(key_file), "--public-key", str(public_file)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and oct(key_file.stat().st_mode & 0o777) == "0o600", r.stderr
    kube = KubeAPI().start()
    labels = {"app.kubernetes.io/name": "sds-injector", "pod-template-hash": "abc"}
    for name in ("issuer-0", "issuer-1"):
        kube.add_pod("sds-system", name, "sds-injector", labels)
    runs = []
    for name in ("issuer-0", "issuer-1"):
        (tmp_path / name).mkdir()
        runs.append(IssuerRun(tmp_path / name, kube, CONFIG, replica=name, audit_key_file=key_file))
    try:
        for run in runs:
            run.launch()
        for run in runs:
            run.wait_ready()
        pod = kube.add_pod("shop-prod", "cart-0", "cart", {"app": "cart"}, PROD)
        for run in runs:
            assert sign(run, kube.mint(pod), "retail-service-cert")[0] == 200
    finally:
        for run in runs:
            run.stop()  # SIGTERM: a last checkpoint
        kube.stop()
    merged = tmp_path / "merged.jsonl"
    merged.write_bytes(b"".join(run.audit_file.read_bytes() for run in runs))
    ok = subprocess.run([*cli, "verify", str(merged), "--public-key", str(public_file)], capture_output=True,
                        text=True, cwd=ROOT)
    assert ok.returncode == 0 and "checkpoints verified" in ok.stdout and "unconfirmed" not in ok.stdout, ok.stdout
    alone = tmp_path / "one-replica.jsonl"
    alone.write_bytes(runs[0].audit_file.read_bytes())
    bad = subprocess.run([*cli, "verify", str(alone), "--public-key", str(public_file)], capture_output=True,
                         text=True, cwd=ROOT)
    assert bad.returncode == 1 and "replica issuer-1: named by a checkpoint of issuer-0" in bad.stdout, bad.stdout
