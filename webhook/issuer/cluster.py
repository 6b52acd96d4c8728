"""A watch-based cache of the Pods, Services and Namespaces the issuer reads: one list, then
a watch per kind, so a CSR costs no API call. A pod missing from the cache (just created, or
the watch lagging) is read once directly; nothing else ever is."""
from __future__ import annotations

from typing import Any

import functools
import json
import time
from collections.abc import Callable

from sds_core.kube.health import ApiHealth
from sds_core.kube.informer import Informer
from sds_core.kube.namespaces import NamespaceLabels
from kubernetes import client
from sds_core.kube.claims_informer import hostname_claims_informer
from kubernetes.client.exceptions import ApiException
from sds_core.policy.claims import Resolved, resolve

from .revocations import LABEL_SELECTOR, Revocations


def _slim_pod(o: dict) -> dict:
    # Only what identity needs: 5,000 pods' full objects would be tens of MB.
    m, spec, status = o.get("metadata") or {}, o.get("spec") or {}, o.get("status") or {}
    return {"metadata": {k: m.get(k) for k in ("name", "namespace", "uid", "labels", "annotations",
                                                    "deletionTimestamp")},
            "spec": {"serviceAccountName": spec.get("serviceAccountName") or "default",
                     "hostNetwork": bool(spec.get("hostNetwork")),
                     # Named ports (the injected Envoy may be a native sidecar, an init container),
                     # for Services whose targetPort is a name.
                     "ports": {p["name"]: p.get("containerPort")
                               for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
                               for p in c.get("ports") or [] if p.get("name")}},
            "status": {"podIP": status.get("podIP"), "podIPs": status.get("podIPs") or [],
                       "phase": status.get("phase")}}


def _slim_service(o: dict) -> dict:
    m, spec = o.get("metadata") or {}, o.get("spec") or {}
    return {"name": m.get("name"), "namespace": m.get("namespace"), "selector": spec.get("selector") or {},
            "ports": [(p.get("port"), p.get("targetPort")) for p in spec.get("ports") or []]}


