"""Whether this process can use the Kubernetes API now, as its readiness should say: when the API
server refuses its credentials (401, 403: revoked, RBAC removed) for longer than a short window,
it is unready until a call succeeds again, so a replica that cannot review tokens or read pods
leaves its Service instead of answering every request with an error."""
from __future__ import annotations

import threading
import time


class ApiHealth:
    def __init__(self, window: float = 10.0):
        self.window = window
        self._failing_since: float | None = None
        self._why = ""
        self._lock = threading.Lock()

    def observe(self, e: BaseException) -> None:
        """Record a failed API call; only authentication and authorization failures count."""
        status = getattr(e, "status", None)
        if status in (401, 403):
            with self._lock:
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                self._why = f"HTTP {status} {getattr(e, 'reason', '') or ''}".strip()

    def ok(self) -> None:
        with self._lock:
            self._failing_since = None

    def problem(self) -> str | None:
        """Why the API is not usable now, or None."""
        with self._lock:
            if self._failing_since is not None and time.monotonic() - self._failing_since >= self.window:
                return f"the API server has refused this process's credentials for {self.window:.0f}s+ ({self._why})"
            return None
