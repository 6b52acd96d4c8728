"""Tamper-evident audit of every issuance and refusal: one JSON record per line, each carrying
the SHA-256 of the previous record of the same replica, so an edited, deleted or reordered
record breaks the chain (`python -m webhook audit verify FILE`). Records go to stdout (for the
log collector) and, when configured, appended to a file. A replica restarting on the same file
continues its chain. What a chain cannot show on its own: records cut from the very end; ship
the stream off the node as it is written."""
from __future__ import annotations

from typing import Any

import datetime as dt
import hashlib
import sys
import threading
from pathlib import Path

import orjson

GENESIS = "0" * 64


def _digest(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


class AuditLog:
    def __init__(self, replica: str, path: Path | None = None, stream=None):
        self.replica = replica
        self.path = path
        self.stream = stream if stream is not None else sys.stdout
        self.prev, self.seq = GENESIS, 0
        self._lock = threading.Lock()
        if path is not None and path.exists():
            for rec in _records(path.read_bytes()):
                if isinstance(rec, dict) and rec.get("replica") == replica:
                    self.prev, self.seq = rec.get("hash", GENESIS), int(rec.get("seq", -1)) + 1

    def record(self, decision: str, reason: str = "", **fields) -> dict:
        with self._lock:
            rec = {"seq": self.seq, "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                   "replica": self.replica, "decision": decision, "reason": reason, **fields, "prev": self.prev}
            rec["hash"] = _digest(rec)
            line = orjson.dumps(rec) + b"\n"
            if self.path is not None:
                with open(self.path, "ab") as f:
                    f.write(line)
            self.stream.write(line.decode())
            self.stream.flush()
            self.prev, self.seq = rec["hash"], self.seq + 1
            return rec


def _records(data: bytes) -> list:
    out = []
    for line in data.splitlines():
        if line.strip():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                out.append(None)
    return out


def verify(data: bytes) -> tuple[int, list[str]]:
    """(records checked, problems). Each replica's records must chain from the genesis value,
    with consecutive sequence numbers and untouched contents."""
    problems: list[str] = []
    last: dict[str, tuple[Any, int]] = {}  # replica -> (hash of its last record, its seq)
    records = _records(data)
    for n, rec in enumerate(records, 1):
        if not isinstance(rec, dict):
            problems.append(f"line {n}: not a JSON record")
            continue
        replica = str(rec.get("replica"))
        if rec.get("hash") != _digest(rec):
            problems.append(f"line {n}: record content does not match its hash (edited)")
        prev_hash, prev_seq = last.get(replica, (GENESIS, -1))
        if rec.get("prev") != prev_hash:
            problems.append(f"line {n}: does not follow the previous record of replica {replica} "
                            "(a record was deleted, inserted or reordered)")
        if rec.get("seq") != prev_seq + 1:
            problems.append(f"line {n}: sequence {rec.get('seq')} after {prev_seq} for replica {replica}")
        seq = rec.get("seq")
        last[replica] = (rec.get("hash"), seq if isinstance(seq, int) else prev_seq + 1)
    return len(records), problems