class ClusterCache:
    def __init__(self, api_client, watch_seconds: int = 300, gateway: bool = False, health: ApiHealth | None = None,
                 namespace: str | None = None):
        """`gateway`: also watch tenant claims (only when a gateway may ask: RBAC on ConfigMaps).
        `health`: told of refused credentials by every API call made here. `namespace`: the
        issuer's own, where revocation records live (watched when given)."""

        self.health = health or ApiHealth()
        self._probed = 0.0
        self.core = client.CoreV1Api(api_client)
        self.pods = Informer("pods", self.core.list_pod_for_all_namespaces, _slim_pod, watch_seconds)
        self.services = Informer("services", self.core.list_service_for_all_namespaces, _slim_service,
                                 watch_seconds)
        self.labels = NamespaceLabels(api_client, watch_seconds)  # the same cache the webhook uses
        self.namespaces = self.labels.informer
        self._all: tuple[Informer, ...] = (self.pods, self.services, self.namespaces)
        self.claims = None
        self._resolved = None  # (config, Resolved), dropped on any claim or namespace change
        self._claims_memo: dict = {}  # claims already checked, for resolve()
        if gateway:
            # Gateway tenant claims: the issuer resolves them itself, with the gateway's rules.
            self.claims = hostname_claims_informer(api_client, watch_seconds)
            self.claims.add_listener(self._forget)
            self.namespaces.add_listener(self._forget)
            self._all += (self.claims,)
        self.revocations = Revocations()
        self._revocation_listeners: list[Callable[[Revocations], None]] = []
        if namespace is not None:
            records = Informer("configmaps", functools.partial(self.core.list_namespaced_config_map, namespace,
                                                               label_selector=LABEL_SELECTOR),
                               lambda o: {"metadata": {k: (o.get("metadata") or {}).get(k) for k in ("name",
                                                                                                     "namespace")},
                                          "data": o.get("data") or {}}, watch_seconds)
            records.add_listener(lambda: self._revoked(records))
            self._all += (records,)
        for inf in self._all:
            inf.health = self.health

    def on_revocations(self, listener: Callable[[Revocations], None]) -> None:
        """`listener(revocations)` after every change of the records (from the informer's thread)."""
        self._revocation_listeners.append(listener)

    def _revoked(self, records: Informer) -> None:
        self.revocations = Revocations.of(records.all())  # replaced whole: readers see one view
        for listener in self._revocation_listeners:
            listener(self.revocations)

    def start(self, wait: float = 30.0) -> ClusterCache:
        for inf in self._all:
            inf.start()
        deadline = time.monotonic() + wait
        for inf in self._all:
            if not inf.synced.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"the {inf.kind} cache did not sync within {wait:.0f}s; check the issuer's "
                                   f"RBAC (list/watch {inf.kind})")
        return self

    def stop(self) -> None:
        for inf in self._all:
            inf.stop()

    def synced(self) -> bool:
        """Every cache has completed its first list."""
        return all(i.synced.is_set() for i in self._all)

    def ready(self) -> bool:
        """Readiness: synced, and the API server accepts our credentials. While it has refused
        them for a while, one cheap call (at most every 2 s) finds out when it accepts them again:
        an unready replica gets no traffic that would tell."""
        if not self.synced():
            return False
        if self.health.problem() is None:
            return True
        if time.monotonic() - self._probed >= 2.0:
            self._probed = time.monotonic()
            try:
                self.core.list_namespace(limit=1, _preload_content=False, _request_timeout=5)
                self.health.ok()
            except Exception as e:  # noqa: BLE001 - still refused, or unreachable: stay unready
                self.health.observe(e)
        return self.health.problem() is None

    def pod(self, namespace: str, name: str) -> dict | None:
        hit = self.pods.get(namespace, name)
        if hit is not None:
            return hit

        try:
            resp: Any = self.core.read_namespaced_pod(name, namespace, _preload_content=False,  # raw response
                                                      _request_timeout=5)
        except ApiException as e:
            if e.status == 404:
                return None
            self.health.observe(e)
            raise
        return _slim_pod(json.loads(resp.data))

    def peers(self, namespace: str, replica: str) -> list[str]:
        """The running issuer pods beside `replica` (its own pod's name): the pods of its namespace
        carrying its labels (but the ReplicaSet's hash, so a rollout's old and new pods are peers).
        Audit checkpoints name them, so a replica whose whole audit stream is removed is noticed."""
        own = self.pods.get(namespace, replica)
        if own is None:
            return []
        labels = {k: v for k, v in (own["metadata"].get("labels") or {}).items() if k != "pod-template-hash"}
        if not labels:
            return []
        return sorted(p["metadata"]["name"] for p in self.pods.in_namespace(namespace)
                      if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
                      and labels.items() <= (p["metadata"].get("labels") or {}).items())

    def services_selecting(self, pod: dict) -> list[str]:
        """Names of the Services in the pod's namespace whose selector matches its labels."""
        ns = pod["metadata"]["namespace"]
        labels = pod["metadata"].get("labels") or {}
        return sorted(s["name"] for s in self.services.in_namespace(ns)
                      if s["selector"] and all(labels.get(k) == v for k, v in s["selector"].items()))

    def service_targets(self, pod: dict, service: str, port: int) -> set[int]:
        """The pod's ports that port `port` of Service `service` (its namespace) sends traffic
        to: the targetPort, a number or one of the pod's named ports (default: the port itself)."""
        ns = pod["metadata"]["namespace"]
        named = pod["spec"].get("ports") or {}
        out = set()
        for s in self.services.in_namespace(ns):
            if s["name"] != service:
                continue
            for p, target in s.get("ports") or []:
                if p == port:
                    t = named.get(target) if isinstance(target, str) else (target or p)
                    if isinstance(t, int):
                        out.add(t)
        return out

    def namespace_labels(self, namespace: str) -> dict | None:
        return self.labels(namespace)

    def _forget(self) -> None:
        self._resolved = None

    def gateway_tenants(self, config):
        """Resolved claims, recomputed only after a change (10,000 claims take ~0.1 s)."""

        if self.claims is None:
            return Resolved((), ())
        memo = self._resolved
        if memo is None or memo[0] is not config:
            memo = (config, resolve(self.claims.all(), config, self.labels, self._claims_memo))
            self._resolved = memo
        return memo[1]
