"""Namespace labels for label-based policy rules, read through the kubernetes client with a
TTL cache: never one API call per admission."""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("webhook.namespaces")


class NamespaceLabels:
    def __init__(self, ttl: float = 30.0, api=None):
        self.ttl = ttl
        self._api = api
        self._cache: dict[str, tuple[float, dict | None]] = {}
        self._lock = threading.Lock()

    def _client(self):
        if self._api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._api = client.CoreV1Api()
        return self._api

    def __call__(self, namespace: str) -> dict | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(namespace)
            if hit and now - hit[0] < self.ttl:
                return hit[1]
        try:
            labels = self._client().read_namespace(namespace).metadata.labels or {}
        except Exception as e:  # noqa: BLE001 - label rules then do not match; name rules still apply
            log.warning("cannot read namespace labels: %s", type(e).__name__, extra={"fields": {"namespace": namespace}})
            labels = hit[1] if hit else None
        with self._lock:
            self._cache[namespace] = (now, labels)
        return labels
