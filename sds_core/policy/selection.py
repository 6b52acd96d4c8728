"""Pod + namespace → which certificates, ports and TLS settings it gets, under the namespace
isolation policy. Pure: no I/O."""
from __future__ import annotations

import re
from dataclasses import dataclass

from sds_core import names

from sds_core.policy import annotations as ann
from .config import InjectorConfig, NamespacePolicy, PolicyRule
from sds_core.reasons import Reason


class Denied(Exception):
    """The pod must not be admitted as it is; `message` tells the user what to change."""

    def __init__(self, reason: Reason, message: str, code: int = 403):
        super().__init__(message)
        self.reason, self.message, self.code = reason, message, code


@dataclass(frozen=True)
class Selection:
    namespace: str
    service: str
    service_account: str
    env: str
    business_line: str | None
    certificates: tuple[str, ...]
    trust_bundles: tuple[str, ...]
    inbound: tuple[tuple[int, int], ...] = ()
    # (local port, host, port, how the peer is verified)
    outbound: tuple[tuple[int, str, int, names.PeerCheck], ...] = ()
    mtls: bool = True
    allowed_peers: tuple[str, ...] = ()
    tls_min_version: str = "TLSv1_2"
    tls_max_version: str = "TLSv1_3"
    ecdh_curves: tuple[str, ...] = ()
    ocsp_staple_policy: str = "LENIENT_STAPLING"
    cipher_suites: tuple[str, ...] = ()
    resources: tuple[tuple[str, str], ...] = ()  # annotation key -> quantity overrides
    # What the naming templates give this pod's env and business line: allowed by default.
    template_names: tuple[str, str] = ("", "")


def _dns_label(value: str) -> str:
    """The closest DNS label to a label value (`my_app` -> `my-app`, `web.frontend` -> `web-frontend`)."""
    return re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")[:63].rstrip("-")


def _service_name(pod: dict, annotated: str | None) -> str:
    if annotated:
        return annotated
    labels = (pod.get("metadata") or {}).get("labels") or {}
    for key in ("app.kubernetes.io/name", "app"):
        if isinstance(labels.get(key), str) and (name := _dns_label(labels[key])):
            return name
    return (pod.get("spec") or {}).get("serviceAccountName") or "default"


def _outbound(targets, namespace: str, config: InjectorConfig) -> tuple:
    try:
        return tuple((local, host, port, names.outbound_peer_check(host, pin, namespace, config.agent.trust_domain))
                     for local, host, port, pin in targets)
    except ValueError as e:
        raise Denied(Reason.INVALID_ANNOTATION, f"annotation {ann.PREFIX}outbound: {e}", 400) from None


def _max_version(values: dict) -> str:
    low, high = values.get("tls-min-version", "TLSv1_2"), values.get("tls-max-version", "TLSv1_3")
    if (low, high) == ("TLSv1_3", "TLSv1_2"):
        raise Denied(Reason.INVALID_ANNOTATION, f"annotation {ann.PREFIX}tls-max-version TLSv1_2 is below "
                     f"{ann.PREFIX}tls-min-version TLSv1_3", 400)
    return high


def _ecdh_curves(values: dict, config: InjectorConfig) -> tuple[str, ...]:
    curves = tuple(values.get("ecdh-curves") or config.proxy.ecdh_curves)
    if curves and all(c in ann.HYBRID_CURVES for c in curves) and values.get("tls-max-version") == "TLSv1_2":
        raise Denied(Reason.INVALID_ANNOTATION, f"{', '.join(curves)} exist only in TLS 1.3, but "
                     f"{ann.PREFIX}tls-max-version is TLSv1_2: add a classic group (X25519) or allow TLS 1.3", 400)
    return curves


def _render(template: str, **values) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError) as e:
        raise Denied(Reason.CONFIG, f"naming template {template!r} is invalid ({e}); fix the injector "
                     "configuration", 500) from None


def namespace_environments(config: InjectorConfig, labels: dict | None) -> list[str] | None:
    """The environments the namespace's label permits (first: its default), or None when the
    configuration names no label, the namespace has none, or its labels are not known."""
    key = config.namespace_environment_label
    value = (labels or {}).get(key) if key else None
    if not isinstance(value, str):
        return None
    return [e for e in value.split(".") if e] or None


def _environment(values: dict, namespace: str, config: InjectorConfig, labels: dict | None) -> str:
    permitted = namespace_environments(config, labels)
    env = values.get("env")
    if env is None:
        env = permitted[0] if permitted else config.default_environment
    elif permitted is not None and env not in permitted:
        raise Denied(Reason.ENV_NOT_IN_NAMESPACE, f"annotation {ann.PREFIX}env: {env!r} is not an environment of "
                     f"namespace {namespace!r}, whose label {config.namespace_environment_label} permits "
                     f"{', '.join(permitted)} (set by the platform team)", 403)
    if env is None:
        label = config.namespace_environment_label
        raise Denied(Reason.MISSING_ENV, f"annotation {ann.PREFIX}env is required (one of "
                     f"{', '.join(config.environments)})"
                     + (f", or the platform team labels the namespace {label}=<env>" if label else "")
                     + ", or set defaultEnvironment in the injector configuration", 400)
    return env


