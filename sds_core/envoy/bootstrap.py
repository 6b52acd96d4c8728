"""Envoy bootstrap pieces: the SDS cluster over the agent's Unix socket, TLS contexts whose
certificates come from SDS, and the inbound/outbound listeners an injected pod needs.

Plain dicts in Envoy's v3 JSON form, so the same builders serve the webhook (which passes the
bootstrap inline to Envoy) and the tests that run the real Envoy binary."""
from __future__ import annotations

from collections.abc import Sequence

from sds_core import names

SDS_CLUSTER = "sds-agent"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def sds_cluster(socket_path: str, name: str = SDS_CLUSTER) -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": socket_path}}}}]}],
        },
        # gRPC needs HTTP/2 to the agent.
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    }


def sds_config(cluster: str = SDS_CLUSTER, initial_fetch_timeout: str = "0s", delta: bool = False) -> dict:
    # initial_fetch_timeout must be set on every sds_config; "0s" keeps the listener warming
    # until its secret arrives instead of going active and resetting connections.
    return {
        "resource_api_version": "V3",
        "initial_fetch_timeout": initial_fetch_timeout,
        "api_config_source": {
            "api_type": "DELTA_GRPC" if delta else "GRPC",
            "transport_api_version": "V3",
            # The agent is local: reconnect fast (Envoy's default backoff grows to 30 s), so a
            # restarted or late agent is picked up within a quarter second.
            "grpc_services": [{"envoy_grpc": {"cluster_name": cluster, "retry_policy": {
                "retry_back_off": {"base_interval": "0.05s", "max_interval": "0.25s"}}}}],
        },
    }


def san_matchers(spiffe_ids: Sequence[str] = (), spiffe_prefixes: Sequence[str] = (), dns: Sequence[str] = ()) -> list[dict]:
    return (
        [{"san_type": "URI", "matcher": {"exact": s}} for s in spiffe_ids]
        + [{"san_type": "URI", "matcher": {"prefix": p}} for p in spiffe_prefixes]
        + [{"san_type": "DNS", "matcher": {"exact": d}} for d in dns]
    )


def common_tls(cert: str | None, trust: str | None = None, sans: Sequence[dict] = (), sds: dict | None = None,
               min_version: str = "TLSv1_2", ciphers: Sequence[str] = (), alpn: Sequence[str] = (),
               max_version: str = "TLSv1_3", curves: Sequence[str] = ()) -> dict:
    sds = sds or sds_config()
    # The maximum is always explicit: Envoy's upstream default stops at TLS 1.2, which would keep
    # pod-to-pod mTLS off TLS 1.3 (and off hybrid post-quantum groups, which need 1.3).
    ctx: dict = {"tls_params": {"tls_minimum_protocol_version": min_version,
                                "tls_maximum_protocol_version": max_version}}
    if curves:
        ctx["tls_params"]["ecdh_curves"] = list(curves)
    if ciphers:
        ctx["tls_params"]["cipher_suites"] = list(ciphers)
    if alpn:
        ctx["alpn_protocols"] = list(alpn)
    if cert:
        ctx["tls_certificate_sds_secret_configs"] = [{"name": cert, "sds_config": sds}]
    if trust:
        # The CA comes from SDS; the peer identity check is static, merged in by Envoy.
        ctx["combined_validation_context"] = {
            "default_validation_context": {"match_typed_subject_alt_names": list(sans)} if sans else {},
            "validation_context_sds_secret_config": {"name": trust, "sds_config": sds},
        }
    return ctx


def downstream_tls(common: dict, require_client_cert: bool, staple_policy: str | None = None) -> dict:
    cfg = {"@type": DOWNSTREAM_TLS, "require_client_certificate": require_client_cert, "common_tls_context": common}
    if staple_policy and staple_policy != "LENIENT_STAPLING":  # Envoy's default
        cfg["ocsp_staple_policy"] = staple_policy
    return {"name": "envoy.transport_sockets.tls", "typed_config": cfg}


def upstream_tls(common: dict, sni: str) -> dict:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": UPSTREAM_TLS, "sni": sni, "common_tls_context": common},
    }


