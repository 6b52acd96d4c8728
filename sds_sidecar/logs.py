"""Structured JSON logging and the audit trail."""
from __future__ import annotations

import datetime as dt
import logging
import sys

import orjson

AUDIT = logging.getLogger("sds.audit")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        # orjson: the webhook logs every admission, and stdlib json was a tenth of its CPU.
        return orjson.dumps(out, default=str).decode()


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def audit(event: str, name: str, **fields) -> None:
    """event: loaded | rotated | rejected | served. Callers pass material.audit(), never keys."""
    AUDIT.info(event, extra={"fields": {"event": event, "name": name, **fields}})


def kv(**fields) -> dict:
    return {"fields": fields}
