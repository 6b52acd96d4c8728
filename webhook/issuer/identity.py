"""Verified caller + the cluster's view of its pod → what it may be issued (a Grant), or a
refusal. Identity (SPIFFE ID, DNS names, IPs) comes only from Kubernetes facts: the token's
namespace and service account, the Services whose selectors match the pod, the pod's IPs.
Environment, business line and names come from the pod object *as stored in the API*, checked
against the namespace policy here, where a pod that skipped the webhook cannot avoid it."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import InjectorConfig
from ..selection import Denied, check_policy, select
from .tokens import Caller


class Refused(Denied):
    """The issuer's answer to a request it will not serve: the webhook's Denied (reason, message
    to act on, code) with the code as the HTTP status, 403 unless said."""

    def __init__(self, reason: str, message: str, status: int = 403):
        super().__init__(reason, message, status)

    @property
    def status(self) -> int:
        return self.code


@dataclass(frozen=True)
class Grant:
    namespace: str
    service_account: str
    pod: str
    spiffe_id: str
    env: str
    business_line: str | None
    certificates: tuple[str, ...]
    trust_bundles: tuple[str, ...]
    common_name: str
    dns_names: tuple[str, ...]
    ips: tuple[str, ...]


def dns_names(services: list[str], namespace: str, cluster_domain: str) -> list[str]:
    out = []
    for s in services:
        out += [s, f"{s}.{namespace}", f"{s}.{namespace}.svc", f"{s}.{namespace}.svc.{cluster_domain}"]
    return out


def check_binding(caller: Caller, pod: dict | None) -> None:
    """The token's pod exists now, is the same pod (uid), and runs as the token's account."""
    if pod is None:
        raise Refused("pod_gone", f"pod {caller.namespace}/{caller.pod_name}, to which the token is bound, "
                      "does not exist")
    meta, spec = pod["metadata"], pod["spec"]
    if meta.get("uid") != caller.pod_uid:
        raise Refused("pod_mismatch", f"the token is bound to another pod than {caller.namespace}/"
                      f"{caller.pod_name} (uid differs: the pod was deleted and re-created)")
    if meta.get("namespace") != caller.namespace or spec.get("serviceAccountName") != caller.service_account:
        raise Refused("pod_mismatch", "the token's namespace or service account does not match its pod")


def grant(caller: Caller, pod: dict | None, services: list[str], namespace_labels: dict | None,
          cfg: InjectorConfig, cluster_domain: str) -> Grant:
    check_binding(caller, pod)
    meta, spec, status = pod["metadata"], pod["spec"], pod["status"]
    if spec.get("hostNetwork"):
        raise Refused("host_network", "hostNetwork pods share the node's network identity; not issued")
    namespace = caller.namespace
    if namespace in cfg.system_namespaces:
        raise Refused("system_namespace", f"namespace {namespace!r} is a system namespace; not issued")
    try:
        sel = select({"metadata": meta, "spec": spec}, namespace, cfg)
        check_policy(sel, cfg.namespace_policy, namespace_labels)  # unknown labels fail closed
    except Denied as d:
        raise Refused(d.reason, d.message, 503 if d.code == 503 else 403) from None
    ips = [p.get("ip") for p in status.get("podIPs") or [] if p.get("ip")] or (
        [status["podIP"]] if status.get("podIP") else [])
    names = dns_names(services, namespace, cluster_domain)
    return Grant(namespace=namespace, service_account=caller.service_account, pod=caller.pod_name,
                 spiffe_id=f"spiffe://{cfg.agent.trust_domain}/ns/{namespace}/sa/{caller.service_account}",
                 env=sel.env, business_line=sel.business_line, certificates=sel.certificates,
                 trust_bundles=sel.trust_bundles, common_name=services[0] if services else caller.service_account,
                 dns_names=tuple(names), ips=tuple(dict.fromkeys(ips)))
