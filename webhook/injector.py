"""The decision for one pod: skip, deny, or inject with a patch."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sds_core.policy import annotations as ann
from . import istio
from . import plan as planning
from sds_core.policy.config import InjectorConfig
from .patch import ops
from sds_core.policy.selection import Denied, Selection, check_policy, select
from sds_core.reasons import Reason

log = logging.getLogger("webhook.injector")


@dataclass
class Outcome:
    action: str  # inject | skip | deny
    reason: str = ""
    message: str = ""
    code: int = 200
    patch: list[dict] = field(default_factory=list)
    plan: planning.Plan | None = None
    selection: Selection | None = None
    warnings: tuple[str, ...] = ()  # shown by kubectl (AdmissionResponse warnings) and the CLI


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


def decide(pod: dict, namespace: str, cfg: InjectorConfig,
           namespace_labels: Callable[[str], dict | None] | None = None) -> Outcome:
    if not isinstance(pod, dict) or not isinstance(pod.get("spec"), dict):
        return Outcome("deny", Reason.MALFORMED_POD, "the object is not a pod: it has no spec", 400)
    if namespace in cfg.system_namespaces:
        return Outcome("skip", Reason.SYSTEM_NAMESPACE)
    try:
        values = ann.parse((pod.get("metadata") or {}).get("annotations"))
    except ann.AnnotationError as e:
        return Outcome("deny", Reason.INVALID_ANNOTATION, str(e), 400)
    if values.get("inject") is False:
        return Outcome("skip", Reason.OPTED_OUT)
    if istio.opted_out(pod) and values.get("inject") is not True:
        # The owner marked the pod for no proxy; our own inject annotation overrides it.
        return Outcome("skip", Reason.ISTIO_OPTED_OUT, f"{istio.INJECT}: \"false\" (set {ann.PREFIX}inject: \"true\" "
                       "to inject anyway)")
    if pod["spec"].get("hostNetwork"):
        return Outcome("skip", Reason.HOST_NETWORK)
    mode = istio.mode(pod)
    record = planning.injected_status(pod)
    try:
        # On every pod we inject or injected before, whatever its status annotation says: a copy
        # (`kubectl debug --copy-to`) carries the status of the pod it copies.
        stripped = planning.strip(pod)
        planning.check_owned_mounts(stripped, mode=mode)
        planning.check_process_isolation(pod)
    except Denied as d:
        return Outcome("deny", d.reason, d.message, d.code)
    if record and record.get("revision") == cfg.revision and record.get("mode", "envoy") == mode:
        return Outcome("skip", Reason.ALREADY_INJECTED)
    if mode == "istio" and (kind := istio.foreign_socket_volume(stripped)):
        message = (f"volume {istio.SOCKET_VOL} is a {kind} volume (SPIRE's, in Istio's template): another SDS "
                   "server serves Istio's proxy in this pod; sds-injector does not inject it")
        return Outcome("skip", Reason.ISTIO_SOCKET_TAKEN, message, warnings=(message,))
    try:
        labels = namespace_labels(namespace) if cfg.needs_namespace_labels and namespace_labels else None
        sel = select(pod, namespace, cfg, values, labels)
        check_policy(sel, cfg.namespace_policy, labels)
        plan = planning.build(sel, cfg, mode, istio.has_socket_volume(stripped),
                              istio.proxy_identity(stripped, cfg.sidecar_group))
        if not (stripped.get("spec") or {}).get("containers"):
            # Only a container named like a sidecar can be stripped; if that was all the pod had,
            # the pod is not one the injector made.
            raise Denied(Reason.RESERVED_NAME, f"the pod's containers are named {planning.AGENT!r}/{planning.PROXY!r}, "
                         "names reserved for the sidecars; rename them", 400)
        planning.check_collisions(stripped, plan, sel, cfg, mode)
    except Denied as d:
        return Outcome("deny", d.reason, d.message, d.code)
    return Outcome("inject", Reason.REINJECTED if record is not None else Reason.INJECTED,
                   patch=ops(pod, plan), plan=plan, selection=sel, warnings=_warnings(sel, values, mode))
