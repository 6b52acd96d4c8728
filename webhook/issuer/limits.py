"""Token buckets with bounded memory (the least recently seen keys are forgotten). Per pod uid: one
pod (a compromised app calling the issuer in a loop with its own valid token) cannot turn the
issuer into a signing and TokenReview load generator. Per source address, for tokens the API
server refused: a well-formed token with a forged signature passes every local check, so only a
TokenReview can refuse it; an address that sends them gets a few reviews a minute, then 429s
that cost nothing."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict


class PodBuckets:
    def __init__(self, per_minute: float, burst: int, max_pods: int = 100_000):
        self.rate, self.burst, self.max_pods = per_minute / 60.0, burst, max_pods
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # uid -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, uid: str, now: float | None = None) -> float:
        """0 when the pod may be served now (a token is taken), else the seconds to wait."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._buckets.pop(uid, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self._buckets[uid] = (tokens - 1 if wait == 0 else tokens, now)
            while len(self._buckets) > self.max_pods:
                self._buckets.popitem(last=False)
            return wait

    def wait(self, key: str, now: float | None = None) -> float:
        """The seconds until `key` has a token again (0: it has one), taking none."""
        now = time.monotonic() if now is None else now
        with self._lock:
            hit = self._buckets.get(key)
            if hit is None:
                return 0.0
            tokens = min(float(self.burst), hit[0] + (now - hit[1]) * self.rate)
            return 0.0 if tokens >= 1 else (1 - tokens) / self.rate
