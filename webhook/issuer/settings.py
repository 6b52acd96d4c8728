"""The issuer's own settings (flags or ISSUER_* variables), read once at start-up."""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .audit import load_key


class IssuerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ISSUER_", extra="forbid", cli_kebab_case=True)

    host: str = "0.0.0.0"
    port: int = Field(15012, ge=1, le=65535)
    # /inventory and /metrics name every pod, SPIFFE ID, serial and hostname: never on the port
    # the whole pod network reaches; the chart's NetworkPolicy admits scrapers only to this one.
    ops_port: int = Field(15014, ge=0, le=65535, description="/inventory and /metrics (HTTPS, same certificate); "
                          "0: not served")
    cert_file: Path = Field(description="serving certificate (the chart reuses the webhook's)")
    crl: bool = Field(False, description="trust bundles carry a CRL per CA of the serials revoked by serial "
                      "(for peers that check CRLs; identity revocations are OCSP's)")
    ca_publish_seconds: float = Field(30, gt=0, description="how often the serving CA file is re-read and published "
                                      "(every tenth round re-checks each namespace's copy: edits are undone)")
    serving_ca_file: Path | None = Field(None, description="the CA of the serving certificate: published to every "
                                         "namespace labelled sds-injector.io/injection=enabled as ConfigMap "
                                         "agent.issuer.caConfigMap, which agents mount (re-read on change)")
    key_file: Path
    config: Path | None = Field(None, description="injector configuration: environments, naming, policy")
    namespace: str = Field("sds-system", description="release namespace: where the CA Secret lives")
    ca_secret: str = "sds-injector-ca"
    ca_mode: Literal["self", "plugin", "vault"] = Field("self", description="self: the issuer makes and rotates its "
                                                        "CAs in ca_secret; plugin: the operator's intermediates in "
                                                        "ca_plugin_secret; vault: Vault/OpenBao PKI signs "
                                                        "(docs/issuer.md)")
    vault_address: str = Field("", description="vault mode: https://vault.example:8200")
    vault_pki_path: str = Field("pki_{ca}/sign/sds-injector", description="vault mode: <mount>/sign/<role>, {ca} = "
                                "each signing CA of the layout (prod, prod-edge, prod--retail)")
    vault_ca_cert: Path | None = Field(None, description="vault mode: CA of Vault's TLS certificate")
    vault_token_file: Path | None = Field(None, description="vault mode: a token file (Vault Agent), re-read at login")
    vault_auth_role: str = Field("", description="vault mode: Kubernetes auth role for the issuer's service account")
    vault_auth_mount: str = "kubernetes"
    vault_timeout_seconds: float = Field(5, gt=0)
    ca_plugin_secret: str = Field("sds-injector-plugin-ca", description="plugin mode: per signing CA <name>.crt, "
                                  "<name>.key (optional <name>.chain.crt, <name>.bundle.crt) and root.crt, no root key")
    audience: str = Field("sds-injector", description="audience the agents' projected tokens must carry")
    token_verifier: Literal["tokenreview", "jwks"] = "tokenreview"
    jwks_issuer: str | None = Field(None, description="expected `iss` (jwks: default OIDC discovery's; tokenreview: "
                                     "checked before the review when set)")
    kubeconfig: Path | None = Field(None, description="default: in-cluster credentials")
    audit_file: Path | None = None
    audit_key_file: Path | None = Field(None, description="Ed25519 private key (PEM; `python -m webhook audit "
                                        "keygen`) that signs audit checkpoints; keep its public key off the cluster")
    audit_checkpoint_records: int = Field(100, ge=1, description="a signed checkpoint at least every this many "
                                          "records")
    audit_checkpoint_seconds: float = Field(60, gt=0, description="and every this many seconds while records come")
    replica: str = Field(default_factory=socket.gethostname, description="tags this replica's audit chain")
    cert_ttl_seconds: int = Field(3600, ge=300, le=90 * 86400)
    api_refused_seconds: float = Field(10, gt=0, description="unready once the API server has refused the "
                                       "issuer's credentials (401/403) this long, ready again at its first success")
    pod_issuance_per_minute: float = Field(20, gt=0, description="certificates one pod may get per minute, "
                                           "sustained (token bucket per pod uid); beyond: 429 with Retry-After")
    pod_issuance_burst: int = Field(20, ge=1, description="certificates one pod may get at once")
    source_refusals_per_minute: float = Field(5, gt=0, description="tokens the API server refused that one source "
                                              "address may send per minute, sustained; beyond, 429 without a review")
    source_refusals_burst: int = Field(5, ge=1, description="... and at once")
    max_dns_names: int = Field(100, ge=2, le=3000, description="DNS SANs one certificate may carry (2 per "
                               "Service selecting the pod); a pod selected by more Services is refused")
    pod_cidrs: list[str] = Field(default_factory=list, description="the cluster's pod CIDRs (JSON list): workload "
                                 "CAs then may sign no IP address outside them (X.509 name constraints)")
    gateway_identities: list[str] = Field(default_factory=list, description="namespace/serviceaccount of "
                                          "gateways that may get tenants' certificates (JSON list)")
    # Environment CA rotation (authority.Rotation): a next CA joins the bundles this long before
    # the current one expires, signs after the propagation delay (agents re-read bundles every
    # 5 min), and the old one stays trusted for the overlap.
    ca_lifetime_days: float = Field(365, gt=0)
    ca_rotate_before_seconds: float = Field(30 * 86400, gt=0)
    ca_propagation_seconds: float = Field(900, ge=0)
    ca_overlap_seconds: float = Field(48 * 3600, ge=0)
    ca_refresh_seconds: float = Field(60, gt=0, description="re-read the CA Secret (other replicas' rotations)")
    log_level: str = "INFO"

    @field_validator("audit_key_file")
    @classmethod
    def _audit_key_loads(cls, path: Path | None) -> Path | None:
        if path is not None:
            load_key(path)  # a wrong file is a start-up error, not a failure at the first checkpoint
        return path
