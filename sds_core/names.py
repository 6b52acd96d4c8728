"""Names are identity: the one place that says which SPIFFE ID and which DNS names a workload
has, and what an in-cluster hostname proves about its peer.

A name goes into a certificate only if no other namespace could be given it: Kubernetes
resolves a bare Service name (`ledger`) in the *caller's* namespace, so any namespace can own
one; names that contain the namespace (`ledger.bank.svc`, `ledger.bank.svc.<cluster domain>`)
can only be made by Services of that namespace. The two-label `ledger.bank` is left out too: it
lies outside any DNS subtree a CA's name constraints can permit (`svc`, the cluster domain), and
those constraints are what keep a leaked environment key from minting outside hostnames."""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def namespace_prefix(trust_domain: str, namespace: str) -> str:
    """What every SPIFFE ID of `namespace` starts with (a URI SAN prefix matcher)."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/"


INBOUND = "@inbound:"


def inbound_trust(trust_bundle: str, port: int) -> str:
    """The SDS name of `trust_bundle` as an inbound TLS port checks its clients: the same CAs,
    plus the gateways the issuer says may call that port (derived from accepted claims)."""
    return f"{trust_bundle}{INBOUND}{port}"


def split_inbound(name: str) -> tuple[str, str]:
    """(trust bundle, port) of an `inbound_trust` name; (name, "") for any other."""
    base, sep, port = name.rpartition(INBOUND)
    return (base, port) if sep and port.isdigit() else (name, "")


def service_dns_name(service: str, namespace: str, cluster_domain: str) -> str:
    """The name a backend's certificate must carry for the gateway to accept it as `service` of
    `namespace`: the issuer signs it only into pods that Service selects in that namespace."""
    return f"{service}.{namespace}.svc.{cluster_domain}"


def workload_dns_names(services: Iterable[str], namespace: str, cluster_domain: str) -> list[str]:
    """The DNS SANs of a pod selected by `services` in `namespace`: never the bare Service name,
    always inside workload_dns_subtrees()."""
    out: list[str] = []
    for s in services:
        out += [f"{s}.{namespace}.svc", f"{s}.{namespace}.svc.{cluster_domain}"]
    return list(dict.fromkeys(out))


def workload_dns_subtrees(cluster_domain: str) -> list[str]:
    """The DNS name constraints of a workload CA: every name it signs ends in `.svc` or in the
    cluster domain, so its key cannot mint a certificate for an outside hostname."""
    return list(dict.fromkeys(["svc", cluster_domain]))


def common_name(dns_names: list[str]) -> str:
    """A leaf's CN: its first DNS name when one fits the 64 characters X.509 allows, else none
    (an empty subject). Never a truncated name, which could be another namespace's, and never a
    bare label: clients that still read the CN must find nothing the SANs would not give."""
    return dns_names[0] if dns_names and len(dns_names[0]) <= 64 else ""


def is_cluster_internal(hostname: str, cluster_domain: str) -> bool:
    """A name the cluster's DNS answers or that only means something inside a cluster: single
    labels, `*.svc`, `*.svc.<anything>`, the cluster domain and below it, `*.cluster.local`."""
    h = hostname.rstrip(".").lower()
    labels = h.split(".")
    return (len(labels) == 1 or "svc" in labels[1:] or h == cluster_domain or h.endswith("." + cluster_domain)
            or h == "cluster.local" or h.endswith(".cluster.local"))


@dataclass(frozen=True)
class PeerCheck:
    """How an outbound connection verifies its peer: an exact SPIFFE ID, a SPIFFE ID prefix
    (every workload of one namespace), or, for hosts outside the cluster only, a DNS SAN."""

    spiffe_ids: tuple[str, ...] = ()
    spiffe_prefixes: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()


def target_namespace(host: str, own_namespace: str) -> str | None:
    """The namespace whose Service an in-cluster hostname names, as the pod's resolver (search
    path, ndots 5) reads it: `svc` -> the caller's own namespace, `svc.ns`, `svc.ns.svc` and
    `svc.ns.svc.<domain>` -> `ns`. None for a name outside the cluster: three or more labels
    without `svc` third, any absolute name written with a trailing dot (`example.com.`),
    `localhost` (the pod itself, from /etc/hosts) and IP literals (no namespace to check)."""
    if host.endswith(".") or host.lower() == "localhost" or _is_ip(host):
        return None
    labels = host.lower().split(".")
    if len(labels) == 1:
        return own_namespace
    if len(labels) == 2 or labels[2] == "svc":
        return labels[1]
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def outbound_peer_check(host: str, pin: str | None, own_namespace: str, trust_domain: str) -> PeerCheck:
    """Never "DNS name only" for a name in the cluster: the peer must hold a SPIFFE ID of the
    namespace the name designates (a pin narrows that to one ID, and must lie inside it)."""
    ns = target_namespace(host, own_namespace)
    if ns is not None:
        prefix = namespace_prefix(trust_domain, ns)
        if not pin:
            return PeerCheck(spiffe_prefixes=(prefix,))
        if not pin.startswith(prefix):
            raise ValueError(f"{host!r} names a Service of namespace {ns!r}, but the pinned peer {pin!r} "
                             f"is not in it (expected {prefix}...)")
        return PeerCheck(spiffe_ids=(pin,))
    if pin:
        return PeerCheck(spiffe_ids=(pin,))
    return PeerCheck(dns=(host.rstrip("."),))
