"""Tenants in shards, so that one tenant's arrival touches a few hundred filter chains, not all.

Envoy re-reads a whole listener for any change to it: with one listener of 10,000 tenants'
chains, adding one tenant cost ~4 s. Here the public listener holds no tenant: it reads the SNI
(tls_inspector) and a domain matcher sends the still-encrypted connection to the shard that
serves the name, an internal listener (no port, no socket) with the TLS chains of its tenants
only. A tenant's change rewrites the matcher (a list of names: cheap to read, and a matcher-only
change drains no connection) and its one shard; every other shard's listener is left alone.

Shards are fixed by a hash of the claim (namespace/name), so a tenant stays in its shard across
restarts and changes of others. An SNI no tenant owns matches nothing: the connection is closed
before any certificate is chosen (`no_filter_chain_match` on the public listener)."""
from __future__ import annotations

import hashlib

from google.protobuf import json_format, wrappers_pb2

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2
from xds.type.matcher.v3 import domain_pb2

from .envoy import BUFFER_LIMIT, LISTENER_NAME, TLS_INSPECTOR

from sds_core.policy.claims import Claim

INTERNAL_LISTENERS = {"name": "envoy.bootstrap.internal_listener", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"}}


def shard_of(t: Claim, shards: int) -> int:
    return int.from_bytes(hashlib.sha256(t.key.encode()).digest()[:4], "big") % shards


def shard_name(k: int) -> str:
    return f"{LISTENER_NAME}-shard-{k}"


def shard_listener(k: int, chains: list[listener_components_pb2.FilterChain]) -> listener_pb2.Listener:
    """Shard `k`: an internal listener with its tenants' TLS chains, matched by SNI as before."""
    out = json_format.ParseDict({
        "name": shard_name(k),
        "internal_listener": {},
        "listener_filters": [TLS_INSPECTOR],
        "listener_filters_timeout": "5s",
        "per_connection_buffer_limit_bytes": BUFFER_LIMIT,
    }, listener_pb2.Listener())
    out.filter_chains.extend(sorted(chains, key=lambda c: c.name))
    return out


def shard_cluster(k: int, max_connections: int) -> cluster_pb2.Cluster:
    """How the public listener reaches shard `k`: its internal address."""
    limits = {"max_connections": max_connections, "max_pending_requests": max_connections,
              "max_requests": max_connections}
    return json_format.ParseDict({
        "name": shard_name(k),
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": shard_name(k), "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"envoy_internal_address": {"server_listener_name": shard_name(k)}}}}]}]},
        "circuit_breakers": {"thresholds": [limits]},
        "per_connection_buffer_limit_bytes": BUFFER_LIMIT,
    }, cluster_pb2.Cluster())


def _pass_to(k: int) -> dict:
    return {"name": shard_name(k), "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": shard_name(k).replace("-", "_"), "cluster": shard_name(k)}}]}


def dispatcher(hostnames: dict[int, list[str]], address: str, port: int) -> listener_pb2.Listener:
    """The public listener: SNI -> the shard serving it (exact names and `*.` wildcards, the most
    specific first, as the chains' own `server_names` match). `hostnames`: shard -> its names."""
    out = json_format.ParseDict({
        "name": LISTENER_NAME,
        "address": {"socket_address": {"address": address, "port_value": port}},
        "listener_filters": [TLS_INSPECTOR],
        # A client that never sends its ClientHello is dropped, not held.
        "listener_filters_timeout": "5s",
        "per_connection_buffer_limit_bytes": BUFFER_LIMIT,
        "filter_chains": [_pass_to(k) for k in sorted(hostnames)],
    }, listener_pb2.Listener())
    names = domain_pb2.ServerNameMatcher()
    for k, hosts in sorted(hostnames.items()):
        d = names.domain_matchers.add()
        d.domains.extend(sorted(hosts))
        d.on_match.action.name = shard_name(k)
        d.on_match.action.typed_config.Pack(wrappers_pb2.StringValue(value=shard_name(k)))
    tree = out.filter_chain_matcher.matcher_tree
    tree.input.name = "server_name"
    tree.input.typed_config.Pack(network_inputs_pb2.ServerNameInput())
    tree.custom_match.name = "server_names"
    tree.custom_match.typed_config.Pack(names)
    return out
