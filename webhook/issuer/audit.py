"""Tamper-evident audit of every issuance and refusal: one JSON record per line, each carrying
the SHA-256 of the previous record of the same replica, so an edited, deleted or reordered
record breaks the chain. Records go to stdout (for the log collector) and, when configured,
appended to a file. A replica restarting on the same file continues its chain.

A chain has no key: whoever can rewrite the file can recompute it. With an audit key (Ed25519,
kept apart from the CA keys) each replica also writes signed checkpoints of its chain head: at
start, every `every_records` records or `every_seconds` seconds, and at shutdown. A checkpoint
names the replicas its signer knows (the issuer pods it sees, and every replica whose records
share its file) with the heads it saw of theirs. `audit_verify.verify` checks them."""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

GENESIS = "0" * 64
CHECKPOINT = "checkpoint"


def digest(record: dict) -> str:
    """What `hash` must be: the SHA-256 of the record without its hash and signature."""
    body = {k: v for k, v in record.items() if k not in ("hash", "signature")}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def load_key(path: Path) -> Ed25519PrivateKey:
    """The audit signing key (PKCS#8 PEM, `python -m webhook audit keygen`); a clear error otherwise."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise ValueError(f"audit key {path}: not a readable PEM private key ({type(e).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"audit key {path}: must be an Ed25519 key (python -m webhook audit keygen)")
    return key


class AuditLog:
    def __init__(self, replica: str, path: Path | None = None, stream=None, key: Ed25519PrivateKey | None = None,
                 peers: Callable[[], Iterable[str]] = tuple, every_records: int = 100, every_seconds: float = 60):
        self.replica = replica
        self.path = path
        self.stream = stream if stream is not None else sys.stdout
        self.prev, self.seq = GENESIS, 0
        self.key, self.peers = key, peers
        self.every_records, self.every_seconds = every_records, every_seconds
        self._heads: dict[str, dict] = {}  # replica -> {"seq", "hash"} of its newest record in the file
        self._offset = 0  # how far the file has been read for other replicas' records
        self._since, self._last_checkpoint = 0, time.monotonic()
        self._lock = threading.Lock()
        self._read_file()
        mine = self._heads.get(replica)
        if mine is not None:
            self.prev, self.seq = mine["hash"], mine["seq"] + 1
        if key is not None:
            self.checkpoint()

    def record(self, decision: str, reason: str = "", **fields) -> dict:
        with self._lock:
            rec = self._write(decision, reason, fields)
            self._since += 1
            if self.key is not None and self._since >= self.every_records:
                self._checkpoint()
            return rec

    def checkpoint(self) -> dict | None:
        """A signed checkpoint now (none without a key)."""
        with self._lock:
            return self._checkpoint() if self.key is not None else None

    def checkpoint_if_due(self) -> None:
        """Called periodically: records written and `every_seconds` passed since the last checkpoint."""
        if self._since and time.monotonic() - self._last_checkpoint >= self.every_seconds:
            self.checkpoint()

    def _checkpoint(self) -> dict:
        self._read_file()
        heads = {r: h for r, h in self._heads.items() if r != self.replica}
        replicas = sorted({self.replica, *heads, *self.peers()})
        rec = self._write(CHECKPOINT, "", {"replicas": replicas, "heads": heads})
        self._since, self._last_checkpoint = 0, time.monotonic()
        return rec

    def _write(self, decision: str, reason: str, fields: dict) -> dict:
        rec = {"seq": self.seq, "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
               "replica": self.replica, "decision": decision, "reason": reason, **fields, "prev": self.prev}
        rec["hash"] = digest(rec)
        if decision == CHECKPOINT and self.key is not None:
            rec["signature"] = base64.b64encode(self.key.sign(bytes.fromhex(rec["hash"]))).decode()
        line = orjson.dumps(rec) + b"\n"
        if self.path is not None:
            with open(self.path, "ab") as f:
                f.write(line)
        self.stream.write(line.decode())
        self.stream.flush()
        self.prev, self.seq = rec["hash"], self.seq + 1
        return rec

    def _read_file(self) -> None:
        """Other replicas' newest records in a shared file, read from where the last read ended."""
        if self.path is None or not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line being written by another replica waits for the next read
        self._offset += end
        for rec in records(data[:end]):
            if isinstance(rec, dict) and isinstance(rec.get("seq"), int) and isinstance(rec.get("hash"), str):
                self._heads[str(rec.get("replica"))] = {"seq": rec["seq"], "hash": rec["hash"]}


def records(data: bytes) -> list:
    out = []
    for line in data.splitlines():
        if line.strip():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                out.append(None)
    return out
