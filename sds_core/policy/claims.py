"""Tenant hostname claims and who owns what. Pure: the gateway (what Envoy serves) and the issuer
(what it signs) run the same rules over the same API objects, and so agree.

A claim is an *immutable* ConfigMap labelled `sds-injector.io/gateway-claim: "true"` in the
tenant's namespace:

    data:
      hostnames: shop.example.com, www.shop.example.com   # or *.shop.example.com (one label)
      service: storefront                                 # a Service of the same namespace
      port: "8080"
      env: prod                                           # optional: defaultEnvironment
      business-line: retail                               # optional
      backend-tls: mutual                                 # default; "none": plain TCP to the Service

Immutable, because the claim's creation time orders claims: a hostname belongs to the earliest
claim that names it (ties: namespace, then name). If a claim could be edited, an old claim could
add a hostname later and take it from the tenant serving it today. To change a claim, create a
new ConfigMap (it queues behind current owners) and delete the old one.

The operator's grants (`gatewayHostnames`, nothing by default) are what ownership really rests
on: the owner of an old ConfigMap can make it immutable with new data and label it later, so
creation time only orders namespaces granted the same hostname (docs/gateway.md)."""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass

from sds_core import names
from sds_core.policy.config import PREFIX, InjectorConfig
from sds_core.policy.selection import Denied, governing_rule, origin_problems
from sds_core.reasons import Reason

CLAIM_LABEL = f"{PREFIX}gateway-claim"
LABEL_SELECTOR = f"{CLAIM_LABEL}=true"
MAX_HOSTNAMES = 100  # per claim: a certificate with thousands of SANs is a mistake
DATA_KEYS = ("hostnames", "service", "port", "env", "business-line", "backend-tls")
BACKEND_TLS = ("mutual", "none")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Claim:
    namespace: str
    name: str
    created: str  # metadata.creationTimestamp (RFC 3339, UTC: sorts as text)
    hostnames: tuple[str, ...]
    service: str
    port: int
    env: str
    business_line: str
    # "mutual": the gateway connects to the backend over mTLS with its own SPIFFE identity and
    # checks the Service's name in the backend's certificate; "none" only when a claim says so.
    backend_tls: str = "mutual"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Refusal:
    namespace: str
    name: str
    reason: Reason
    message: str
    hostname: str = ""  # the hostname refused, when one is
    owner: str = ""  # hostname_taken: the claim ("namespace/name") that owns it


@dataclass(frozen=True)
class Resolved:
    tenants: tuple[Claim, ...]  # each with only the hostnames it owns
    refusals: tuple[Refusal, ...]


def hostname_problem(h: str, cluster_domain: str) -> str | None:
    if len(h) > 253:
        return "longer than 253 characters"
    labels = h.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if len(labels) < 2:
            return "a wildcard needs at least two labels after '*.' (e.g. *.shop.example.com)"
    if len(labels) < 2:
        return "not a fully qualified name (e.g. shop.example.com)"
    if not all(_LABEL.match(label) for label in labels):
        return "not a DNS name (lowercase letters, digits and '-', labels of 1-63 characters; '*' only as the first label)"
    if all(label.isdigit() for label in labels):
        return "an IP address, not a hostname"
    if names.is_cluster_internal(h, cluster_domain):
        # An edge certificate for such a name would answer for a workload inside the cluster.
        return "a cluster-internal name (*.svc, the cluster domain or *.cluster.local): edge certificates never carry one"
    return None


class _Owners:
    """Owned names, indexed: a name conflicts with an equal name, or with a wildcard matching its
    single leftmost label (what a TLS client would accept), found in two lookups, not a scan."""

    def __init__(self):
        self.by_name: dict[str, Claim] = {}  # exact names and wildcards, literally
        self.by_parent: dict[str, Claim] = {}  # parent domain of an exact name -> its owner

    def covering(self, h: str) -> Claim | None:
        parent = h.partition(".")[2]
        if h.startswith("*."):
            return self.by_name.get(h) or self.by_parent.get(parent)
        return self.by_name.get(h) or self.by_name.get("*." + parent)

    def add(self, h: str, owner: Claim) -> None:
        self.by_name[h] = owner
        if not h.startswith("*."):
            self.by_parent.setdefault(h.partition(".")[2], owner)


