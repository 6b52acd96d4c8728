"""The gateway agent's settings: every agent setting (source, rotation, Vault, issuer...) plus
what only the gateway has. Same SDS_* variables and flags as the agent."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from sds_core.sds.settings import AgentSettings, NameList, _split
from pydantic import field_validator


class GatewaySettings(AgentSettings):
    gateway_address: str = "0.0.0.0"
    gateway_port: int = Field(8443, ge=1, le=65535, description="the tenants' TLS port")
    gateway_backend: str = Field("{service}.{namespace}.svc.{domain}",
                                 description="backend host template: {service}, {namespace}, {domain}")
    gateway_max_connections: int = Field(50_000, ge=1, description="upstream connections over all tenants "
                                         "(the backends cluster's circuit breakers); match Envoy's downstream limit")
    gateway_min_tls_version: Literal["TLSv1_2", "TLSv1_3"] = "TLSv1_2"
    gateway_handshake_timeout_seconds: float = Field(10, gt=0, description="a client must finish its TLS "
                                                     "handshake this long after its tenant was chosen by SNI")
    gateway_ocsp_staple_policy: Literal["LENIENT_STAPLING", "STRICT_STAPLING", "MUST_STAPLE"] = Field(
        "LENIENT_STAPLING", description="with SDS_OCSP_STAPLING (docs/ocsp.md)")
    gateway_ecdh_curves: NameList = Field(default_factory=list, description="e.g. X25519MLKEM768,X25519")
    injector_config_file: Path | None = Field(None, description="the injector configuration (environments, "
                                              "business lines, namespacePolicy): the same file the webhook reads")
    kubeconfig: Path | None = Field(None, description="default: in-cluster credentials")
    claims_file: Path | None = Field(None, description="claims from a YAML/JSON file of ConfigMaps instead of "
                                     "the cluster (local runs); re-read when it changes")
    watch_seconds: int = Field(300, ge=1)
    debounce_seconds: float = Field(0.2, ge=0, description="changes within this window make one update")
    settle_seconds: float = Field(60, ge=0, description="at start, the first listener waits this long at most "
                                  "for every tenant's first certificate")

    _split_curves = field_validator("gateway_ecdh_curves", mode="before")(lambda cls, v: _split(v))
