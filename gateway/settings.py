"""The gateway agent's settings: every agent setting (source, rotation, Vault, issuer...) plus
what only the gateway has. Same SDS_* variables and flags as the agent."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sds_core.sds.fields import setting
from sds_core.sds.settings import AgentSettings


@dataclass(frozen=True)
class GatewaySettings(AgentSettings):
    gateway_address: str = "0.0.0.0"
    gateway_port: int = setting(8443, ge=1, le=65535, help="the tenants' TLS port")
    gateway_backend: str = setting("{service}.{namespace}.svc.{domain}",
                                 help="backend host template: {service}, {namespace}, {domain}")
    gateway_max_connections: int = setting(50_000, ge=1, help="upstream connections over all tenants "
                                         "(the backends cluster's circuit breakers); match Envoy's downstream limit")
    gateway_shards: int = setting(64, ge=1, le=4096, help="internal listeners the tenants are spread over: a "
                                  "tenant's change makes Envoy re-read one shard, not every tenant's chain")
    gateway_min_tls_version: Literal["TLSv1_2", "TLSv1_3"] = "TLSv1_2"
    gateway_handshake_timeout_seconds: float = setting(10, gt=0, help="a client must finish its TLS "
                                                     "handshake this long after its tenant was chosen by SNI")
    gateway_ocsp_staple_policy: Literal["LENIENT_STAPLING", "STRICT_STAPLING", "MUST_STAPLE"] = setting(
        "LENIENT_STAPLING", help="with SDS_OCSP_STAPLING (docs/ocsp.md)")
    gateway_ecdh_curves: list[str] = setting(factory=list, help="e.g. X25519MLKEM768,X25519")
    injector_config_file: Path | None = setting(None, help="the injector configuration (environments, "
                                              "business lines, namespacePolicy): the same file the webhook reads")
    kubeconfig: Path | None = setting(None, help="default: in-cluster credentials")
    claims_file: Path | None = setting(None, help="claims from a YAML/JSON file of ConfigMaps instead of "
                                     "the cluster (local runs); re-read when it changes")
    claims_file_poll_seconds: float = setting(1.0, gt=0, help="how often the claims file is checked")
    watch_seconds: int = setting(300, ge=1)
    debounce_seconds: float = setting(0.2, ge=0, help="changes within this window make one update")
    settle_seconds: float = setting(60, ge=0, help="at start, the first listener waits this long at most "
                                  "for every tenant's first certificate")
