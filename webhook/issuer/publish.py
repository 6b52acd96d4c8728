"""The issuer's serving CA, published where agents read it: ConfigMap `agent.issuer.caConfigMap`
(key `ca.crt`) in every namespace labelled sds-injector.io/injection=enabled, as istiod keeps
`istio-ca-root-cert`. Pod specs then carry a reference, never the CA: rotating the serving
certificate (cert-manager included) updates the ConfigMaps, the kubelet updates the mounted
file, and running agents re-read it. A namespace's owner can edit the ConfigMap; that only
breaks their own pods' renewals, and the next round puts it back."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from kubernetes.client.exceptions import ApiException

log = logging.getLogger("issuer.publish")
INJECTION_LABEL, ENABLED = "sds-injector.io/injection", "enabled"
MANAGED_BY = {"app.kubernetes.io/managed-by": "sds-injector"}


class CAPublisher:
    def __init__(self, core, ca_file: Path, name: Callable[[], str], namespaces: Callable[[], list[dict]],
                 every: float = 30.0, resync: float = 600.0):
        """`namespaces()`: the cluster's namespaces ({"name", "labels"}, from the informer);
        `name()`: the ConfigMap's name, read from the configuration each round."""
        self.core, self.ca_file, self.name, self.namespaces = core, ca_file, name, namespaces
        self.every, self.resync = every, resync
        self._done: dict[str, tuple[str, str]] = {}  # namespace -> (name, PEM) known to be in place
        self._last_resync = time.monotonic()
        self._wake = threading.Event()

    def poke(self) -> None:
        """Publish now (a namespace appeared or changed its labels)."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.round()
            except Exception as e:  # noqa: BLE001 - the API server unreachable: next round
                log.warning("publishing the issuer CA failed: %s", type(e).__name__)
            self._wake.wait(self.every)
            self._wake.clear()

    def round(self) -> int:
        """One pass; returns how many ConfigMaps were written."""
        try:
            pem = self.ca_file.read_text()
        except OSError as e:
            log.warning("issuer CA file %s unreadable (%s): nothing published this round", self.ca_file, e.strerror)
            return 0
        if time.monotonic() - self._last_resync >= self.resync:  # repair what owners edited
            self._done.clear()
            self._last_resync = time.monotonic()
        name, written = self.name(), 0
        targets = sorted(ns["name"] for ns in self.namespaces() if (ns.get("labels") or {}).get(INJECTION_LABEL) == ENABLED)
        for ns in targets:
            if self._done.get(ns) != (name, pem):
                written += self._ensure(ns, name, pem)
                self._done[ns] = (name, pem)
        for ns in set(self._done) - set(targets):
            del self._done[ns]  # disabled: left in place (pods may still mount it), no longer kept
        return written

    def _ensure(self, namespace: str, name: str, pem: str) -> int:
        meta: dict[str, object] = {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)}
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"ca.crt": pem}}
        try:
            cur = self.core.read_namespaced_config_map(name, namespace, _request_timeout=10)
        except ApiException as e:
            if e.status != 404:
                raise
            self.core.create_namespaced_config_map(namespace, body, _request_timeout=10)
            log.info("issuer CA published", extra={"fields": {"namespace": namespace, "configmap": name}})
            return 1
        if (cur.data or {}).get("ca.crt") == pem and not cur.immutable:
            return 0
        if cur.immutable:  # an owner made it immutable to pin it: replace the object
            self.core.delete_namespaced_config_map(name, namespace, _request_timeout=10)
            self.core.create_namespaced_config_map(namespace, body, _request_timeout=10)
        else:
            meta["resourceVersion"] = cur.metadata.resource_version
            self.core.replace_namespaced_config_map(name, namespace, body, _request_timeout=10)
        log.info("issuer CA updated", extra={"fields": {"namespace": namespace, "configmap": name}})
        return 1
