"""What the pod already carries, read once per admission: the status of an earlier injection, the
pod without it, and whether the pod's own containers keep away from the sidecars' volumes and
processes. A copy (`kubectl debug --copy-to`) carries the status of the pod it copies, so every
pod is stripped whatever its status annotation says."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass

from sds_core.policy import annotations as ann
from sds_core.policy.selection import Denied
from sds_core.reasons import Reason

from . import istio
from .layout import AGENT, PROXY, STATUS, owned_volume


@dataclass(frozen=True)
class Existing:
    record: dict | None  # the status annotation of an earlier injection ({} if unreadable), or None
    stripped: dict  # the pod without that injection's sidecars and volumes

    def current(self, revision: str, mode: str) -> bool:
        """Injected by this revision in this mode already: nothing to do."""
        record = self.record or {}
        return record.get("revision") == revision and record.get("mode", "envoy") == mode


def inspect(pod: dict, mode: str) -> Existing:
    """Raises Denied when a container of the pod's own could reach the sidecars' secrets."""
    record = injected_status(pod)
    stripped = strip(pod, record)
    check_owned_mounts(stripped, mode=mode)
    check_process_isolation(pod)
    return Existing(record, stripped)


def injected_status(pod: dict) -> dict | None:
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(STATUS)
    if not raw:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def strip(pod: dict, record: dict | None = None) -> dict:
    """The pod without what a previous injection recorded in its status annotation (`record`,
    when the caller read it already)."""
    record = injected_status(pod) if record is None else record
    if record is None:
        return pod
    pod = copy.deepcopy(pod)
    spec = pod.setdefault("spec", {})
    for key in ("containers", "initContainers", "volumes"):
        listed = record.get(key)
        listed = listed if isinstance(listed, list) else []
        # Only what this injector adds may go, whatever the annotation claims: a hand-written
        # status must not delete the pod's own containers or volumes.
        ours = (lambda n: n in (AGENT, PROXY)) if key != "volumes" else owned_volume
        gone = {n for n in listed if isinstance(n, str) and ours(n)}
        if gone and key in spec:
            spec[key] = [c for c in spec[key] if c.get("name") not in gone]
            if not spec[key] and key != "containers":
                del spec[key]
    del pod["metadata"]["annotations"][STATUS]
    if not pod["metadata"]["annotations"]:
        del pod["metadata"]["annotations"]
    return pod


def check_owned_mounts(pod: dict, keys=("containers", "initContainers", "ephemeralContainers"),
                       mode: str = "envoy") -> None:
    """A container of the pod's own (in `keys` of a pod without our sidecars) mounting a volume
    the injector adds would read the agent's socket (every private key it serves) or its
    token: deny, naming both. In Istio mode the agent serves on Istio's `workload-socket`, which
    only istio-proxy may mount besides it."""
    spec = pod.get("spec") or {}
    for key in keys:
        for c in spec.get(key) or []:
            if not isinstance(c, dict):
                continue
            istio_owned = mode == "istio" and not (key != "ephemeralContainers" and c.get("name") == istio.PROXY)
            for m in c.get("volumeMounts") or []:
                if not (isinstance(m, dict) and isinstance(m.get("name"), str)):
                    continue
                if owned_volume(m["name"]) or (istio_owned and m["name"] == istio.SOCKET_VOL):
                    raise Denied(Reason.OWNED_VOLUME, f"container {c.get('name')!r} ({key}) mounts volume "
                                 f"{m['name']!r}, which belongs to the sds-injector sidecars; remove that "
                                 "volumeMount (the app reaches TLS through Envoy, never the agent)", 403)


def check_process_isolation(pod: dict) -> None:
    """With a shared process namespace any container running as the agent's uid reaches the
    agent's socket (and memory) through /proc/<pid>/root: the app would get every private key."""
    if (pod.get("spec") or {}).get("shareProcessNamespace") is True:
        raise Denied(Reason.SHARED_PROCESS_NAMESPACE, "spec.shareProcessNamespace is true: every container could "
                     "reach the SDS agent's socket and memory through /proc, and with them the pod's private "
                     "keys; sds-injector does not inject such pods (remove shareProcessNamespace, or opt the "
                     f"pod out with {ann.PREFIX}inject: \"false\")", 403)