def parse(cm: dict, cfg: InjectorConfig) -> Claim | Refusal:
    """A claim ConfigMap → Claim, or a Refusal saying what to fix."""
    meta = cm.get("metadata") or {}
    ns, name = meta.get("namespace") or "", meta.get("name") or ""

    def refuse(reason: Reason, message: str) -> Refusal:
        return Refusal(ns, name, reason, f"gateway claim {ns}/{name}: {message}")

    if cm.get("immutable") is not True:
        return refuse(Reason.MUTABLE, "must set `immutable: true` (its creation time decides hostname ownership; "
                      "to change it, create a new claim and delete this one)")
    data = cm.get("data") or {}
    unknown = sorted(set(data) - set(DATA_KEYS))
    if unknown:
        return refuse(Reason.INVALID, f"unknown keys {unknown}; allowed: {', '.join(DATA_KEYS)}")
    hosts = tuple(dict.fromkeys(h.strip().lower().rstrip(".") for h in str(data.get("hostnames", "")).split(",")
                                if h.strip()))
    if not hosts:
        return refuse(Reason.INVALID, "data.hostnames is empty (a comma-separated list of hostnames)")
    if len(hosts) > MAX_HOSTNAMES:
        return refuse(Reason.INVALID, f"{len(hosts)} hostnames; at most {MAX_HOSTNAMES} per claim")
    bad = [f"{h!r}: {p}" for h in hosts if (p := hostname_problem(h, cfg.agent.cluster_domain))]
    if bad:
        return refuse(Reason.INVALID_HOSTNAME, "; ".join(bad[:5]))
    service = str(data.get("service", ""))
    if not _LABEL.match(service):
        return refuse(Reason.INVALID, f"data.service {service!r} is not a Service name of namespace {ns!r}")
    port = str(data.get("port", ""))
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        return refuse(Reason.INVALID, f"data.port {port!r} is not a port number (1-65535)")
    env = str(data.get("env") or cfg.default_environment or "")
    if env not in cfg.environments:
        return refuse(Reason.UNKNOWN_ENV, f"env {env!r} is not one of {', '.join(cfg.environments)}")
    bl = str(data.get("business-line", ""))
    if bl and bl not in cfg.business_lines:
        return refuse(Reason.UNKNOWN_BUSINESS_LINE, f"business-line {bl!r} is not one of "
                      f"{', '.join(sorted(cfg.business_lines)) or 'none'}")
    backend_tls = str(data.get("backend-tls") or BACKEND_TLS[0])
    if backend_tls not in BACKEND_TLS:
        return refuse(Reason.INVALID, f"data.backend-tls {backend_tls!r} is not one of {', '.join(BACKEND_TLS)}")
    return Claim(ns, name, str(meta.get("creationTimestamp") or ""), hosts, service, int(port), env, bl, backend_tls)


def _within_policy(c: Claim, cfg: InjectorConfig, labels: dict | None) -> tuple[Claim | None, list[Refusal]]:
    """The claim with only the hostnames its namespace may claim (None: nothing left, or the
    environment or business line refused), and the refusals."""
    def refuse(reason: Reason, message: str) -> tuple[None, list[Refusal]]:
        return None, [Refusal(c.namespace, c.name, reason, f"gateway claim {c.key}: {message}")]

    if c.namespace in cfg.system_namespaces:
        return refuse(Reason.SYSTEM_NAMESPACE, f"namespace {c.namespace!r} is a system namespace")
    asked = f"asked for env={c.env}, business-line={c.business_line or '-'}"
    try:
        i, rule = governing_rule(c.namespace, cfg.namespace_policy, labels, asked)
    except Denied as d:
        return refuse(d.reason, d.message)
    problems = origin_problems(rule, c.env, c.business_line)
    if problems:
        return refuse(Reason.POLICY, f"namespace {c.namespace!r} may not use {'; '.join(problems)} "
                      f"(namespacePolicy.rules[{i}])")
    allowed = tuple(h for h in c.hostnames if rule.allows_hostname(h))
    refusals = [Refusal(c.namespace, c.name, Reason.HOSTNAME_NOT_ALLOWED,
                        f"gateway claim {c.key}: hostname {h!r} is not one namespace {c.namespace!r} may claim "
                        f"(gatewayHostnames: {', '.join(rule.gateway_hostnames) or 'none'}, namespacePolicy.rules[{i}]); "
                        f"it is not served", hostname=h) for h in c.hostnames if h not in allowed]
    if not allowed:
        return None, refusals
    return (c if allowed == c.hostnames else dataclasses.replace(c, hostnames=allowed)), refusals


def _checked(cm: dict, cfg: InjectorConfig, labels: dict | None) -> tuple[Claim | None, list[Refusal]]:
    """One claim: parsed, then held to its namespace's policy (`labels`: the namespace's)."""
    parsed = parse(cm, cfg)
    if isinstance(parsed, Refusal):
        return None, [parsed]
    return _within_policy(parsed, cfg, labels)


def resolve(objects: list[dict], cfg: InjectorConfig, labels_of: Callable[[str], dict | None],
            memo: dict | None = None) -> Resolved:
    """Every claim object → the tenants (each with the hostnames it owns) and the refusals.
    Claims (and hostnames) the policy refuses own nothing, so they cannot block a tenant that may
    have the name. `memo`: kept by the caller between calls, so that one claim's change costs
    checking that claim, not all of them (a claim is checked again when its object or its
    namespace's labels differ, or the configuration is another)."""
    claims, refusals = [], []
    seen: dict = {}
    for cm in objects:
        meta = cm.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        labels = labels_of(key[0] or "")
        hit = memo.get(key) if memo is not None else None
        if hit is not None and hit[1] is cfg and hit[0] == cm and hit[2] == labels:
            claim, refused = hit[3], hit[4]
        else:
            claim, refused = _checked(cm, cfg, labels)
        seen[key] = (cm, cfg, labels, claim, refused)
        refusals.extend(refused)
        if claim is not None:
            claims.append(claim)
    if memo is not None:
        memo.clear()
        memo.update(seen)
    owners = _Owners()
    tenants = []
    for c in sorted(claims, key=lambda c: (c.created, c.namespace, c.name)):
        mine = []
        for h in c.hostnames:
            owner = owners.covering(h)
            if owner is None:
                mine.append(h)
                continue
            where = "another claim of the same namespace" if owner.namespace == c.namespace else f"namespace {owner.namespace!r}"
            refusals.append(Refusal(c.namespace, c.name, Reason.HOSTNAME_TAKEN,
                                    f"gateway claim {c.key}: hostname {h!r} belongs to {owner.key} ({where}, "
                                    f"claimed {owner.created or 'earlier'}); it is not served for this claim",
                                    hostname=h, owner=owner.key))
        if mine:
            t = c if len(mine) == len(c.hostnames) else dataclasses.replace(c, hostnames=tuple(mine))
            for h in mine:
                owners.add(h, t)
            tenants.append(t)
    return Resolved(tuple(tenants), tuple(refusals))
