"""list + watch of one kind of Kubernetes object into memory, through the `kubernetes` client:
one list, then a watch (relisting on error with backoff), so readers never call the API."""
from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable

from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger("webhook.informer")


def why(e: Exception) -> str:
    """A failure as an operator needs it: the HTTP status and reason of an API error (401, 403,
    410 Expired...), else the exception's type and the start of its message."""
    status = getattr(e, "status", None)
    if isinstance(status, int):
        return f"HTTP {status} {getattr(e, 'reason', '') or ''}".strip()
    return f"{type(e).__name__}: {str(e)[:200]}"


class Informer:
    """list + watch of one kind into a dict keyed by (namespace, name); relists on 410 Gone or
    any error, with backoff. `synced` is set after the first complete list."""

    def __init__(self, kind: str, list_fn: Callable, slim: Callable[[dict], dict], watch_seconds: int = 300,
                 health=None):
        self.kind, self.list_fn, self.slim, self.watch_seconds = kind, list_fn, slim, watch_seconds
        self.items: dict[str, dict[str, dict]] = {}  # namespace -> name -> slim object
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._listeners: list[Callable[[], None]] = []  # called from the informer's thread
        self.health = health  # an ApiHealth told of refused credentials and of successful lists
        self._thread = threading.Thread(target=self._run, name=f"informer:{kind}", daemon=True)

    def start(self) -> Informer:
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

    def all(self) -> list[dict]:
        return [o for by_name in list(self.items.values()) for o in list(by_name.values())]

    def add_listener(self, listener: Callable[[], None]) -> None:
        """`listener()` after every change (from the informer's thread); every listener is kept."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

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
                if self.health is not None:
                    self.health.observe(e)
                delay = min(30.0, 0.2 * 2 ** min(failures, 8)) * random.uniform(0.5, 1.0)
                log.warning("%s watch failed (%s); relisting in %.1fs", self.kind, why(e), delay)
                self._stop.wait(delay)

    def _list_and_watch(self) -> None:
        resp = self.list_fn(_preload_content=False, _request_timeout=30)
        body = json.loads(resp.data)
        self.items = {}
        for o in body.get("items") or []:
            self._put(o)
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if self.health is not None:
            self.health.ok()
        self.synced.set()
        self._changed()
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
                        self._changed()
                    elif kind == "DELETED":
                        self._drop(obj)
                        self._changed()
            finally:
                resp.release_conn()