def select(pod: dict, namespace: str, config: InjectorConfig, values: dict | None = None,
           namespace_labels: dict | None = None) -> Selection:
    """`values`: the parsed annotations, when the caller already has them; `namespace_labels`:
    the namespace's labels, None when not known."""
    if values is None:
        try:
            values = ann.parse((pod.get("metadata") or {}).get("annotations"))
        except ann.AnnotationError as e:
            raise Denied(Reason.INVALID_ANNOTATION, str(e), 400) from None
    env = _environment(values, namespace, config, namespace_labels)
    if env not in config.environments:
        raise Denied(Reason.UNKNOWN_ENV, f"annotation {ann.PREFIX}env: unknown environment {env!r}; "
                     f"known: {', '.join(config.environments)} (configuration key environments)", 400)
    bl_name = values.get("business-line")
    bl = None
    if bl_name is not None:
        bl = config.business_lines.get(bl_name)
        if bl is None:
            raise Denied(Reason.UNKNOWN_BUSINESS_LINE, f"annotation {ann.PREFIX}business-line: unknown business "
                         f"line {bl_name!r}; known: {', '.join(sorted(config.business_lines)) or 'none'} "
                         "(configuration key businessLines)", 400)
    service = _service_name(pod, values.get("service"))
    names = dict(service=service, env=env, business_line=bl_name or "", namespace=namespace)
    cert_tmpl = (bl and bl.certificate) or config.naming.certificate
    trust_tmpl = (bl and bl.trust_bundle) or config.naming.trust_bundle
    template_names = (_render(cert_tmpl, **names), _render(trust_tmpl, **names))
    certs = tuple(values.get("certificates") or [template_names[0]])
    trust = tuple(values.get("trust-bundles") or [template_names[1]])
    if set(certs) & set(trust):
        raise Denied(Reason.NAME_COLLISION, f"names used both as certificate and trust bundle: "
                     f"{sorted(set(certs) & set(trust))}", 400)
    resources = tuple((k, values[k]) for k in ("proxy-cpu", "proxy-memory", "agent-cpu", "agent-memory")
                      if k in values)
    return Selection(
        namespace=namespace, service=service,
        service_account=(pod.get("spec") or {}).get("serviceAccountName") or "default",
        env=env, business_line=bl_name, certificates=certs, trust_bundles=trust,
        inbound=tuple(values.get("inbound", ())), outbound=_outbound(values.get("outbound", ()), namespace, config),
        mtls=values.get("mtls", True), allowed_peers=tuple(values.get("allowed-peers", ())),
        tls_min_version=values.get("tls-min-version", "TLSv1_2"),
        tls_max_version=_max_version(values),
        ecdh_curves=_ecdh_curves(values, config),
        ocsp_staple_policy=values.get("ocsp-staple-policy", config.proxy.ocsp_staple_policy),
        cipher_suites=tuple(values.get("cipher-suites", ())), resources=resources, template_names=template_names,
    )


def governing_rule(namespace: str, policy: NamespacePolicy, labels: dict[str, str] | None,
                   asked: str) -> tuple[int, PolicyRule]:
    """The first rule matching the namespace. `labels` None means unknown: a label rule before
    the match cannot be decided, so deny (fail closed) rather than fall through to a later,
    often wider, rule."""
    for i, r in enumerate(policy.rules):
        if r.matches(namespace, labels):
            return i, r
        if r.namespace_selector is not None and labels is None:
            raise Denied(Reason.NAMESPACE_LABELS_UNKNOWN, f"namespace {namespace!r}: its labels are not known yet, "
                         f"so namespacePolicy.rules[{i}] (a label rule) cannot be decided; retry shortly", 503)
    raise Denied(Reason.POLICY_NO_RULE, f"namespace {namespace!r} is not covered by any namespacePolicy "
                 f"rule ({asked}); add a rule for it to namespacePolicy.rules in the injector configuration")


def origin_problems(rule: PolicyRule, env: str, business_line: str | None) -> list[str]:
    """What of (environment, business line) the rule does not allow, as phrases."""
    problems = []
    if not PolicyRule.allows(rule.environments, env):
        problems.append(f"environment {env!r} (allowed: {', '.join(rule.environments) or 'none'})")
    if business_line and not PolicyRule.allows(rule.business_lines, business_line):
        problems.append(f"business line {business_line!r} (allowed: {', '.join(rule.business_lines) or 'none'})")
    return problems


def check_policy(sel: Selection, policy: NamespacePolicy, labels: dict[str, str] | None) -> None:
    """Deny unless the first rule matching the namespace allows everything the pod asks for."""
    asked = (f"asked for env={sel.env}, business-line={sel.business_line or '-'}, "
             f"certificates={list(sel.certificates)}, trust bundles={list(sel.trust_bundles)}")
    i, rule = governing_rule(sel.namespace, policy, labels, asked)
    problems = origin_problems(rule, sel.env, sel.business_line)
    cert_template, trust_template = sel.template_names
    bad = [c for c in sel.certificates if not rule.allows_certificate(c, cert_template)]
    if bad:
        problems.append(f"certificates {bad} (allowed: {', '.join(rule.allowed_certificates(cert_template))})")
    bad = [t for t in sel.trust_bundles if not rule.allows_trust_bundle(t, trust_template)]
    if bad:
        problems.append(f"trust bundles {bad} (allowed: {', '.join(rule.trust_bundles or [trust_template])})")
    if problems:
        raise Denied(Reason.POLICY, f"namespace {sel.namespace!r} may not use {'; '.join(problems)} — {asked}. "
                     f"The namespace is governed by namespacePolicy.rules[{i}] of the injector configuration; "
                     "change that rule or the pod's annotations")