def http_manager(stat_prefix: str, route: dict | None = None, forward_client_cert: bool = False,
                 routes: list[dict] | None = None) -> dict:
    """`route`: the action for every path; `routes`: full route entries instead."""
    cfg = {
        "@type": HCM,
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "route_config": {"virtual_hosts": [{"name": stat_prefix, "domains": ["*"],
                                            "routes": routes or [{"match": {"prefix": "/"}, **(route or {})}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    if forward_client_cert:
        # The app learns the verified peer identity from x-forwarded-client-cert.
        cfg["forward_client_cert_details"] = "SANITIZE_SET"
        cfg["set_current_client_cert_details"] = {"uri": True, "subject": True}
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": cfg}


HANDSHAKE_TIMEOUT = "10s"


def listener(name: str, address: str, port: int, filters: list[dict], transport_socket: dict | None = None) -> dict:
    chain: dict = {"filters": filters}
    if transport_socket:
        chain["transport_socket"] = transport_socket
        # A peer that stalls its TLS handshake is cut off, not held for the idle timeout (an hour).
        chain["transport_socket_connect_timeout"] = HANDSHAKE_TIMEOUT
    return {
        "name": name,
        "address": {"socket_address": {"address": address, "port_value": port}},
        "filter_chains": [chain],
    }


def static_cluster(name: str, host: str, port: int, transport_socket: dict | None = None,
                   http2_reuse: bool = False, dns: bool = False, pipe: str | None = None) -> dict:
    """`pipe`: a Unix socket path instead of host and port."""
    address = {"pipe": {"path": pipe}} if pipe else {"socket_address": {"address": host, "port_value": port}}
    c: dict = {
        "name": name,
        "type": "STRICT_DNS" if dns else "STATIC",
        "connect_timeout": "2s",
        **({"dns_lookup_family": "V4_PREFERRED"} if dns else {}),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }
    if transport_socket:
        c["transport_socket"] = transport_socket
    if http2_reuse:
        # Negotiate h2 by ALPN when the peer offers it: one reused connection per upstream.
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_OPTIONS,
                "auto_config": {"http2_protocol_options": {}, "http_protocol_options": {}},
            }
        }
    return c


def admin(port: int) -> dict:
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}


def overload_manager(max_connections: int) -> dict:
    return {"resource_monitors": [{
        "name": "envoy.resource_monitors.global_downstream_max_connections",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3."
                     "DownstreamConnectionsConfig",
            "max_active_downstream_connections": max_connections}}]}


def admin_pipe(path: str) -> dict:
    # mode 0600: only Envoy's own user may connect, even where the volume is shared.
    return {"address": {"pipe": {"path": path, "mode": 0o600}}}


def _peer_matchers(peers: tuple[str, ...], trust_domain: str, namespace: str) -> list[dict]:
    if not peers:
        # Default: the pod's own namespace only; anything wider is an explicit allowed-peers.
        return san_matchers(spiffe_prefixes=[names.namespace_prefix(trust_domain, namespace)])
    return san_matchers(spiffe_ids=[p for p in peers if not p.endswith("*")],
                        spiffe_prefixes=[p[:-1] for p in peers if p.endswith("*")])


def inbound_trust_names(sel, cfg) -> dict[int, str]:
    """TLS port -> the validation context its listener asks the agent for. With the issuer as
    the source, each mTLS port has its own: the issuer adds the gateways that accepted claims
    send to that port (nobody lists them by hand; they leave when the claim does)."""
    if cfg.agent.source != "issuer" or not sel.mtls:
        return {}
    return {tls_port: names.inbound_trust(sel.trust_bundles[0], tls_port) for tls_port, _ in sel.inbound}


def pod_bootstrap(sel, cfg, admin_socket: str, agent_ready_path: str) -> dict:
    """The whole bootstrap of an injected pod's Envoy, from the selection and the config."""
    sds = sds_config(initial_fetch_timeout=cfg.proxy.initial_fetch_timeout)
    tls = dict(sds=sds, min_version=sel.tls_min_version, max_version=sel.tls_max_version,
               curves=sel.ecdh_curves, ciphers=sel.cipher_suites)
    cert, trust = sel.certificates[0], sel.trust_bundles[0]
    admin_cluster, agent_cluster = "envoy-admin", "sds-agent-health"
    # Kubelet probes reach the pod IP; admin (a Unix socket) and the agent (loopback) are not
    # reachable there: expose Envoy's /ready and the agent's /readyz alone.
    status_routes: list[dict] = [
        {"match": {"path": "/ready"}, "route": {"cluster": admin_cluster}},
        {"match": {"path": agent_ready_path}, "route": {"cluster": agent_cluster, "prefix_rewrite": "/readyz"}},
        {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
    ]
    listeners = [listener("status", "0.0.0.0", cfg.proxy.status_port,
                          [http_manager("status", routes=status_routes)])]
    clusters = [sds_cluster(f"{cfg.agent.socket_dir}/sds.sock"),
                static_cluster(admin_cluster, "", 0, pipe=admin_socket),
                static_cluster(agent_cluster, "127.0.0.1", cfg.agent.http_port)]
    inbound_trust = inbound_trust_names(sel, cfg)
    for tls_port, app_port in sel.inbound:
        common = common_tls(cert, inbound_trust.get(tls_port, trust) if sel.mtls else None,
                            _peer_matchers(sel.allowed_peers, cfg.agent.trust_domain, sel.namespace), alpn=["h2", "http/1.1"], **tls)
        app = f"app-{app_port}"
        if not any(c["name"] == app for c in clusters):
            clusters.append(static_cluster(app, "127.0.0.1", app_port))
        listeners.append(listener(
            f"inbound-{tls_port}", "0.0.0.0", tls_port,
            [http_manager(f"inbound_{tls_port}", {"route": {"cluster": app}}, forward_client_cert=sel.mtls)],
            downstream_tls(common, require_client_cert=sel.mtls, staple_policy=sel.ocsp_staple_policy)))
    for local, host, port, peer in sel.outbound:
        sans = san_matchers(list(peer.spiffe_ids), list(peer.spiffe_prefixes), list(peer.dns))
        name = f"outbound-{local}"
        clusters.append(static_cluster(name, host, port, upstream_tls(common_tls(cert, trust, sans, **tls), host.rstrip(".")),
                                       http2_reuse=True, dns=True))
        listeners.append(listener(name, "127.0.0.1", local,
                                  [http_manager(f"outbound_{local}", {"route": {"cluster": name}})]))
    return {
        "admin": admin_pipe(admin_socket),
        "overload_manager": overload_manager(cfg.proxy.max_downstream_connections),
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }
