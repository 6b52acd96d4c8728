"""Typed configuration of the SDS agent: one frozen dataclass read once at start-up from
`--kebab-case` flags and SDS_* variables (flags win); the webhook writes the same names into the
pod (agent_env below). Standard library only (sds_core/sds/fields.py): no settings framework on
the per-pod agent's path."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from sds_core import names

from .fields import Secret, Settings, SettingsError, setting

SourceKind = Literal["issuer", "local-ca", "files", "vault", "aws"]
__all__ = ["AgentSettings", "Secret", "SettingsError", "SourceKind", "agent_env", "agent_field_env", "default",
           "env_name", "env_value"]


@dataclass(frozen=True)
class AgentSettings(Settings):
    ENV_PREFIX: ClassVar[str] = "SDS_"

    socket_path: Path = Path("/var/run/sds/sds.sock")
    socket_mode: str = setting("0660", pattern=r"^0?[0-7]{3}$", help="octal file mode of the socket")
    http_host: str = "127.0.0.1"
    http_port: int = setting(15090, ge=0, le=65535, help="health/metrics port; 0 disables it")

    source: SourceKind = "local-ca"
    certificates: list[str] = setting(factory=list, help="tls_certificate names to serve")
    trust_bundles: list[str] = setting(factory=list, help="validation_context names to serve")
    certificates_file: Path | None = setting(None, help="more tls_certificate names, one per line "
                                           "(a gateway's tenant list: too long for an environment variable)")
    source_overrides: dict[str, SourceKind] = setting(factory=dict, help="name -> source")
    serve_as: dict[str, str] = setting(factory=dict, help="name -> the name Envoy asks for (Istio "
                                     "mode: the certificate as `default`, the trust bundle as `ROOTCA`)")

    # Pod identity (downward API in a pod).
    namespace: str = "default"
    service_account: str = "default"
    pod_name: str = ""
    service: str = ""
    env: str = ""
    business_line: str = ""
    trust_domain: str = "cluster.local"
    # Where the cluster's Service names end (svc.<cluster domain>): not the trust domain, which
    # names SPIFFE IDs and need not be a DNS suffix at all.
    cluster_domain: str = "cluster.local"
    dns_names: list[str] = setting(factory=list)

    # Rotation: renew when the remaining lifetime falls below min(fraction*lifetime, floor),
    # jittered: half-life for short-lived certificates, 7 days before expiry for long-lived ones.
    rotation_fraction: float = setting(0.5, gt=0, lt=1)
    rotation_jitter: float = setting(0.1, ge=0, lt=0.5)
    rotation_floor_seconds: float = setting(7 * 86400, ge=0, help="0: fraction only")
    min_refresh_seconds: float = setting(1.0, gt=0)
    static_refresh_seconds: float = setting(300, gt=0, help="re-read of sources that do not issue")
    retry_initial_seconds: float = setting(0.5, gt=0)
    retry_max_seconds: float = setting(60, gt=0)

    # issuer source: the key pair is made here, in memory; only a CSR and the token leave.
    issuer_address: str = setting("", help="https://<service>.<namespace>.svc:15012")
    issuer_ca: str = setting("", help="PEM of the CA of the issuer's serving certificate")
    issuer_ca_file: Path | None = None
    issuer_token_file: Path = Path("/var/run/secrets/sds-injector/token")  # projected SA token
    issuer_timeout_seconds: float = setting(5.0, gt=0)
    key_type: Literal["ec", "rsa"] = "ec"

    # local-ca source
    local_ca_cert_file: Path | None = None
    local_ca_key_file: Path | None = None
    local_ca_cert_ttl_seconds: float = setting(3600, gt=1)
    local_ca_bundle_name_suffix: str = ""

    # files source
    files_root: Path = Path("/etc/sds/certs")
    files_poll_seconds: float = setting(0.05, gt=0)

    # vault source
    vault_addresses: list[str] = setting(factory=list, help="ordered: primary first")
    vault_auth: Literal["kubernetes", "token"] = "kubernetes"
    vault_auth_mount: str = "kubernetes"
    vault_role: str = "{namespace}-{service_account}"
    vault_token_file: Path = Path("/var/run/secrets/sds-injector/token")  # projected SA token (JWT)
    vault_token: Secret | None = None  # token auth, for local use
    vault_ca_cert: str = setting("", help="CA of Vault's TLS certificate: a file path or the PEM itself")
    vault_allow_http: bool = setting(False, help="allow http:// addresses (development only)")
    vault_timeout_seconds: float = setting(0.5, gt=0)
    vault_down_seconds: float = setting(5.0, gt=0, help="how long a failed address is skipped")
    vault_mode: Literal["kv", "pki"] = "pki"
    vault_kv_mount: str = "secret"
    vault_kv_path: str = "{namespace}/{name}"
    vault_kv_cert_field: str = "certificate"
    vault_kv_key_field: str = "private_key"
    vault_kv_ca_field: str = "ca_chain"
    # Each round costs the CA chain and one CRL per issuer (or a KV metadata read) on Vault, about
    # 1.5-2.5 ms of Vault CPU each (measured on OpenBao): 600 s keeps 5,000 agents under 10 % of
    # one Vault core (6.4 %, 8.8 % during a CA rollover; 300 s: 10.5 %, 13.5 %). It also bounds how
    # long a revocation or a new KV version takes to arrive: lower it where Vault has headroom.
    vault_poll_seconds: float = setting(600.0, gt=0, help="KV versions, CRL and CA chain checks (jittered)")
    vault_pki_path: str = "pki_{business_line}/sign/{env}"  # sign: our CSR; issue: Vault makes the key
    vault_pki_ttl: str = "24h"
    vault_ca_overlap_seconds: float = setting(48 * 3600, ge=0, help="old CA kept after a rollover")
    vault_crl: bool = setting(False, help="serve the PKI CRL in validation contexts")

    # AWS source (sources/aws.py): Secrets Manager entries (KMS-encrypted) or AWS Private CA.
    # Credentials by boto3's standard chain: on EKS, IRSA's projected web-identity token.
    aws_mode: Literal["secretsmanager", "pca"] = "secretsmanager"
    aws_regions: list[str] = setting(factory=list, help="ordered: primary first; the next on an outage or "
                                   "throttling (default: the SDK's region)")
    aws_endpoint_urls: list[str] = setting(factory=list, help="one per region (VPC endpoints, emulators); "
                                         "default: the public endpoints")
    aws_secret_id: str = setting("{namespace}/{name}", help="Secrets Manager secret name or ARN template")
    aws_poll_seconds: float = setting(300.0, gt=0, help="new secret versions (AWSCURRENT) checked this often")
    aws_pca_arn: str = setting("", help="the Private CA's ARN (a template: {env}, {business_line}...)")
    aws_pca_validity_days: int = setting(1, ge=1, le=825)
    aws_pca_signing_algorithm: str = "SHA256WITHECDSA"
    aws_timeout_seconds: float = setting(2.0, gt=0)
    aws_down_seconds: float = setting(5.0, gt=0, help="how long a failed region is skipped")

    # OCSP stapling (issuer and Vault PKI sources): each certificate is served with a fresh
    # response from its CA's responder; a "revoked" answer replaces the certificate at once.
    ocsp_stapling: bool = False
    ocsp_poll_seconds: float = setting(300, gt=0, help="re-ask at least this often (and at half the "
                                     "time to nextUpdate): bounds how long a revocation goes unseen")

    log_level: str = "INFO"

    def validate(self) -> None:
        if self.certificates_file is not None:
            try:
                lines = self.certificates_file.read_text().splitlines()
            except OSError as e:
                raise ValueError(f"certificates_file {self.certificates_file}: {e.strerror}") from None
            extra = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
            object.__setattr__(self, "certificates", list(dict.fromkeys([*self.certificates, *extra])))
        unknown = set(self.serve_as) - set(self.certificates) - set(self.trust_bundles)
        if unknown:
            raise ValueError(f"serve_as names no configured certificate or trust bundle: {sorted(unknown)}")
        both = set(self.certificates) & set(self.trust_bundles)
        if both:
            raise ValueError(f"names listed as both certificate and trust bundle: {sorted(both)}")
        served = [self.serve_as.get(n, n) for n in [*self.certificates, *self.trust_bundles]]
        if len(set(served)) != len(served):
            raise ValueError("serve_as makes two secrets share one name")
        if (self.local_ca_cert_file is None) != (self.local_ca_key_file is None):
            raise ValueError("local_ca_cert_file and local_ca_key_file go together")

    def dns_sans(self) -> list[str]:
        services = [self.service] if self.service else []
        return list(dict.fromkeys([*self.dns_names, *names.workload_dns_names(services, self.namespace,
                                                                                self.cluster_domain)]))

    def template_values(self, name: str = "") -> dict[str, str]:
        """What path, role and name templates may use."""
        return dict(namespace=self.namespace, service_account=self.service_account, service=self.service,
                    env=self.env, business_line=self.business_line, name=name, pod=self.pod_name)

    @property
    def socket_mode_int(self) -> int:
        return int(self.socket_mode, 8)

    def source_for(self, name: str) -> SourceKind:
        return self.source_overrides.get(name, self.source)

    @property
    def spiffe_id(self) -> str:
        return names.spiffe_id(self.trust_domain, self.namespace, self.service_account)


# --- the pod's side of the interface: how the webhook writes these settings into a pod -------
ENV_PREFIX = AgentSettings.ENV_PREFIX
_NAMES = frozenset(AgentSettings.names())


def env_name(field: str) -> str:
    """The variable that sets `field`; a name that is not a setting is a bug, raised at once."""
    if field not in _NAMES:
        raise KeyError(f"{field!r} is not an agent setting")
    return ENV_PREFIX + field.upper()


def env_value(value: object) -> str:
    """A setting as the agent parses it back: lists comma-separated, maps as compact JSON,
    booleans lowercase."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def agent_env(**settings: object) -> list[dict]:
    """Container env entries that give the agent these settings (in this order)."""
    return [{"name": env_name(k), "value": env_value(v)} for k, v in settings.items()]


def agent_field_env(field: str, field_path: str) -> dict:
    """An env entry filled by the downward API (the pod's own namespace, name, account)."""
    return {"name": env_name(field), "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def default(field: str):
    """The agent's default for `field`: what the webhook's configuration starts from too."""
    return AgentSettings.default(field)
