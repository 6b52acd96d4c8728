"""The cluster default: certificates from the sds-injector issuer. The key pair is generated
here, in memory; the issuer gets a CSR and the pod's projected service-account token, and
decides the identity itself. Trust bundles come from it too (the pod's environment's CA)."""
from __future__ import annotations

from collections.abc import Sequence

import asyncio
import json
import os
import ssl
import urllib.error
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from sds_core import issuer_api as api
from sds_core import names
from sds_core.sds import material
from ..settings import AgentSettings
from .base import SecretSpec, Source, SourceError


def new_key(kind: str):
    return rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())


def private_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def csr_pem(key, name: str, dns: Sequence[str] = (), uris: Sequence[str] = ()) -> str:
    """The issuer reads only the key (it ignores any name or SAN a CSR asks for). Vault's
    `pki/sign` takes the SANs from the CSR by default (`use_csr_sans`, ignoring `alt_names`), so
    for Vault the CSR carries the names too."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
    sans = [x509.DNSName(d) for d in dns] + [x509.UniformResourceIdentifier(u) for u in uris]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _retry_after(value: str | None) -> float | None:
    try:
        return min(3600.0, max(0.0, float(value))) if value else None
    except ValueError:
        return None


class IssuerSource(Source):
    label = "issuer"
    has_ocsp = True

    def __init__(self, settings: AgentSettings):
        if not settings.issuer_address.startswith("https://"):
            raise ValueError("issuer source: SDS_ISSUER_ADDRESS must be an https:// URL")
        self.settings = settings
        self.base = settings.issuer_address.rstrip("/")
        self._ca_stamp: tuple | None = None
        try:
            self.tls = self._context()
        except SourceError as e:
            raise ValueError(f"issuer source: {e}") from None

    def _context(self) -> ssl.SSLContext:
        """The TLS context trusting the issuer's serving CA: SDS_ISSUER_CA, or SDS_ISSUER_CA_FILE
        re-read whenever it changes (a mounted ConfigMap the kubelet updates when the serving
        certificate's CA rotates: running agents follow it, no pod restarts)."""
        path = self.settings.issuer_ca_file
        if self.settings.issuer_ca or path is None:
            if self._ca_stamp is None:
                self._ca_stamp = ("inline",)
                self.tls = self._build(self.settings.issuer_ca, "SDS_ISSUER_CA")
            return self.tls
        try:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp != self._ca_stamp:
                self.tls, self._ca_stamp = self._build(path.read_text(), str(path)), stamp
        except OSError as e:
            if self._ca_stamp is None:
                raise SourceError("no_issuer_ca", f"cannot read the issuer's CA {path}: {e.strerror}") from None
        return self.tls  # unreadable for a moment (the kubelet swapping it): the last good one

    @staticmethod
    def _build(pem: str, where: str) -> ssl.SSLContext:
        if not pem.strip():
            raise SourceError("no_issuer_ca", "the issuer's CA is not set (SDS_ISSUER_CA or SDS_ISSUER_CA_FILE)")
        try:
            tls = ssl.create_default_context(cadata=pem)
        except ssl.SSLError:
            raise SourceError("no_issuer_ca", f"{where} is not a PEM certificate") from None
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        return tls

    def issues(self, spec: SecretSpec) -> bool:
        return spec.kind == material.TLS_CERTIFICATE

    def _post(self, path: str, body, name: str) -> dict:
        try:
            # Re-read each time: the kubelet rotates the projected token.
            token = self.settings.issuer_token_file.read_text().strip()
        except OSError as e:
            raise SourceError("no_token", f"cannot read the service-account token: {e.strerror}") from None
        req = urllib.request.Request(self.base + path, data=json.dumps(api.to_json(body)).encode(), method="POST", headers={
            "content-type": "application/json", "authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=self.settings.issuer_timeout_seconds,
                                        context=self._context()) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                err = json.loads(e.read())
                reason, message = str(err.get("reason", "refused"))[:40], str(err.get("error", ""))[:500]
            except ValueError:
                reason, message = "refused", f"HTTP {e.code}"
            raise SourceError(reason, f"the issuer refused {name!r}: {message}",
                              retry_after=_retry_after(e.headers.get("Retry-After"))) from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            why = getattr(e, "reason", None) or type(e).__name__
            raise SourceError("unavailable", f"the issuer at {self.base} is unreachable: {why}") from None

    def _post_der(self, body: bytes) -> bytes:
        from sds_core.pki.ocsp import CONTENT_TYPE  # lazy: only with OCSP stapling (per-pod start-up)

        req = urllib.request.Request(self.base + api.OCSP, data=body, method="POST",
                                     headers={"content-type": CONTENT_TYPE})
        try:
            with urllib.request.urlopen(req, timeout=self.settings.issuer_timeout_seconds,
                                        context=self._context()) as r:
                return r.read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            why = getattr(e, "reason", None) or getattr(e, "code", None) or type(e).__name__
            raise SourceError("ocsp_unavailable", f"the issuer's OCSP responder at {self.base}: {why}") from None

    async def ocsp(self, spec: SecretSpec, request_der: bytes) -> bytes | None:
        return await asyncio.to_thread(self._post_der, request_der)

    async def fetch(self, spec: SecretSpec) -> material.SecretMaterial:
        if spec.kind == material.VALIDATION_CONTEXT:
            return await self._trust_bundle(spec)
        key = new_key(self.settings.key_type)
        csr = csr_pem(key, spec.name)
        path: str
        req: api.GatewayCertificateRequest | api.CertificateRequest | api.GatewayIdentityRequest
        if spec.identity is not None:
            path, req = api.GATEWAY_IDENTITIES, api.GatewayIdentityRequest(
                spec.identity.env, csr, spec.identity.business_line)
        elif spec.tenant is not None:
            # The issuer resolves the tenant's hostnames itself, from the cluster: the request
            # names the tenant, never the hostnames.
            path, req = api.GATEWAY_CERTIFICATES, api.GatewayCertificateRequest(
                f"{spec.tenant.namespace}/{spec.tenant.name}", csr)
        else:
            path, req = api.CERTIFICATES, api.CertificateRequest(spec.name, csr)
        out = await asyncio.to_thread(self._post, path, req, spec.name)
        chain = self._answer(api.CertificateResponse, out, spec.name).certificate_chain
        return material.tls_certificate(chain.encode(), private_pem(key))

    async def _trust_bundle(self, spec: SecretSpec) -> material.SecretMaterial:
        path: str
        req: api.GatewayTrustRequest | api.TrustBundleRequest
        if spec.identity is not None:
            path, req = api.GATEWAY_TRUST_BUNDLES, api.GatewayTrustRequest(spec.identity.env,
                                                                          spec.identity.business_line)
        else:  # an inbound port's name also asks which gateways may call that port
            path, req = api.TRUST_BUNDLES, api.TrustBundleRequest(*names.split_inbound(spec.name))
        out = await asyncio.to_thread(self._post, path, req, spec.name)
        answer = self._answer(api.TrustBundleResponse, out, spec.name)
        peers = tuple(p for p in answer.gateway_peers.split(",") if p)
        return material.validation_context(answer.trust_bundle.encode(), answer.crl.encode(), extra_peers=peers)

    @staticmethod
    def _answer(model, out: dict, name: str):
        try:
            return api.parse(model, out)
        except ValueError as e:
            raise SourceError("bad_answer", f"the issuer's answer for {name!r} is not what this agent reads: {e}") \
                from None
