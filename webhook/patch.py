"""Injection plan → RFC 6902 JSON patch, built directly (no diff of whole pods): only `add`
operations on a first injection, one per list (never two `add /spec/volumes`); and the injected pod
the patch must produce."""
from __future__ import annotations

import copy

from .existing import Existing
from .layout import STATUS
from .plan import Plan


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _add_all(ops: list, container: dict, parent: str, key: str, items, at_front: bool) -> None:
    items = list(items)
    if not container.get(key):
        # An absent or empty list is set whole: appending to a list that does not exist fails.
        ops.append({"op": "add", "path": f"{parent}/{key}", "value": items})
        return
    for i, item in enumerate(items):
        ops.append({"op": "add", "path": f"{parent}/{key}/{i if at_front else '-'}", "value": item})


def ops(pod: dict, found: Existing, plan: Plan) -> list[dict]:
    if found.record is not None:
        return _reinject(pod, found.stripped, plan)
    spec = pod.get("spec") or {}
    meta = pod.get("metadata")
    out: list[dict] = []
    if plan.native:
        _add_all(out, spec, "/spec", "initContainers", plan.containers, at_front=True)
    else:
        _add_all(out, spec, "/spec", "containers", plan.containers, at_front=False)
    _add_all(out, spec, "/spec", "volumes", plan.volumes, at_front=False)
    if meta is None:
        out.append({"op": "add", "path": "/metadata", "value": {"annotations": {STATUS: plan.status}}})
    elif not meta.get("annotations"):
        out.append({"op": "add", "path": "/metadata/annotations", "value": {STATUS: plan.status}})
    else:
        out.append({"op": "add", "path": f"/metadata/annotations/{_pointer(STATUS)}", "value": plan.status})
    return out


def _reinject(pod: dict, stripped: dict, plan: Plan) -> list[dict]:
    # Rare path (an older revision's injection): replace the touched lists whole, which is
    # correct by construction, instead of index arithmetic over removals.
    target = apply(stripped, plan)
    spec, new = pod.get("spec") or {}, target["spec"]
    out = []
    for key in ("initContainers", "containers", "volumes"):
        if key in new:
            out.append({"op": "replace" if key in spec else "add", "path": f"/spec/{key}", "value": new[key]})
        elif key in spec:
            out.append({"op": "remove", "path": f"/spec/{key}"})
    out.append({"op": "replace", "path": "/metadata/annotations", "value": target["metadata"]["annotations"]})
    return out


def apply(pod: dict, plan: Plan) -> dict:
    """The injected pod: what the patch must produce (used by tests and the inject CLI)."""
    pod = copy.deepcopy(pod)
    spec = pod.setdefault("spec", {})
    if plan.native:
        spec["initContainers"] = [copy.deepcopy(c) for c in plan.containers] + (spec.get("initContainers") or [])
    else:
        spec.setdefault("containers", []).extend(copy.deepcopy(c) for c in plan.containers)
    spec["volumes"] = (spec.get("volumes") or []) + [copy.deepcopy(v) for v in plan.volumes]
    meta = pod.setdefault("metadata", {})
    meta["annotations"] = {**(meta.get("annotations") or {}), STATUS: plan.status}
    return pod
