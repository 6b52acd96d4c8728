"""What the issuer has issued (the seed's "config center" metadata): per namespace, certificate
name and pod, the newest unexpired certificate, as JSON; per namespace and name, the newest
expiry as a Prometheus gauge (per-pod series would not scale to thousands of pods)."""
from __future__ import annotations

import threading
import time

from prometheus_client import Counter, Gauge

ISSUED = Counter("sds_issuer_certificates_issued_total", "Certificates signed", ["env"])
REFUSED = Counter("sds_issuer_requests_refused_total", "Requests refused", ["reason"])
NOT_AFTER = Gauge("sds_issuer_certificate_not_after_seconds",
                  "Expiry (Unix time) of the newest certificate per namespace and name", ["namespace", "name"])


class Inventory:
    def __init__(self, limit: int = 100_000):
        self.limit = limit
        self._items: dict[tuple[str, str, str], dict] = {}
        self._lock = threading.Lock()

    def add(self, namespace: str, name: str, pod: str, entry: dict) -> None:
        key = (namespace, name, pod)
        with self._lock:
            if key not in self._items and len(self._items) >= self.limit:
                self._prune()
                if len(self._items) >= self.limit:
                    return  # bounded: the audit stream still has every record
            self._items[key] = entry
        NOT_AFTER.labels(namespace, name).set(entry["not_after_unix"])

    def _prune(self) -> None:
        now = time.time()
        for key in [k for k, e in self._items.items() if e["not_after_unix"] <= now]:
            del self._items[key]

    def snapshot(self) -> list[dict]:
        with self._lock:
            self._prune()
            return [{"namespace": ns, "name": name, "pod": pod, **e}
                    for (ns, name, pod), e in sorted(self._items.items())]
