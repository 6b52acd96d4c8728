"""A watch-based cache of the Pods, Services and Namespaces the issuer reads: one list, then
a watch per kind, so a CSR costs no API call. A pod missing from the cache (just created, or
the watch lagging) is read once directly; nothing else ever is."""
from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable

from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger("issuer.cluster")


def _slim_pod(o: dict) -> dict:
    # Only what identity needs: 5,000 pods' full objects would be tens of MB.
    m, spec, status = o.get("metadata") or {}, o.get("spec") or {}, o.get("status") or {}
    return {"metadata": {k: m.get(k) for k in ("name", "namespace", "uid", "labels", "annotations")},
            "spec": {"serviceAccountName": spec.get("serviceAccountName") or "default",
                     "hostNetwork": bool(spec.get("hostNetwork"))},
            "status": {"podIP": status.get("podIP"), "podIPs": status.get("podIPs") or [],
                       "phase": status.get("phase")}}


def _slim_service(o: dict) -> dict:
    m, spec = o.get("metadata") or {}, o.get("spec") or {}
    return {"name": m.get("name"), "namespace": m.get("namespace"), "selector": spec.get("selector") or {}}


def _slim_namespace(o: dict) -> dict:
    m = o.get("metadata") or {}
    return {"name": m.get("name"), "labels": m.get("labels") or {}}


class Informer:
    """list + watch of one kind into a dict keyed by (namespace, name); relists on 410 Gone or
    any error, with backoff. `synced` is set after the first complete list."""

    def __init__(self, kind: str, list_fn: Callable, slim: Callable[[dict], dict], watch_seconds: int = 300):
        self.kind, self.list_fn, self.slim, self.watch_seconds = kind, list_fn, slim, watch_seconds
        self.items: dict[str, dict[str, dict]] = {}  # namespace -> name -> slim object
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"informer:{kind}", daemon=True)

    def start(self) -> "Informer":
        self._thread.start()
        return self

    def stop(self) -> None:
        # Only a flag: closing the stream from here would block on the reader thread's lock.
        # The thread is a daemon and its watch ends by its own timeout.
        self._stop.set()

    def get(self, namespace: str, name: str) -> dict | None:
        return self.items.get(namespace, {}).get(name)

    def in_namespace(self, namespace: str) -> list[dict]:
        return list(self.items.get(namespace, {}).values())

    def _put(self, obj: dict) -> None:
        m = obj.get("metadata") or {}
        self.items.setdefault(m.get("namespace") or "", {})[m.get("name") or ""] = self.slim(obj)

    def _drop(self, obj: dict) -> None:
        m = obj.get("metadata") or {}
        self.items.get(m.get("namespace") or "", {}).pop(m.get("name") or "", None)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._list_and_watch()
                failures = 0
            except Exception as e:  # noqa: BLE001 - any failure: relist after a pause
                if self._stop.is_set():
                    return
                failures += 1
                delay = min(30.0, 0.2 * 2 ** min(failures, 8)) * random.uniform(0.5, 1.0)
                log.warning("%s watch failed (%s); relisting in %.1fs", self.kind, type(e).__name__, delay)
                self._stop.wait(delay)

    def _list_and_watch(self) -> None:
        resp = self.list_fn(_preload_content=False, _request_timeout=30)
        body = json.loads(resp.data)
        self.items = {}
        for o in body.get("items") or []:
            self._put(o)
        rv = (body.get("metadata") or {}).get("resourceVersion")
        self.synced.set()
        while not self._stop.is_set():
            resp = self.list_fn(watch=True, resource_version=rv, allow_watch_bookmarks=True,
                                      timeout_seconds=self.watch_seconds, _preload_content=False,
                                      _request_timeout=(10, self.watch_seconds + 30))
            try:
                for line in iter_resp_lines(resp):
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    kind = event.get("type")
                    if kind == "ERROR":
                        raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('reason')}")
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    if kind in ("ADDED", "MODIFIED"):
                        self._put(obj)
                    elif kind == "DELETED":
                        self._drop(obj)
            finally:
                resp.release_conn()


class ClusterCache:
    def __init__(self, api_client, watch_seconds: int = 300):
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.pods = Informer("pods", self.core.list_pod_for_all_namespaces, _slim_pod, watch_seconds)
        self.services = Informer("services", self.core.list_service_for_all_namespaces, _slim_service,
                                 watch_seconds)
        self.namespaces = Informer("namespaces", self.core.list_namespace, _slim_namespace, watch_seconds)
        self._all = (self.pods, self.services, self.namespaces)

    def start(self, wait: float = 30.0) -> "ClusterCache":
        for inf in self._all:
            inf.start()
        deadline = time.monotonic() + wait
        for inf in self._all:
            if not inf.synced.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"the {inf.kind} cache did not sync within {wait:.0f}s; "
                                   "check the issuer's RBAC (list/watch pods, services, namespaces)")
        return self

    def stop(self) -> None:
        for inf in self._all:
            inf.stop()

    def pod(self, namespace: str, name: str) -> dict | None:
        hit = self.pods.get(namespace, name)
        if hit is not None:
            return hit
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self.core.read_namespaced_pod(name, namespace, _preload_content=False, _request_timeout=5)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return _slim_pod(json.loads(resp.data))

    def services_selecting(self, pod: dict) -> list[str]:
        """Names of the Services in the pod's namespace whose selector matches its labels."""
        ns = pod["metadata"]["namespace"]
        labels = pod["metadata"].get("labels") or {}
        return sorted(s["name"] for s in self.services.in_namespace(ns)
                      if s["selector"] and all(labels.get(k) == v for k, v in s["selector"].items()))

    def namespace_labels(self, namespace: str) -> dict | None:
        hit = self.namespaces.get("", namespace)
        return None if hit is None else hit["labels"]
