"""HostnameClaim status: what the gateway decided for each claim, where its owner reads it
(`kubectl get hostnameclaims` shows Accepted), in the Gateway API's terms: conditions with a
type, status, reason and message, observedGeneration, and for each hostname taken by an earlier
claim the claim that owns it.

Every gateway replica computes the same status from the same claims, and writes only a status
that differs from the stored one (transition times aside): replicas agree instead of fighting,
and an unchanged claim costs no API call. Writes happen on a thread of their own, the latest
wanted status per claim, the most recently changed claims first; a failed write is retried at
the next resolution."""
from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import defaultdict

from sds_core.policy import claim_crd
from sds_core.policy.claims import Refusal, Resolved
from sds_core.reasons import Reason

log = logging.getLogger("gateway.status")
NOT_ALLOWED = {Reason.HOSTNAME_NOT_ALLOWED, Reason.POLICY, Reason.POLICY_NO_RULE, Reason.SYSTEM_NAMESPACE,
               Reason.NAMESPACE_LABELS_UNKNOWN}
MAX_MESSAGE = 2000


def _condition(kind: str, true: bool, reason: str, message: str, generation: int) -> dict:
    return {"type": kind, "status": "True" if true else "False", "reason": reason,
            "message": message[:MAX_MESSAGE], "observedGeneration": generation}


def decide(obj: dict, served: tuple[str, ...] | None, refusals: list[Refusal]) -> dict:
    """The status of one claim: `served` its hostnames the gateway serves (None: none)."""
    generation = int((obj.get("metadata") or {}).get("generation") or 1)
    taken = [r for r in refusals if r.reason == Reason.HOSTNAME_TAKEN]
    barred = [r for r in refusals if r.reason in NOT_ALLOWED]
    invalid = [r for r in refusals if r not in taken and r not in barred]
    if served:
        accepted = _condition(claim_crd.ACCEPTED, True, "PartiallyAccepted" if refusals else "Accepted",
                              f"served: {', '.join(served)}" + (f"; {refusals[0].message}" if refusals else ""),
                              generation)
    else:
        why = "HostnameConflict" if taken else "NotAllowed" if barred else "Invalid"
        accepted = _condition(claim_crd.ACCEPTED, False, why, (refusals[0].message if refusals else "nothing served"),
                              generation)
    return {
        "observedGeneration": generation,
        "servedHostnames": list(served or ()),
        "owners": [{"hostname": r.hostname, "claim": r.owner} for r in taken],
        "conditions": [
            accepted,
            _condition(claim_crd.CONFLICTED, bool(taken), "HostnameConflict" if taken else "NoConflicts",
                       "; ".join(r.message for r in taken), generation),
            _condition(claim_crd.NOT_ALLOWED, bool(barred or invalid), "NotAllowedByPolicy" if barred
                       else "Invalid" if invalid else "Allowed", "; ".join(r.message for r in barred + invalid),
                       generation),
        ],
    }


def _timeless(status: dict) -> dict:
    return {**status, "conditions": [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                                     for c in status.get("conditions") or []]}


def _with_times(new: dict, old: dict, now: str) -> dict:
    """A condition keeps its transition time while its status stays the same."""
    before = {c.get("type"): c for c in old.get("conditions") or []}
    for c in new["conditions"]:
        prev = before.get(c["type"]) or {}
        kept = prev.get("lastTransitionTime") if prev.get("status") == c["status"] else None
        c["lastTransitionTime"] = kept or now
    return new


def changes(objects: list[dict], resolved: Resolved, settled: dict | None = None) -> dict[tuple[str, str], dict]:
    """(namespace, name) -> status, for the HostnameClaims whose stored status differs.
    `settled`: kept by the caller; a claim found in step before, with the same object and the same
    verdict, is not decided again (10,000 claims cost ~80 ms a resolution without it)."""
    served = {t.key: t.hostnames for t in resolved.tenants}
    refused: dict[str, list[Refusal]] = defaultdict(list)
    for r in resolved.refusals:
        refused[f"{r.namespace}/{r.name}"].append(r)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    out, in_step = {}, {}
    for obj in objects:
        if obj.get("kind") != claim_crd.KIND:
            continue
        m = obj["metadata"]
        key = f"{m['namespace']}/{m['name']}"
        verdict = (served.get(key), tuple(refused.get(key, ())))
        hit = settled.get(key) if settled is not None else None
        if hit is not None and hit[0] is obj and hit[1] == verdict:
            in_step[key] = hit
            continue
        want = decide(obj, verdict[0], list(verdict[1]))
        current = obj.get("status") or {}
        if _timeless(want) != _timeless(current):
            out[(m["namespace"], m["name"])] = _with_times(want, current, now)
        else:
            in_step[key] = (obj, verdict)
    if settled is not None:
        settled.clear()
        settled.update(in_step)
    return out


class StatusWriter:
    def __init__(self, api_client):
        from kubernetes import client  # lazy: only with a cluster

        self.api = client.CustomObjectsApi(api_client)
        self._pending: dict[tuple[str, str], dict] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._settled: dict = {}  # claims whose stored status matched their verdict (changes())
        self.written = 0
        threading.Thread(target=self._run, name="claim-status", daemon=True).start()

    def sync(self, objects: list[dict], resolved: Resolved) -> None:
        """After a resolution (the controller's loop): queue the statuses that changed."""
        wanted = changes(objects, resolved, self._settled)
        if wanted:
            with self._lock:
                self._pending.update(wanted)
            self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            while not self._stop.is_set():
                with self._lock:
                    if not self._pending:
                        break
                    # Newest first: a claim just created or changed is not queued behind a backlog
                    # (thousands of statuses at a first start).
                    key, status = self._pending.popitem()
                self._write(key, status)

    def _write(self, key: tuple[str, str], status: dict) -> None:
        try:
            self.api.patch_namespaced_custom_object_status(claim_crd.GROUP, claim_crd.VERSION, key[0],
                                                           claim_crd.PLURAL, key[1], {"status": status},
                                                           _request_timeout=10)
            self.written += 1
        except Exception as e:  # noqa: BLE001 - gone, forbidden, the API server away: next resolution retries
            log.warning("status of HostnameClaim %s/%s not written: %s", key[0], key[1],
                        getattr(e, "reason", None) or type(e).__name__)
