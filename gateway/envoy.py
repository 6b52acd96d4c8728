"""What the gateway's Envoy is told: a bootstrap that takes everything else from the agent over
ADS, and the listener and the backends cluster the agent serves for the current tenants.

One listener, one filter chain per tenant matched by SNI (`server_names`), each with its own
certificate by SDS; no default chain, so a name no tenant owns gets no certificate (the
handshake is refused and counted as `no_filter_chain_match`). Each chain proxies to its tenant's
own Service, in its own namespace: a claim cannot point the gateway anywhere else.

All chains share one backend cluster, a dynamic forward proxy whose host each chain fixes (a
filter state set from our configuration, never from the client's SNI). A cluster per tenant cost
Envoy more than the tenants' TLS contexts: measured with 5,000 tenants, static configuration,
this machine: chains alone 1.5 s / 147 MB private, plus a DNS cluster each 3.9 s / 394 MB, with
one shared forward-proxy cluster 2.0 s / 163 MB. The price: upstream counters are the shared
cluster's, not per tenant (the per-tenant `tcp.<prefix>.*` counters stay)."""
from __future__ import annotations

from typing import Any

from google.protobuf import json_format

# Registers the typed_config types the listener and the cluster name, for json_format.
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.clusters.dynamic_forward_proxy.v3 import cluster_pb2 as dfp_cluster_pb2  # noqa: F401
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2  # noqa: F401
from envoy.extensions.filters.network.set_filter_state.v3 import set_filter_state_pb2
from envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3 import sni_dynamic_forward_proxy_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from sds_core.envoy import bootstrap as b

from sds_core import names
from sds_core.policy.claims import BACKEND_TLS, Claim
from sds_core.sds.sources.base import GatewayIdentity

LISTENER_NAME = "gateway"
BACKENDS = "gateway-backends"
# Bytes Envoy buffers per connection and direction before it stops reading the other side:
# Envoy's edge guidance (its default, 1 MiB, lets 50,000 clients that do not read hold ~60 GB).
BUFFER_LIMIT = 32 * 1024
# One backend host per tenant; Envoy's default (1,024) would refuse tenants beyond it.
MAX_BACKEND_HOSTS = 100_000
ADS = {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"}
TLS_INSPECTOR = {"name": "envoy.filters.listener.tls_inspector", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}


def secret_name(t: Claim) -> str:
    return f"gateway:{t.namespace}/{t.name}"


def upstream(t: Claim, business_line_cas: bool) -> GatewayIdentity | None:
    """Whose pods the tenant's backend is, for the gateway's identity and trust towards it: its
    environment (and business line, when business lines have CAs of their own). None: plain
    TCP, which only a claim's `backend-tls: none` asks for."""
    if t.backend_tls != "mutual":
        return None
    return GatewayIdentity(t.env, t.business_line if business_line_cas else "")


def _suffix(u: GatewayIdentity) -> str:
    return f"{u.env}/{u.business_line}" if u.business_line else u.env


def identity_secret(u: GatewayIdentity) -> str:
    return f"gateway-identity:{_suffix(u)}"


def trust_secret(u: GatewayIdentity) -> str:
    return f"gateway-trust:{_suffix(u)}"


def backends_name(u: GatewayIdentity | None) -> str:
    return f"{BACKENDS}-mtls:{_suffix(u)}" if u else BACKENDS


def stat_prefix(t: Claim) -> str:
    # Per-tenant counters: tcp.<prefix>.downstream_cx_total counts connections whose SNI chose
    # this tenant (handshakes completed or not; failures are the listener's ssl.connection_error).
    return f"gw_{t.namespace}_{t.name}".replace(".", "_")


def bootstrap(agent_socket: str, admin_socket: str | None = None, admin_port: int | None = None,
              node: str = "sds-gateway", max_connections: int = 50_000) -> dict:
    """The gateway Envoy's whole static configuration: the agent's socket, and ADS for the rest."""
    ads_source = {"api_type": "GRPC", "transport_api_version": "V3", "set_node_on_first_message_only": True,
                  "grpc_services": [{"envoy_grpc": {"cluster_name": b.SDS_CLUSTER, "retry_policy": {
                      "retry_back_off": {"base_interval": "0.05s", "max_interval": "0.25s"}}}}]}
    admin = b.admin_pipe(admin_socket) if admin_socket else b.admin(admin_port or 15000)
    return {
        "node": {"id": node, "cluster": node},
        "admin": admin,
        "dynamic_resources": {"ads_config": ads_source, "lds_config": ADS, "cds_config": ADS},
        "static_resources": {"clusters": [b.sds_cluster(agent_socket)]},
        # The tenants' shards are internal listeners (gateway/shards.py).
        "bootstrap_extensions": [{"name": "envoy.bootstrap.internal_listener", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"}}],
        "overload_manager": b.overload_manager(max_connections),
    }


def dns_cache() -> dict:
    """The backends' DNS cache; the cluster and every chain's resolving filter must name the same.
    Re-resolved every 30 s while used, forgotten after 5 idle minutes. Lookups in flight are not
    capped at Envoy's 1,024: a restarted gateway taking traffic for thousands of tenants at once
    resolves them all together."""
    return {"name": BACKENDS, "dns_lookup_family": "V4_PREFERRED", "dns_refresh_rate": "30s",
            "host_ttl": "300s", "max_hosts": MAX_BACKEND_HOSTS,
            "dns_cache_circuit_breaker": {"max_pending_requests": MAX_BACKEND_HOSTS}}


def backend_host(t: Claim, backend: str, cluster_domain: str) -> str:
    """`backend`: a template of the backend host, e.g. "{service}.{namespace}.svc.{domain}"."""
    return backend.format(service=t.service, namespace=t.namespace, domain=cluster_domain)


def _constant(key: str, value: str, upstream: bool = False) -> dict:
    out = {"object_key": key, "format_string": {"text_format_source": {"inline_string": value}}}
    if upstream:  # read by the upstream connection's TLS socket
        out["shared_with_upstream"] = "ONCE"
    return out


def chain_spec(t: Claim, host: str, min_version: str = "TLSv1_2", curves: tuple[str, ...] = (),
               staple_policy: str = "LENIENT_STAPLING", handshake_timeout: float = 10,
               cluster_domain: str = "cluster.local", business_line_cas: bool = False) -> dict:
    """A tenant's filter chain, as Envoy's JSON. `Chains` builds the same protobuf faster."""
    u = upstream(t, business_line_cas)
    state = [_constant("envoy.upstream.dynamic_host", host), _constant("envoy.upstream.dynamic_port", str(t.port))]
    if u:
        # The backend must prove it is the claim's Service in the claim's namespace: the issuer
        # signs that name only into pods the Service selects there (a namespace's SPIFFE prefix
        # cannot be set per connection: Envoy checks these names exactly).
        service = names.service_dns_name(t.service, t.namespace, cluster_domain)
        state += [_constant("envoy.network.upstream_server_name", service, upstream=True),
                  _constant("envoy.network.upstream_subject_alt_names", service, upstream=True)]
    common: dict[str, Any] = {"tls_params": {"tls_minimum_protocol_version": min_version,
                             "tls_maximum_protocol_version": "TLSv1_3"},
              "tls_certificate_sds_secret_configs": [{"name": secret_name(t), "sds_config": ADS}]}
    if curves:
        common["tls_params"]["ecdh_curves"] = list(curves)
    return {
        "name": f"{t.namespace}/{t.name}",
        "filter_chain_match": {"server_names": list(t.hostnames)},
        "transport_socket": b.downstream_tls(common, require_client_cert=False, staple_policy=staple_policy),
        # The ClientHello has the listener's 5 s; the rest of the handshake has this. A client that
        # stalls would otherwise hold its connection for tcp_proxy's idle timeout (an hour).
        "transport_socket_connect_timeout": f"{handshake_timeout:g}s",
        "filters": [
            # The upstream is this tenant's Service, set here: the resolving filter would use the
            # client's SNI (anyone's hostname) if nothing were set.
            {"name": "envoy.filters.network.set_filter_state", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config",
                "on_new_connection": state}},
            # Resolves before connecting (the cluster alone would fail a connection to a name not
            # yet in its cache).
            {"name": "envoy.filters.network.sni_dynamic_forward_proxy", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3.FilterConfig",
                "dns_cache_config": dns_cache(), "port_value": t.port}},
            # The backend is dialled only once the client has finished its handshake: a bare
            # ClientHello naming a tenant does not make the gateway open connections to it.
            {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": stat_prefix(t), "cluster": backends_name(u),
                "upstream_connect_mode": "ON_DOWNSTREAM_TLS_HANDSHAKE", "max_early_data_bytes": 0}}],
    }


def _copy(msg):
    out = type(msg)()
    out.CopyFrom(msg)
    return out


class Chains:
    """Builds tenants' chains from one parsed `chain_spec`, filling in only what differs per
    tenant: parsing the JSON form for each of 10,000 tenants took a third of the gateway agent's
    CPU while it issued their certificates. tests/test_gateway_units.py holds the two forms equal."""

    def __init__(self, min_version: str = "TLSv1_2", curves: tuple[str, ...] = (),
                 staple_policy: str = "LENIENT_STAPLING", handshake_timeout: float = 10,
                 cluster_domain: str = "cluster.local", business_line_cas: bool = False):
        self.cluster_domain, self.business_line_cas = cluster_domain, business_line_cas
        # One template per backend mode: plain TCP, and mTLS (two more filter-state entries).
        tls_args = dict(min_version=min_version, curves=curves, staple_policy=staple_policy,
                        handshake_timeout=handshake_timeout)
        self._bases = {mode: self._template(Claim("ns", "name", "", ("host.example",), "svc", 1, "", "", mode),
                                            tls_args) for mode in BACKEND_TLS}

    def _template(self, blank: Claim, tls_args: dict) -> tuple:
        spec = chain_spec(blank, "host", **tls_args, cluster_domain=self.cluster_domain,
                          business_line_cas=self.business_line_cas)
        base = json_format.ParseDict(spec, listener_components_pb2.FilterChain())
        tls = tls_pb2.DownstreamTlsContext()
        base.transport_socket.typed_config.Unpack(tls)
        msgs = (set_filter_state_pb2.Config(), sni_dynamic_forward_proxy_pb2.FilterConfig(), tcp_proxy_pb2.TcpProxy())
        for f, msg in zip(base.filters, msgs, strict=True):
            f.typed_config.Unpack(msg)
        del base.filter_chain_match.server_names[:]
        return base, tls, msgs

    def __call__(self, t: Claim, host: str) -> listener_components_pb2.FilterChain:
        base, base_tls, msgs = self._bases[t.backend_tls]
        out = _copy(base)
        out.name = f"{t.namespace}/{t.name}"
        out.filter_chain_match.server_names.extend(t.hostnames)
        tls = _copy(base_tls)
        tls.common_tls_context.tls_certificate_sds_secret_configs[0].name = secret_name(t)
        out.transport_socket.typed_config.Pack(tls)
        state, resolve, proxy = (_copy(m) for m in msgs)
        values = [host, str(t.port)]
        if t.backend_tls == "mutual":
            service = names.service_dns_name(t.service, t.namespace, self.cluster_domain)
            values += [service, service]
        for entry, value in zip(state.on_new_connection, values, strict=True):
            entry.format_string.text_format_source.inline_string = value
        resolve.port_value = t.port
        proxy.stat_prefix = stat_prefix(t)
        proxy.cluster = backends_name(upstream(t, self.business_line_cas))
        for f, msg in zip(out.filters, (state, resolve, proxy), strict=True):
            f.typed_config.Pack(msg)
        return out


def backends(max_connections: int, u: GatewayIdentity | None = None,
             trust_domain: str = "cluster.local") -> cluster_pb2.Cluster:
    """The cluster the tenants' chains of one backend mode proxy through: plain TCP, or mTLS to
    the pods of one environment (and business line) with the gateway's own SPIFFE identity.
    Its circuit breakers are the gateway's connection limit: Envoy's default of 1,024 would cap
    every tenant together."""
    limits = {"max_connections": max_connections, "max_pending_requests": max_connections,
              "max_requests": max_connections}
    tls = {}
    if u is not None:
        # A workload's certificate (a SPIFFE ID of the trust domain) from the pods' own CA; each
        # connection also checks the claim's Service name (the chain's filter state).
        common = b.common_tls(identity_secret(u), trust_secret(u),
                              b.san_matchers(spiffe_prefixes=[f"spiffe://{trust_domain}/ns/"]), sds=ADS)
        tls = {"transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": b.UPSTREAM_TLS, "common_tls_context": common}}}
    return json_format.ParseDict({
        "name": backends_name(u),
        **tls,
        "connect_timeout": "2s",
        "lb_policy": "CLUSTER_PROVIDED",
        "cluster_type": {"name": "envoy.clusters.dynamic_forward_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig",
            "dns_cache_config": dns_cache()}},
        "circuit_breakers": {"thresholds": [limits]},
        "per_connection_buffer_limit_bytes": BUFFER_LIMIT,
    }, cluster_pb2.Cluster())
