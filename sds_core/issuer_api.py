"""The issuer's HTTP interface, the one definition both sides use: the agent's issuer source
builds these requests and reads these responses; the issuer's routes parse and return them.
Standard-library dataclasses only: the per-pod agent imports this module."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

CERTIFICATES = "/v1/certificates"  # a pod's certificate: its token, a name its policy gives it, a CSR
GATEWAY_CERTIFICATES = "/v1/gateway-certificates"  # a gateway's token only; the issuer resolves the hostnames
GATEWAY_IDENTITIES = "/v1/gateway-identities"  # a gateway's own SPIFFE certificate, to reach tenants' pods
GATEWAY_TRUST_BUNDLES = "/v1/gateway-trust-bundles"  # the CAs of the tenants' pods it connects to
TRUST_BUNDLES = "/v1/trust-bundles"
OCSP = "/v1/ocsp"  # DER OCSP request in, DER response out; no token, as OCSP is public


@dataclass(frozen=True)
class CertificateRequest:
    name: str
    csr: str


@dataclass(frozen=True)
class GatewayCertificateRequest:
    tenant: str  # "<namespace>/<claim>"
    csr: str


@dataclass(frozen=True)
class GatewayIdentityRequest:
    """The gateway's own identity (its service account's SPIFFE ID, from its token), signed by
    the CA that the pods of `env` (and `business_line`, with business-line CAs) trust."""
    env: str
    csr: str
    business_line: str = ""


@dataclass(frozen=True)
class GatewayTrustRequest:
    env: str
    business_line: str = ""


@dataclass(frozen=True)
class TrustBundleRequest:
    name: str
    # An inbound TLS port of the pod: the answer then names the gateways that may call it there
    # (the accepted claims whose Service sends that port to this pod).
    port: str = ""


@dataclass(frozen=True)
class CertificateResponse:
    certificate_chain: str  # leaf first, then the signing CA
    serial: str
    not_after: str
    trust_bundle: str = ""  # pods' certificates only


@dataclass(frozen=True)
class TrustBundleResponse:
    trust_bundle: str
    env: str
    crl: str = ""  # PEM CRLs of the bundle's CAs, when the issuer publishes them (ISSUER_CRL)
    gateway_peers: str = ""  # comma-separated SPIFFE IDs accepted on `port` besides the namespace's own


@dataclass(frozen=True)
class ErrorResponse:
    reason: str
    error: str


T = TypeVar("T")


def parse(cls: type[T], data: Any) -> T:
    """`data` (decoded JSON) as `cls`, every field a non-empty string unless it has a default;
    unknown keys are ignored (newer peers may send more). Raises ValueError naming the fields."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    required = [f.name for f in fields if f.default is dataclasses.MISSING]
    if not isinstance(data, dict) or not all(isinstance(data.get(f), str) and data.get(f) for f in required):
        raise ValueError(f"body must be a JSON object with string fields {', '.join(required)}")
    return cls(**{f.name: data[f.name] for f in fields if isinstance(data.get(f.name), str)})


def to_json(obj: Any) -> dict:
    return dataclasses.asdict(obj)
