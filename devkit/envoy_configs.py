"""Envoy configurations the agent tests run, built from the webhook's own bootstrap pieces."""
from __future__ import annotations

from pathlib import Path

from sds_core.envoy import bootstrap as b

HELLO = "hello from envoy"


def tls_server(socket: Path, port: int, cert: str, trust: str | None = None, sans: list[dict] = (),
               delta: bool = False, fetch_timeout: str = "0s", **tls) -> dict:
    """`tls`: common_tls parameters (versions, curves, ciphers)."""
    sds = b.sds_config(delta=delta, initial_fetch_timeout=fetch_timeout)
    common = b.common_tls(cert, trust, sans, sds, **tls)
    route = {"direct_response": {"status": 200, "body": {"inline_string": HELLO}}}
    return {"static_resources": {
        "clusters": [b.sds_cluster(str(socket))],
        "listeners": [b.listener("inbound", "127.0.0.1", port, [b.http_manager("inbound", route)],
                                 b.downstream_tls(common, require_client_cert=trust is not None))],
    }}


def mtls_client(socket: Path, port: int, upstream_port: int, cert: str, trust: str,
                sans: list[dict], sni: str = "localhost", **tls) -> dict:
    """A plain-HTTP listener on `port` whose upstream is reached over mTLS with SDS secrets."""
    common = b.common_tls(cert, trust, sans, **tls)
    upstream = b.static_cluster("upstream", "127.0.0.1", upstream_port, b.upstream_tls(common, sni))
    route = {"route": {"cluster": "upstream"}}
    return {"static_resources": {
        "clusters": [b.sds_cluster(str(socket)), upstream],
        "listeners": [b.listener("outbound", "127.0.0.1", port, [b.http_manager("outbound", route)])],
    }}
