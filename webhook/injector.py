"""Every check of one admission request, in order, and the one verdict they give: the first
check that applies decides. The request's shape (podshape), what the pod already carries
(existing), the selection and policy (shared policy layer), the plan and its patch are each
visited once."""
from __future__ import annotations

import logging
from collections.abc import Callable

from sds_core.policy import annotations as ann
from sds_core.policy.config import InjectorConfig
from sds_core.policy.selection import Denied, Selection, check_policy, select
from sds_core.reasons import Reason

from . import existing, istio, podshape
from . import plan as planning
from .patch import ops
from .verdict import Verdict, deny, denied, skip

log = logging.getLogger("webhook.injector")
NamespaceLabels = Callable[[str], dict | None]


def review(req: dict, cfg: InjectorConfig, namespace_labels: NamespaceLabels | None, fields: dict) -> Verdict:
    """The verdict on one AdmissionReview request for a pod. `fields` gathers what the log line
    says about the request."""
    kind = req.get("kind")
    if not isinstance(kind, dict):
        return deny(Reason.MALFORMED_REQUEST, "request.kind must be an object {group, version, kind}", 400)
    if (kind.get("group"), kind.get("kind")) != ("", "Pod"):
        return deny(Reason.NOT_A_POD, f"sds-injector only mutates pods, got {kind.get('group') or 'core'}/"
                    f"{kind.get('kind')}; check the rules of the MutatingWebhookConfiguration", 400)
    pod = req.get("object")
    ephemeral = req.get("subResource") == "ephemeralcontainers"
    if req.get("operation") != "CREATE" and not ephemeral:
        return skip(Reason.OPERATION)
    if not isinstance(pod, dict):
        return deny(Reason.MALFORMED_POD, "AdmissionReview request.object is missing or not an object", 400)
    if (shape := podshape.problem(req)) is not None:
        return deny(Reason.MALFORMED_POD, f"malformed pod: {shape}", 400)
    if ephemeral:
        return _ephemeral(pod)
    namespace = req.get("namespace") or (pod.get("metadata") or {}).get("namespace") or "default"
    meta = pod.get("metadata") or {}
    fields.update(namespace=namespace, pod=meta.get("generateName") or meta.get("name"),
                  dry_run=bool(req.get("dryRun")))
    verdict = decide(pod, namespace, cfg, namespace_labels)
    if verdict.selection is not None:
        fields["certificates"] = list(verdict.selection.certificates)
    return verdict


def _ephemeral(pod: dict) -> Verdict:
    """`kubectl debug` adds ephemeral containers to a running pod: one may not mount the
    injector's volumes (the agent's socket hands out every private key it serves)."""
    try:
        existing.check_owned_mounts(pod, keys=("ephemeralContainers",), mode=istio.mode(pod))
    except Denied as d:
        return denied(d)
    return skip(Reason.EPHEMERAL_CONTAINERS)


def decide(pod: dict, namespace: str, cfg: InjectorConfig,
           namespace_labels: NamespaceLabels | None = None) -> Verdict:
    """The verdict for one pod (also a workload's pod template, and the inject CLI's)."""
    if not isinstance(pod, dict) or not isinstance(pod.get("spec"), dict):
        return deny(Reason.MALFORMED_POD, "the object is not a pod: it has no spec", 400)
    if namespace in cfg.system_namespaces:
        return skip(Reason.SYSTEM_NAMESPACE)
    try:
        values = ann.parse((pod.get("metadata") or {}).get("annotations"))
    except ann.AnnotationError as e:
        return deny(Reason.INVALID_ANNOTATION, str(e), 400)
    if values.get("inject") is False:
        return skip(Reason.OPTED_OUT)
    if istio.opted_out(pod) and values.get("inject") is not True:
        # The owner marked the pod for no proxy; our own inject annotation overrides it.
        return skip(Reason.ISTIO_OPTED_OUT, f"{istio.INJECT}: \"false\" (set {ann.PREFIX}inject: \"true\" to inject "
                    "anyway)")
    if pod["spec"].get("hostNetwork"):
        return skip(Reason.HOST_NETWORK)
    mode = istio.mode(pod)
    try:
        found = existing.inspect(pod, mode)
        if found.current(cfg.revision, mode):
            return skip(Reason.ALREADY_INJECTED)
        if mode == "istio" and (kind := istio.foreign_socket_volume(found.stripped)):
            message = (f"volume {istio.SOCKET_VOL} is a {kind} volume (SPIRE's, in Istio's template): another SDS "
                       "server serves Istio's proxy in this pod; sds-injector does not inject it")
            return skip(Reason.ISTIO_SOCKET_TAKEN, message, warnings=(message,))
        labels = namespace_labels(namespace) if cfg.needs_namespace_labels and namespace_labels else None
        sel = select(pod, namespace, cfg, values, labels)
        check_policy(sel, cfg.namespace_policy, labels)
        plan = planning.build(sel, cfg, mode, found.stripped)
    except Denied as d:
        return denied(d)
    return Verdict("injected", Reason.REINJECTED if found.record is not None else Reason.INJECTED,
                   patch=ops(pod, found, plan), warnings=_warnings(sel, values, mode), plan=plan, selection=sel)


def _warnings(sel: Selection, values: dict, mode: str) -> tuple[str, ...]:
    """What the pod asks for that it will not get, said instead of silently ignored."""
    if mode == "istio":
        ignored = [k for k in ("inbound", "outbound", "mtls") if k in values]
        return (f"{', '.join(ann.PREFIX + k for k in ignored)} ignored in Istio mode: Istio's proxy carries the "
                "traffic (only the certificate and trust bundle come from sds-injector)",) if ignored else ()
    if not sel.inbound and not sel.outbound:
        return (f"no {ann.PREFIX}inbound or {ann.PREFIX}outbound: Envoy is injected but terminates and "
                "originates no TLS for this pod",)
    return ()
