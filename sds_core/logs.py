"""Structured JSON logging and the audit trail."""
from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Callable

AUDIT = logging.getLogger("sds.audit")


def _stdlib_dumps(out: dict) -> str:
    return json.dumps(out, default=str, separators=(",", ":"), ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    def __init__(self, dumps: Callable[[dict], str] = _stdlib_dumps):
        super().__init__()
        self.dumps = dumps

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return self.dumps(out)


def setup(level: str = "INFO", fast_json: bool = False) -> None:
    """`fast_json`: orjson, for the webhook, which logs every admission (stdlib json was a tenth
    of its CPU). The per-pod agent logs little and keeps the standard library's (orjson's
    library is 2 MB of each of 5,000 pods' RSS)."""
    dumps = _stdlib_dumps
    if fast_json:
        import orjson  # lazy: the webhook's choice, not the agent's

        dumps = lambda out: orjson.dumps(out, default=str).decode()  # noqa: E731
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(dumps))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def audit(event: str, name: str, **fields) -> None:
    """event: loaded | rotated | rejected | served. Callers pass material.audit(), never keys."""
    AUDIT.info(event, extra={"fields": {"event": event, "name": name, **fields}})


def kv(**fields) -> dict:
    return {"fields": fields}


def clip(value, limit: int = 200) -> str:
    """A client-supplied string as it may appear in a log line: bounded, whatever its size."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…({len(text)} chars)"


class RateLimit:
    """At most `burst` events per `per` seconds for each key; what is dropped is counted, and
    reported with the next event let through. Keeps a hostile client from filling the disk."""

    def __init__(self, burst: int = 10, per: float = 60.0):
        self.burst, self.per, self._now = burst, per, time.monotonic
        self._windows: dict[str, tuple[float, int, int]] = {}  # key -> (window start, used, dropped)

    def allow(self, key: str) -> tuple[bool, int]:
        """(log it?, how many were dropped before it)."""
        now = self._now()
        start, used, dropped = self._windows.get(key, (now, 0, 0))
        if now - start >= self.per:
            start, used = now, 0
        if used < self.burst:
            self._windows[key] = (start, used + 1, 0)
            return True, dropped
        if len(self._windows) > 1000:  # bounded: keys are few (kinds of warning), never names
            self._windows.clear()
        self._windows[key] = (start, used, dropped + 1)
        return False, 0
