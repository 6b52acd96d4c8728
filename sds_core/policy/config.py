"""Typed injector configuration: a YAML file (mounted from a ConfigMap) merged over defaults,
plus WEBHOOK_* environment variables for the server itself. Re-read when the file changes."""
from __future__ import annotations

import fnmatch
import re
from functools import cached_property
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sds_core.sds.settings import default as agent_default

PREFIX = "sds-injector.io/"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Resources(Strict):
    """None unsets a value: nothing is written for it (vault-k8s #227: defaults that cannot be unset)."""

    cpu_request: str | None = Field("50m", alias="cpuRequest")
    memory_request: str | None = Field("64Mi", alias="memoryRequest")
    cpu_limit: str | None = Field(None, alias="cpuLimit")
    memory_limit: str | None = Field("256Mi", alias="memoryLimit")


class Images(Strict):
    envoy: str = "envoyproxy/envoy:v1.40.0"
    agent: str = "ghcr.io/sds-injector/sds-injector:0.1.0"
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field("IfNotPresent", alias="pullPolicy")


class Naming(Strict):
    """Templates over {service}, {env}, {business_line}, {namespace}."""

    certificate: str = "{service}-{env}-cert"
    trust_bundle: str = Field("{env}-trust-bundle", alias="trustBundle")


class BusinessLine(Strict):
    certificate: str | None = None  # overrides naming.certificate, e.g. "{business_line}-service-cert"
    trust_bundle: str | None = Field(None, alias="trustBundle")
    # With businessLineCAs: the other business lines whose certificates this one's pods accept
    # (by default only their own).
    trusts: list[str] = Field(default_factory=list)


class LabelSelector(Strict):
    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items())


