"""Workloads checked when they are applied: a Deployment, StatefulSet, DaemonSet, ReplicaSet,
Job or CronJob whose pods the injector is certain to deny is denied itself, so `kubectl apply`
shows the reason instead of a ReplicaSet's FailedCreate event that nobody reads. Same decision
code as for pods (injector.decide on the pod template). The webhook for these kinds fails open:
it is never the reason a workload cannot be updated when it is down, and an update that leaves
the pod template as it was is always allowed (a policy changed since must not freeze it)."""
from __future__ import annotations

from sds_core.reasons import Reason

from .injector import decide
from .manifests import TEMPLATE_PATHS
from .verdict import Verdict, deny, skip

KINDS = {("apps", "Deployment"), ("apps", "StatefulSet"), ("apps", "DaemonSet"), ("apps", "ReplicaSet"),
         ("batch", "Job"), ("batch", "CronJob")}


def _template(obj: object, kind: str) -> dict | None:
    node = obj
    for key in TEMPLATE_PATHS[kind]:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def decide_workload(req: dict, cfg, namespace_labels, fields: dict) -> Verdict:
    kind: dict = req["kind"] if isinstance(req.get("kind"), dict) else {}
    group_kind = (kind.get("group"), kind.get("kind"))
    if group_kind not in KINDS:
        return deny(Reason.NOT_A_WORKLOAD, f"sds-injector validates workloads, got {kind.get('group') or 'core'}/"
                    f"{kind.get('kind')}; check the rules of the ValidatingWebhookConfiguration", 400)
    if req.get("operation") not in ("CREATE", "UPDATE"):
        return skip(Reason.OPERATION)
    template = _template(req.get("object"), group_kind[1])
    if template is None:
        return skip(Reason.NO_POD_TEMPLATE)  # the API server's own validation says what is wrong
    if req.get("operation") == "UPDATE" and template == _template(req.get("oldObject"), group_kind[1]):
        return skip(Reason.TEMPLATE_UNCHANGED)
    meta = (req.get("object") or {}).get("metadata") or {}
    namespace = req.get("namespace") or meta.get("namespace") or "default"
    fields.update(namespace=namespace, workload=f"{group_kind[1]}/{meta.get('name')}")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": template.get("metadata") or {},
           "spec": template.get("spec")}
    out = decide(pod, namespace, cfg, namespace_labels)
    if out.result == "denied":
        return deny(out.reason, f"the pods of {group_kind[1]} {meta.get('name')} would be denied by sds-injector: "
                    f"{out.message}", out.code)
    return skip(Reason.WORKLOAD_ALLOWED)
