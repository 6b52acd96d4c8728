"""`python -m webhook audit verify FILE [--public-key PEM]`: every replica's chain, and with the
audit public key its signed checkpoints. A record up to a replica's last valid checkpoint is
confirmed: rewriting it (and recomputing the chain after it) changes the checkpoint's hash, whose
signature then fails. Records after the last checkpoint are reported as unconfirmed. A replica
with records but no valid checkpoint is forged; a replica a checkpoint names but whose records
are absent was removed; a head a checkpoint saw that the stream no longer has was rewritten."""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .audit import CHECKPOINT, GENESIS, digest, records


@dataclass
class Report:
    count: int
    problems: list[str] = field(default_factory=list)
    unconfirmed: dict[str, int] = field(default_factory=dict)  # replica -> records after its last checkpoint


def verify(data: bytes, public_key: Ed25519PublicKey | None = None) -> Report:
    recs = records(data)
    report = Report(len(recs))
    _chains(recs, report.problems)
    if public_key is not None:
        _checkpoints(recs, public_key, report)
    return report


def _chains(recs: list, problems: list[str]) -> None:
    """Each replica's records chain from the genesis value, with consecutive sequence numbers and
    untouched contents."""
    last: dict[str, tuple[Any, int]] = {}  # replica -> (hash of its last record, its seq)
    for n, rec in enumerate(recs, 1):
        if not isinstance(rec, dict):
            problems.append(f"line {n}: not a JSON record")
            continue
        replica = str(rec.get("replica"))
        if rec.get("hash") != digest(rec):
            problems.append(f"line {n}: record content does not match its hash (edited)")
        prev_hash, prev_seq = last.get(replica, (GENESIS, -1))
        if rec.get("prev") != prev_hash:
            problems.append(f"line {n}: does not follow the previous record of replica {replica} "
                            "(a record was deleted, inserted or reordered)")
        if rec.get("seq") != prev_seq + 1:
            problems.append(f"line {n}: sequence {rec.get('seq')} after {prev_seq} for replica {replica}")
        seq = rec.get("seq")
        last[replica] = (rec.get("hash"), seq if isinstance(seq, int) else prev_seq + 1)


def _signed(rec: dict, public_key: Ed25519PublicKey) -> bool:
    try:
        public_key.verify(base64.b64decode(str(rec.get("signature")), validate=True), bytes.fromhex(rec["hash"]))
    except (InvalidSignature, binascii.Error, ValueError, TypeError, KeyError):
        return False
    return rec["hash"] == digest(rec)


def _checkpoints(recs: list, public_key: Ed25519PublicKey, report: Report) -> None:
    by_replica: dict[str, list[dict]] = {}
    confirmed_upto: dict[str, int] = {}  # replica -> index in its own records of its last valid checkpoint
    named: dict[str, str] = {}  # replica named by a checkpoint -> the replica whose checkpoint named it
    heads: list[tuple[str, str, dict]] = []  # (signer, named replica, head)
    for n, rec in enumerate(recs, 1):
        if not isinstance(rec, dict):
            continue
        replica = str(rec.get("replica"))
        own = by_replica.setdefault(replica, [])
        own.append(rec)
        if rec.get("decision") != CHECKPOINT:
            continue
        if not _signed(rec, public_key):
            report.problems.append(f"line {n}: checkpoint of replica {replica} does not verify with the public "
                                   "key (its chain was rewritten, or the checkpoint forged)")
            continue
        confirmed_upto[replica] = len(own) - 1
        for other in rec.get("replicas") or []:
            named.setdefault(str(other), replica)
        for other, head in (rec.get("heads") or {}).items():
            heads.append((replica, str(other), head))
    for replica, own in by_replica.items():
        if replica not in confirmed_upto:
            report.problems.append(f"replica {replica}: {len(own)} records and no checkpoint signed with the "
                                   "audit key (not written by an issuer holding it)")
        elif len(own) - 1 > confirmed_upto[replica]:
            report.unconfirmed[replica] = len(own) - 1 - confirmed_upto[replica]
    for replica, signer in sorted(named.items()):
        if replica not in by_replica:
            report.problems.append(f"replica {replica}: named by a checkpoint of {signer} but has no records "
                                   "(its stream was removed)")
    for signer, replica, head in heads:
        seen = {(r.get("seq"), r.get("hash")) for r in by_replica.get(replica, [])}
        if isinstance(head, dict) and (head.get("seq"), head.get("hash")) not in seen:
            report.problems.append(f"replica {replica}: record {head.get('seq')} that a checkpoint of {signer} saw "
                                   "is missing or different (rewritten)")
