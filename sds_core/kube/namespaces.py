"""Namespace labels for label-based policy rules, from a watch-based cache: an admission reads
memory, never the API (a hanging API server must not freeze admissions or /healthz). Until the
cache has synced, or for a namespace it does not know, labels are None and label rules fail
closed (selection.check_policy)."""
from __future__ import annotations

from .informer import Informer


def _slim(o: dict) -> dict:
    m = o.get("metadata") or {}
    return {"name": m.get("name"), "labels": m.get("labels") or {}}


class NamespaceLabels:
    def __init__(self, api_client=None, watch_seconds: int = 300):
        from kubernetes import client  # lazy: heavy, API callers only

        from sds_core.kube.client import api_client as make_client  # lazy: heavy, API callers only

        core = client.CoreV1Api(api_client or make_client())
        self.informer = Informer("namespaces", core.list_namespace, _slim, watch_seconds)

    def start(self) -> NamespaceLabels:
        self.informer.start()
        return self

    def stop(self) -> None:
        self.informer.stop()

    def __call__(self, namespace: str) -> dict | None:
        if not self.informer.synced.is_set():
            return None
        hit = self.informer.get("", namespace)
        return None if hit is None else hit["labels"]