_HOSTNAME_PATTERN = re.compile(r"^(\*\.)?([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class PolicyRule(Strict):
    """Which namespaces (names, globs allowed, or a label selector) may use what."""

    namespaces: list[str] = Field(default_factory=list)
    namespace_selector: LabelSelector | None = Field(None, alias="namespaceSelector")
    environments: list[str] = Field(default_factory=lambda: ["*"])
    business_lines: list[str] = Field(default_factory=lambda: ["*"], alias="businessLines")
    # By default a pod may only have the names the naming templates give its own (allowed)
    # environment and business line. A rule that lists names or prefixes allows exactly those.
    certificate_prefixes: list[str] = Field(default_factory=list, alias="certificatePrefixes")
    certificates: list[str] = Field(default_factory=list)
    trust_bundles: list[str] = Field(default_factory=list, alias="trustBundles")
    # Gateway hostnames these namespaces may claim (docs/gateway.md): "shop.example.com", or
    # "*.shop.example.com" for every name below it (wildcard claims included), or "*" for any.
    # None by default: with "*" the first namespace to claim a name would own it, whoever that is.
    gateway_hostnames: list[str] = Field(default_factory=list, alias="gatewayHostnames")

    @model_validator(mode="after")
    def _has_target(self):
        if not self.namespaces and self.namespace_selector is None:
            raise ValueError("a policy rule needs namespaces or namespaceSelector")
        return self

    @model_validator(mode="after")
    def _hostname_patterns(self):
        bad = [p for p in self.gateway_hostnames if p != "*" and not _HOSTNAME_PATTERN.match(p)]
        if bad:
            raise ValueError(f"gatewayHostnames {bad}: each is a lowercase DNS name, '*.' and a DNS name, or '*'")
        return self

    def allows_hostname(self, hostname: str) -> bool:
        return any(p == "*" or p == hostname or (p.startswith("*.") and hostname.endswith(p[1:]))
                   for p in self.gateway_hostnames)

    def matches(self, namespace: str, labels: dict[str, str] | None) -> bool:
        if any(fnmatch.fnmatchcase(namespace, p) for p in self.namespaces):
            return True
        return self.namespace_selector is not None and labels is not None and self.namespace_selector.matches(labels)

    @staticmethod
    def allows(patterns: list[str], value: str) -> bool:
        return any(fnmatch.fnmatchcase(value, p) for p in patterns)

    def allows_certificate(self, name: str, template: str) -> bool:
        if not self.certificates and not self.certificate_prefixes:
            return name == template
        return name in self.certificates or any(name.startswith(p) for p in self.certificate_prefixes)

    def allowed_certificates(self, template: str) -> list[str]:
        listed = [f"{p}*" for p in self.certificate_prefixes] + self.certificates
        return listed or [template]

    def allows_trust_bundle(self, name: str, template: str) -> bool:
        return name in self.trust_bundles if self.trust_bundles else name == template


class NamespacePolicy(Strict):
    # Secure by default: prod certificates only where a rule grants them.
    rules: list[PolicyRule] = Field(default_factory=lambda: [
        PolicyRule(namespaces=["*"], environments=["dev", "staging"])])

    @property
    def uses_labels(self) -> bool:
        return any(r.namespace_selector is not None for r in self.rules)


# The pod-side defaults are the agent's own (one definition: sds_core/sds/settings.py).
class VaultAgentConfig(Strict):
    addresses: list[str] = Field(default_factory=list)
    ca_cert: str = Field("", alias="caCert")  # PEM of the CA of Vault's TLS certificate (public)
    auth_mount: str = Field(agent_default("vault_auth_mount"), alias="authMount")
    role: str = agent_default("vault_role")
    mode: Literal["kv", "pki"] = agent_default("vault_mode")
    kv_mount: str = Field(agent_default("vault_kv_mount"), alias="kvMount")
    kv_path: str = Field(agent_default("vault_kv_path"), alias="kvPath")
    pki_path: str = Field(agent_default("vault_pki_path"), alias="pkiPath")
    pki_ttl: str = Field(agent_default("vault_pki_ttl"), alias="pkiTTL")
    crl: bool = agent_default("vault_crl")
    poll_seconds: int = Field(int(agent_default("vault_poll_seconds")), alias="pollSeconds", gt=0)
    ca_overlap_seconds: int = Field(int(agent_default("vault_ca_overlap_seconds")), alias="caOverlapSeconds")
    token_audience: str = Field("vault", alias="tokenAudience")


class AwsAgentConfig(Strict):
    """Source `aws` (docs/aws.md): Secrets Manager entries or AWS Private CA."""

    mode: Literal["secretsmanager", "pca"] = agent_default("aws_mode")
    regions: list[str] = Field(default_factory=list)  # primary first
    endpoint_urls: list[str] = Field(default_factory=list, alias="endpointURLs")  # one per region, optional
    secret_id: str = Field(agent_default("aws_secret_id"), alias="secretId")
    poll_seconds: int = Field(int(agent_default("aws_poll_seconds")), alias="pollSeconds", gt=0)
    # Templates with {env}, {business_line}, {namespace}, {service_account}: one CA per environment.
    pca_arn: str = Field("", alias="pcaARN")
    pca_validity_days: int = Field(agent_default("aws_pca_validity_days"), alias="pcaValidityDays", ge=1)
    # IRSA done by the injector: the role (a template as above) and a projected token of this
    # audience for the agent alone. Empty: rely on EKS's pod identity webhook instead.
    role_arn: str = Field("", alias="roleARN")
    token_audience: str = Field("sts.amazonaws.com", alias="tokenAudience")


class IssuerAgentConfig(Strict):
    """How agents reach the issuer (source `issuer`)."""

    address: str = "https://sds-injector.sds-system.svc:15012"
    token_audience: str = Field("sds-injector", alias="tokenAudience")
    # The ConfigMap (key ca.crt) the issuer keeps in every enabled namespace with the CA of its
    # serving certificate: agents mount it and re-read it when it changes, so nothing CA-related
    # is written into pod specs and rotating the serving certificate restarts no pod.
    ca_config_map: str = Field("sds-injector-issuer-ca", alias="caConfigMap", min_length=1)
    key_type: Literal["ec", "rsa"] = Field(agent_default("key_type"), alias="keyType")


class AgentConfig(Strict):
    source: Literal["issuer", "local-ca", "files", "vault", "aws"] = "issuer"
    trust_domain: str = Field(agent_default("trust_domain"), alias="trustDomain")
    # The cluster's DNS suffix (svc.<clusterDomain>): DNS SANs and which outbound hosts are
    # in-cluster names. Not the trust domain, though both default to cluster.local.
    cluster_domain: str = Field(agent_default("cluster_domain"), alias="clusterDomain")
    # local-ca is for local runs (demo, tests) only: a Secret named here holds a CA *key* and is
    # mounted into every pod. Never in a cluster: use the issuer.
    local_ca_secret: str | None = Field(None, alias="localCASecret")
    cert_ttl_seconds: int = Field(int(agent_default("local_ca_cert_ttl_seconds")), alias="certTTLSeconds")
    socket_dir: str = Field(str(agent_default("socket_path").parent), alias="socketDir")
    http_port: int = Field(agent_default("http_port"), alias="httpPort")
    # Staple an OCSP response to every certificate (issuer and Vault PKI sources); on for a pod
    # anyway when its staple policy is strict.
    ocsp_stapling: bool = Field(False, alias="ocspStapling")
    issuer: IssuerAgentConfig = Field(default_factory=IssuerAgentConfig)
    vault: VaultAgentConfig = Field(default_factory=VaultAgentConfig)
    aws: AwsAgentConfig = Field(default_factory=AwsAgentConfig)
    # Unset: the request follows the source's measured footprint (AGENT_MEMORY_REQUEST).
    resources: Resources = Field(default_factory=lambda: _agent_resources("issuer"))

    @model_validator(mode="before")
    @classmethod
    def _resources_of_source(cls, data: object) -> object:
        if isinstance(data, dict) and "resources" not in data:
            return {**data, "resources": _agent_resources(str(data.get("source", "issuer")))}
        return data


# Measured (docs/benchmarks.md, agent diet 2026-12-04): 26 MB private dirty, 56 MB RSS serving two
# names with the issuer or local CA; the Vault source loads hvac and requests, ~32 MB private. The
# request covers the private part (what the pod costs the node beyond shared pages) with headroom
# for renewals; it was 48Mi when the agent carried pydantic and uvicorn (36.5 MB private).
# The AWS source loads boto3 and botocore: 55 MB private, 84 MB RSS serving two names from
# Secrets Manager (local CA in the same run: 25 / 54 MB; docs/aws.md).
AGENT_MEMORY_REQUEST = {"vault": "40Mi", "aws": "64Mi"}
AGENT_MEMORY_LIMIT = {"aws": "128Mi"}


def _agent_resources(source: str) -> Resources:
    return Resources(cpu_request="10m", memory_request=AGENT_MEMORY_REQUEST.get(source, "32Mi"),
                     memory_limit=AGENT_MEMORY_LIMIT.get(source, "96Mi"))


class ProxyConfig(Strict):
    # Envoy's admin listens on a Unix socket in a volume only Envoy mounts (the app cannot reach
    # /quitquitquit); the status port exposes /ready alone.
    status_port: int = Field(15021, alias="statusPort")
    concurrency: int = 2
    # One client must not exhaust the proxy: beyond this many open downstream connections
    # (all listeners together) Envoy refuses new ones.
    max_downstream_connections: int = Field(1024, alias="maxDownstreamConnections", gt=0)
    # Key-exchange groups of every TLS context unless a pod's ecdh-curves annotation says otherwise;
    # empty: Envoy's defaults. E.g. [X25519MLKEM768, X25519] for hybrid post-quantum first.
    ecdh_curves: list[str] = Field(default_factory=list, alias="ecdhCurves")
    # Inbound listeners' OCSP staple policy unless a pod's ocsp-staple-policy annotation says
    # otherwise (docs/ocsp.md).
    ocsp_staple_policy: Literal["LENIENT_STAPLING", "STRICT_STAPLING", "MUST_STAPLE"] = Field(
        "LENIENT_STAPLING", alias="ocspStaplePolicy")
    uid: int = 101
    resources: Resources = Field(default_factory=Resources)
    initial_fetch_timeout: str = Field("0s", alias="initialFetchTimeout")
    log_level: str = Field("warning", alias="logLevel")


class InjectorConfig(Strict):
    native_sidecars: bool = Field(True, alias="nativeSidecars")
    images: Images = Field(default_factory=Images)
    naming: Naming = Field(default_factory=Naming)
    environments: list[str] = Field(default_factory=lambda: ["prod", "staging", "dev"])
    default_environment: str | None = Field(None, alias="defaultEnvironment")
    # A namespace label only the operator sets (tenants with `edit` cannot change namespaces):
    # its value is the namespace's environment, or several joined by "." (the first is the
    # default). A pod without an env annotation gets it; an annotation may only choose among
    # them. null: annotations (and defaultEnvironment) alone.
    namespace_environment_label: str | None = Field(f"{PREFIX}env", alias="namespaceEnvironmentLabel")
    business_lines: dict[str, BusinessLine] = Field(
        default_factory=lambda: {"retail": BusinessLine(), "corporate": BusinessLine()}, alias="businessLines")
    namespace_policy: NamespacePolicy = Field(default_factory=NamespacePolicy, alias="namespacePolicy")
    system_namespaces: list[str] = Field(
        default_factory=lambda: ["kube-system", "kube-public", "kube-node-lease"], alias="systemNamespaces")
    sidecar_group: int = Field(1337, alias="sidecarGroup")
    # One intermediate per business line under each environment's CA (the issuer signs with it,
    # and a pod's trust bundle holds its own business line's, plus those it `trusts`): a retail
    # certificate then fails a corporate handshake. Off: one CA per environment.
    business_line_cas: bool = Field(False, alias="businessLineCAs")
    agent: AgentConfig = Field(default_factory=AgentConfig)
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)

    @model_validator(mode="after")
    def _check(self):
        if self.default_environment and self.default_environment not in self.environments:
            raise ValueError(f"defaultEnvironment {self.default_environment!r} is not in environments")
        unknown = {f"{bl} -> {t}" for bl, line in self.business_lines.items() for t in line.trusts
                   if t not in self.business_lines}
        if unknown:
            raise ValueError(f"businessLines ... trusts names unknown business lines: {sorted(unknown)}")
        return self

    @property
    def needs_namespace_labels(self) -> bool:
        return self.namespace_policy.uses_labels or self.namespace_environment_label is not None

    @cached_property  # the config is frozen; hashing its dump on every admission would dominate
    def revision(self) -> str:
        """Identifies what this config injects: a pod injected under another revision is redone.
        Gateway hostnames and the CA layout inject nothing: changing them must not redo every pod."""
        dump = self.model_dump_json(exclude={"namespace_policy": {"rules": {"__all__": {"gateway_hostnames"}}},
                                             "business_line_cas": True,
                                             "business_lines": {"__all__": {"trusts"}}})
        return hashlib.sha256(dump.encode()).hexdigest()[:12]


