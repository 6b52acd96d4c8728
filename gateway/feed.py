"""Where claims come from: the cluster (a watch of HostnameClaims and of Namespaces, for the
policy's label rules) or, for local runs, a file of the same objects (or labelled ConfigMaps)."""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path

import yaml

from sds_core.kube.claims_informer import hostname_claims_informer, slim_claim, slim_hostname_claim
from sds_core.policy import claim_crd
from sds_core.policy.claims import CLAIM_LABEL

log = logging.getLogger("gateway.feed")


class ClusterFeed:
    def __init__(self, api_client, watch_seconds: int = 300):
        from sds_core.kube.namespaces import NamespaceLabels  # lazy: not for the claims file

        self.api_client = api_client
        self.claims = hostname_claims_informer(api_client, watch_seconds)
        self.labels_of = NamespaceLabels(api_client, watch_seconds)

    def objects(self) -> list[dict]:
        return self.claims.all()

    @property
    def synced(self) -> bool:
        return self.claims.synced.is_set() and self.labels_of.informer.synced.is_set()

    def start(self, on_change: Callable[[], None]) -> None:
        self.claims.add_listener(on_change)
        self.labels_of.informer.add_listener(on_change)
        self.claims.start()
        self.labels_of.start()

    def stop(self) -> None:
        self.claims.stop()
        self.labels_of.stop()


def _documents(text: str) -> list[dict]:
    # JSON first: YAML's pure-Python parser takes seconds on 10,000 claims.
    try:
        doc = json.loads(text)
        return [doc] if isinstance(doc, dict) else []
    except ValueError:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        return [d for d in yaml.load_all(text, Loader=loader) if isinstance(d, dict)]


class FileFeed:
    """ConfigMaps (and optionally Namespaces, for label rules) from a YAML or JSON file: a List,
    or documents separated by `---`. Checked once a second; a file that does not parse is
    logged and the previous content kept."""

    def __init__(self, path: Path, poll_seconds: float = 1.0):
        self.path, self.poll_seconds = path, poll_seconds
        self._objects: list[dict] = []
        self._labels: dict[str, dict] = {}
        self._stamp: tuple[int, int] | None = None
        self._task: asyncio.Task | None = None
        self.synced = False

    def objects(self) -> list[dict]:
        return self._objects

    def labels_of(self, namespace: str) -> dict | None:
        return self._labels.get(namespace, {"kubernetes.io/metadata.name": namespace})

    def load(self) -> bool:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return False
            docs = _documents(self.path.read_text())
        except (OSError, yaml.YAMLError) as e:
            log.warning("claims file unreadable; previous claims kept: %s", type(e).__name__)
            return False
        items = [i for d in docs for i in (d.get("items") or [] if d.get("kind") == "List" else [d])]
        # HostnameClaims, and for local files also the previous form: ConfigMaps with the claim label.
        self._objects = [slim_hostname_claim(i) for i in items if i.get("kind") == claim_crd.KIND] + [
            slim_claim(i) for i in items if i.get("kind") == "ConfigMap"
            and ((i.get("metadata") or {}).get("labels") or {}).get(CLAIM_LABEL) == "true"]
        self._labels = {name: (i.get("metadata") or {}).get("labels") or {} for i in items
                        if i.get("kind") == "Namespace" and isinstance(name := (i.get("metadata") or {}).get("name"), str)}
        self._stamp, self.synced = stamp, True
        return True

    def start(self, on_change: Callable[[], None]) -> None:
        async def poll():
            while True:
                if self.load():
                    on_change()
                await asyncio.sleep(self.poll_seconds)

        self._task = asyncio.get_running_loop().create_task(poll())

    def stop(self) -> None:
        if self._task:
            self._task.cancel()
