"""The interface every certificate source implements. The server never sees a source."""
from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from ..material import SecretMaterial


@dataclass(frozen=True)
class Tenant:
    """Gateway mode: whom a certificate is for, when that is not the agent's own pod. The
    hostnames are the tenant's resolved claims; env and business line passed its namespace's
    policy. A source puts exactly these hostnames in the certificate."""
    namespace: str
    name: str  # the claim's
    hostnames: tuple[str, ...]
    env: str
    business_line: str = ""
    service: str = ""  # the backend Service, in the same namespace
    port: int = 0


@dataclass(frozen=True)
class GatewayIdentity:
    """Gateway mode: the gateway's own workload identity (its service account's SPIFFE ID) for
    connecting to tenants' pods of one environment and business line, or (as a validation
    context) the CA those pods' certificates chain to."""
    env: str
    business_line: str = ""


@dataclass(frozen=True)
class SecretSpec:
    name: str
    kind: str  # material.TLS_CERTIFICATE | material.VALIDATION_CONTEXT
    tenant: Tenant | None = None
    identity: GatewayIdentity | None = None
    serve_as: str = ""  # the SDS name, when Envoy asks by another name (Istio: default, ROOTCA)

    @property
    def served(self) -> str:
        return self.serve_as or self.name


# Reasons meaning "the source says this secret was deleted" (not an outage, not a transient
# gap): the cached version keeps being served, but the agent reports itself not ready.
WITHDRAWN = ("deleted",)


class SourceError(Exception):
    """The source could not deliver; `reason` is a short metric label. Never carries key material."""

    def __init__(self, reason: str, message: str, detail: dict | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.reason = reason
        self.detail = detail or {}  # the source's own answer, when the caller may need it
        self.retry_after = retry_after  # the source asked not to be asked again sooner (429)


class Source(abc.ABC):
    label: str = "source"
    has_ocsp: bool = False  # an OCSP responder for what this source issues

    @abc.abstractmethod
    async def fetch(self, spec: SecretSpec) -> SecretMaterial:
        """Return validated material for `spec` (raise SourceError or validation.InvalidSecret)."""

    def issues(self, spec: SecretSpec) -> bool:
        """True when a new fetch mints a fresh certificate, so the rotation rule applies;
        False when the source only reflects stored content, which is re-read on change."""
        return False

    async def ocsp(self, spec: SecretSpec, request_der: bytes) -> bytes | None:
        """The DER OCSP response for `request_der` from this source's responder (raise
        SourceError when it cannot be reached); None: this source has no responder."""
        return None

    async def changes(self, specs: Iterable[SecretSpec]) -> AsyncIterator[str]:
        """Yield names whose content may have changed. Default: the source never says."""
        return
        yield  # pragma: no cover

    async def aclose(self) -> None:  # noqa: B027 - optional: most sources hold nothing to close
        pass