def load_config(path: Path | None) -> InjectorConfig:
    if path is None:
        return InjectorConfig()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    try:
        return InjectorConfig.model_validate(data)
    except ValidationError as e:
        raise ValueError(f"{path}: invalid injector configuration:\n{e}") from None


class ConfigStore:
    """The current config; the file is checked at most once a second and re-read on change.
    A bad new file is logged and the previous config kept."""

    def __init__(self, path: Path | None, on_error=None):
        self.path = path
        self.on_error = on_error
        self._stamp = self._stat()
        self._config = load_config(path)
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def _stat(self):
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
            return (os.path.realpath(self.path), st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            return None

    def get(self) -> InjectorConfig:
        if self.path is not None and time.monotonic() - self._checked >= 1.0:
            with self._lock:
                self._checked = time.monotonic()
                stamp = self._stat()
                if stamp != self._stamp:
                    self._stamp = stamp
                    try:
                        self._config = load_config(self.path)
                    except (ValueError, OSError) as e:
                        if self.on_error:
                            self.on_error(e)
        return self._config


class ServerSettings(BaseSettings):
    """The webhook server's own settings (flags or WEBHOOK_* variables)."""

    model_config = SettingsConfigDict(env_prefix="WEBHOOK_", extra="forbid", cli_kebab_case=True)

    host: str = "0.0.0.0"
    port: int = 8443
    cert_file: Path | None = None
    key_file: Path | None = None
    config: Path | None = None
    max_body_bytes: int = 3 * 1024 * 1024  # the API server's own request limit
    read_timeout_seconds: float = Field(10.0, gt=0)  # a whole request must arrive within this
    max_concurrency: int = Field(1000, gt=0)  # connections and requests at once; beyond: 503
    issuer: bool = False  # also run the issuer in this process (ISSUER_* settings)
    kubeconfig: Path | None = None  # default: in-cluster credentials (label-based policy rules read namespaces)
    benchmark_baseline: bool = False  # adds POST /noop, for scripts/bench_webhook.py
    log_level: str = "INFO"


def chart_values_schema(values_schema: dict) -> str:
    """The chart's values.schema.json with its `config` generated from InjectorConfig (the
    webhook's own model: every field, aliases as written in YAML, unknown keys refused), so
    `helm install` rejects what the webhook would. The rest of the file is written by hand."""
    config = InjectorConfig.model_json_schema(by_alias=True, ref_template="#/properties/config/$defs/{model}")
    config.pop("title", None)
    out = dict(values_schema)
    out["properties"] = {**values_schema["properties"], "config": config}
    return json.dumps(out, indent=2, sort_keys=False) + "\n"
