"""Verified caller + the cluster's view of its pod → what it may be issued (a Grant), or a
refusal. Identity (SPIFFE ID, DNS names, IPs) comes only from Kubernetes facts: the token's
namespace and service account, the Services whose selectors match the pod, the pod's IPs.
Environment, business line and names come from the pod object *as stored in the API*, checked
against the namespace policy here, where a pod that skipped the webhook cannot avoid it."""
from __future__ import annotations

from dataclasses import dataclass

from sds_core import names

from sds_core.policy.config import InjectorConfig
from sds_core.policy.selection import Denied, check_policy, select
from .tokens import Caller
from sds_core.reasons import Reason


class Refused(Denied):
    """The issuer's answer to a request it will not serve: the webhook's Denied (reason, message
    to act on, code) with the code as the HTTP status, 403 unless said."""

    def __init__(self, reason: Reason, message: str, status: int = 403, retry_after: float | None = None):
        super().__init__(reason, message, status)
        self.retry_after = retry_after  # seconds, sent as Retry-After (429)

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
    pod_uid: str = ""  # the token's (checked against the pod): in the serial, for revocation by pod


def check_binding(caller: Caller, pod: dict | None) -> dict:
    """The token's pod exists now, is the same pod (uid), is not being deleted, and runs as the
    token's account. TokenReview invalidates a deleted pod's token only after its ~10 s cache
    and JWKS never does: the pod object is what says the pod is going away."""
    if pod is None:
        raise Refused(Reason.POD_GONE, f"pod {caller.namespace}/{caller.pod_name}, to which the token is bound, "
                      "does not exist")
    meta, spec = pod["metadata"], pod["spec"]
    if meta.get("uid") != caller.pod_uid:
        raise Refused(Reason.POD_MISMATCH, f"the token is bound to another pod than {caller.namespace}/"
                      f"{caller.pod_name} (uid differs: the pod was deleted and re-created)")
    if meta.get("namespace") != caller.namespace or spec.get("serviceAccountName") != caller.service_account:
        raise Refused(Reason.POD_MISMATCH, "the token's namespace or service account does not match its pod")
    if meta.get("deletionTimestamp"):
        raise Refused(Reason.POD_TERMINATING, f"pod {caller.namespace}/{caller.pod_name} is being deleted "
                      f"(deletionTimestamp {meta['deletionTimestamp']}); no new certificates for it")
    return pod


def grant(caller: Caller, pod: dict | None, services: list[str], namespace_labels: dict | None,
          cfg: InjectorConfig, max_dns_names: int = 100) -> Grant:
    pod = check_binding(caller, pod)
    meta, spec, status = pod["metadata"], pod["spec"], pod["status"]
    if spec.get("hostNetwork"):
        raise Refused(Reason.HOST_NETWORK, "hostNetwork pods share the node's network identity; not issued")
    namespace = caller.namespace
    if namespace in cfg.system_namespaces:
        raise Refused(Reason.SYSTEM_NAMESPACE, f"namespace {namespace!r} is a system namespace; not issued")
    try:
        sel = select({"metadata": meta, "spec": spec}, namespace, cfg, namespace_labels=namespace_labels)
        check_policy(sel, cfg.namespace_policy, namespace_labels)  # unknown labels fail closed
    except Denied as d:
        raise Refused(d.reason, d.message, 503 if d.code == 503 else 403) from None
    ips = [p.get("ip") for p in status.get("podIPs") or [] if p.get("ip")] or (
        [status["podIP"]] if status.get("podIP") else [])
    dns = names.workload_dns_names(services, namespace, cfg.agent.cluster_domain)
    if len(dns) > max_dns_names:
        raise Refused(Reason.TOO_MANY_DNS_NAMES, f"{len(services)} Services select pod {namespace}/{caller.pod_name}, "
                      f"giving {len(dns)} DNS names; the issuer puts at most {max_dns_names} into one certificate "
                      "(issuer setting max_dns_names): select the pod with fewer Services")
    return Grant(namespace=namespace, service_account=caller.service_account, pod=caller.pod_name,
                 spiffe_id=names.spiffe_id(cfg.agent.trust_domain, namespace, caller.service_account),
                 env=sel.env, business_line=sel.business_line, certificates=sel.certificates,
                 trust_bundles=sel.trust_bundles, common_name=names.common_name(dns),
                 dns_names=tuple(dns), ips=tuple(dict.fromkeys(ips)), pod_uid=caller.pod_uid)
