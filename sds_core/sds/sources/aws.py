"""AWS as a source: certificates and keys from Secrets Manager (encrypted with a KMS key), or
certificates signed by AWS Private CA for a key made here. boto3 is imported only with this
source; credentials come from its standard chain (on EKS: IRSA, a projected web-identity token,
as Vault's kubernetes auth uses one). Errors name the secret, the action and the cause, never
the content. Regions are tried in order: an unreachable or throttling region is skipped for a
while and the next one asked.

Secrets Manager: one secret per name (`aws_secret_id`, a template like the Vault KV path), JSON
{"certificate", "private_key", "ca_chain"} or a PEM bundle (certificates, then the key). The
version labelled AWSCURRENT is served; rotation is a new version, seen by polling the secret's
labels. A trust bundle holds the CAs of AWSCURRENT and AWSPREVIOUS: while a rotated CA
propagates, peers still holding certificates of the previous one are accepted.

Private CA: a CSR with the pod's SPIFFE ID and DNS names goes to IssueCertificate on the CA of
`aws_pca_arn`; GetCertificate is polled until the certificate is issued; the trust bundle is the
CA's certificate and chain. Private CA signs the names a CSR asks for: IAM decides which CA a pod
may use, not which names (docs/aws.md)."""
from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable

from cryptography.hazmat.primitives import hashes, serialization

from sds_core.pki.validation import InvalidSecret, parse_certificates
from sds_core.sds import material
from ..settings import AgentSettings
from .base import SecretSpec, Source, SourceError
from .issuer import csr_pem, new_key, private_pem

CURRENT, PREVIOUS = "AWSCURRENT", "AWSPREVIOUS"
_AUTH = {"UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException",
         "InvalidClientTokenId", "SignatureDoesNotMatch"}
_DENIED = {"AccessDeniedException", "AccessDenied"}
_KMS = {"DecryptionFailure", "KMSDisabledException", "KMSInvalidStateException", "KMSAccessDeniedException",
        "KMSNotFoundException", "DisabledException"}
_THROTTLED = {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded",
              "LimitExceededException"}
_FAILOVER = ("unavailable", "throttled")
ISSUE_WAIT_SECONDS = 10.0  # Private CA usually issues within a second


def classify(name: str, where: str, e: Exception) -> SourceError:
    """An AWS failure as a SourceError whose reason says what to fix."""
    from botocore import exceptions as bexc  # lazy: only with this source

    if isinstance(e, (bexc.EndpointConnectionError, bexc.ConnectTimeoutError, bexc.ReadTimeoutError,
                      bexc.ConnectionClosedError)):
        return SourceError("unavailable", f"{name}: AWS is unreachable at {where}: {type(e).__name__}")
    if isinstance(e, (bexc.NoCredentialsError, bexc.PartialCredentialsError)):
        return SourceError("auth_failed", f"{name}: no AWS credentials (on EKS: the service account's IRSA "
                                          "annotation, AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE)")
    if not isinstance(e, bexc.ClientError):
        return SourceError("aws_error", f"{name}: AWS error {type(e).__name__} at {where}")
    err = e.response.get("Error") or {}
    code, said = str(err.get("Code", "")), str(err.get("Message", ""))
    status = (e.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    if said.lstrip().startswith("<") and (inner := re.search(r"<Message>(.*?)</Message>", said, re.S)):
        said = inner.group(1)  # an IAM-style XML error body inside a JSON-protocol answer
    said = said[:300]
    if code in _DENIED or status == 403:
        return SourceError("permission_denied", f"{name}: AWS denied {where}: {said} (the pod's IAM role must "
                                                "allow it on this resource: docs/aws.md)")
    if code in _AUTH:
        return SourceError("auth_failed", f"{name}: AWS refused the credentials at {where}: {code}")
    if code in _KMS:
        return SourceError("kms_unusable", f"{name}: the KMS key of {where} cannot decrypt it ({code}: {said}); "
                                           "the cached secret stays until it expires")
    if code in _THROTTLED or status == 429:
        return SourceError("throttled", f"{name}: AWS throttled {where} ({code})", retry_after=5.0)
    if code == "ResourceNotFoundException":
        return SourceError("missing", f"{name}: {where} does not exist: {said}")
    if code == "InvalidRequestException" and "delet" in said.lower():
        return SourceError("deleted", f"{name}: {where} is deleted or scheduled for deletion; the cached secret "
                                      "stays until it expires (restore it with RestoreSecret)")
    if code == "RequestInProgressException":
        return SourceError("pending", f"{name}: {where}: the certificate is not issued yet")
    return SourceError("aws_error", f"{name}: AWS refused {where}: {code} {said}".rstrip())


class AwsSource(Source):
    label = "aws"

    def __init__(self, settings: AgentSettings, clients: Callable[[str, str], object] | None = None):
        self.s = settings
        if settings.aws_mode == "pca" and not settings.aws_pca_arn:
            raise ValueError("aws source: pca mode needs SDS_AWS_PCA_ARN (the Private CA's ARN)")
        if settings.aws_endpoint_urls and len(settings.aws_endpoint_urls) != len(settings.aws_regions):
            raise ValueError("aws source: SDS_AWS_ENDPOINT_URLS needs one URL per region in SDS_AWS_REGIONS")
        self._make = clients or self._client
        self._clients: dict[tuple[str, str], object] = {}
        self._down: dict[str, float] = {}  # region -> skipped until (monotonic)
        self.versions: dict[str, str] = {}  # name -> AWSCURRENT version id served

    # -- calls ------------------------------------------------------------------------------
    def _client(self, service: str, region: str):
        import boto3  # lazy: only with this source
        from botocore.config import Config  # lazy: only with this source

        s = self.s
        endpoint = s.aws_endpoint_urls[s.aws_regions.index(region)] if s.aws_endpoint_urls and region else None
        # One attempt per call: the renewer's backoff, and the next region, are the retries.
        cfg = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=s.aws_timeout_seconds,
                     read_timeout=s.aws_timeout_seconds)
        return boto3.session.Session().client(service, region_name=region or None, endpoint_url=endpoint, config=cfg)

    def call(self, name: str, service: str, op: str, **params) -> dict:
        """`op` on the first region that answers; an outage or throttling moves to the next."""
        regions = self.s.aws_regions or [""]
        now = time.monotonic()
        order = [r for r in regions if self._down.get(r, 0) <= now] or regions
        last: SourceError | None = None
        for region in order:
            key = (service, region)
            if key not in self._clients:
                self._clients[key] = self._make(service, region)
            where = f"{service}:{op} {params.get('SecretId') or params.get('CertificateAuthorityArn') or ''}".strip()
            try:
                return getattr(self._clients[key], op)(**params)
            except Exception as e:  # noqa: BLE001 - classified: every failure is named
                last = classify(name, f"{where} ({region or 'default region'})", e)
                if last.reason not in _FAILOVER:
                    raise last from None
                self._down[region] = time.monotonic() + self.s.aws_down_seconds
        assert last is not None
        raise last

    # -- fetch ------------------------------------------------------------------------------
    def issues(self, spec: SecretSpec) -> bool:
        return self.s.aws_mode == "pca" and spec.kind == material.TLS_CERTIFICATE

    async def fetch(self, spec: SecretSpec) -> material.SecretMaterial:
        return await asyncio.to_thread(self._fetch, spec)

    def _fetch(self, spec: SecretSpec) -> material.SecretMaterial:
        if self.s.aws_mode == "pca":
            return self._pca_trust(spec.name) if spec.kind == material.VALIDATION_CONTEXT else self._pca_cert(spec.name)
        if spec.kind == material.VALIDATION_CONTEXT:
            return self._sm_trust(spec.name)
        return self._sm_cert(spec.name)

    def secret_id(self, name: str) -> str:
        return self.s.aws_secret_id.format(**self.s.template_values(name))

    def _secret(self, name: str, stage: str) -> tuple[str, str]:
        """(text, version id) of the secret's version labelled `stage`."""
        sid = self.secret_id(name)
        out = self.call(name, "secretsmanager", "get_secret_value", SecretId=sid, VersionStage=stage)
        text = out.get("SecretString")
        if text is None and out.get("SecretBinary") is not None:
            text = bytes(out["SecretBinary"]).decode("utf-8", "replace")
        if not text:
            raise SourceError("malformed", f"{name}: secret {sid} ({stage}) is empty")
        return text, str(out.get("VersionId", ""))

    def _sm_cert(self, name: str) -> material.SecretMaterial:
        text, version = self._secret(name, CURRENT)
        chain, key = _bundle(name, self.secret_id(name), text)
        m = _validated(name, self.secret_id(name), lambda: material.tls_certificate(chain, key))
        self.versions[name] = version
        return m

    def _sm_trust(self, name: str) -> material.SecretMaterial:
        text, version = self._secret(name, CURRENT)
        pems = [_cas(name, self.secret_id(name), text)]
        try:  # the previous CA stays trusted while the rotated one propagates
            pems.append(_cas(name, self.secret_id(name), self._secret(name, PREVIOUS)[0]))
        except SourceError as e:
            if e.reason not in ("missing", "malformed"):
                raise
        certs = {c.fingerprint(hashes.SHA256()): c for pem in pems for c in parse_certificates(pem, "trust bundle")}
        bundle = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs.values())
        m = _validated(name, self.secret_id(name), lambda: material.validation_context(bundle))
        self.versions[name] = version
        return m

    def _pca_arn(self) -> str:
        return self.s.aws_pca_arn.format(**self.s.template_values())

    def _pca_cert(self, name: str) -> material.SecretMaterial:
        s, arn = self.s, self._pca_arn()
        key = new_key(s.key_type)
        dns = s.dns_sans()
        csr = csr_pem(key, dns[0] if dns else name, dns, [s.spiffe_id])
        out = self.call(name, "acm-pca", "issue_certificate", CertificateAuthorityArn=arn, Csr=csr.encode(),
                        SigningAlgorithm=s.aws_pca_signing_algorithm,
                        Validity={"Value": s.aws_pca_validity_days, "Type": "DAYS"},
                        IdempotencyToken=uuid.uuid4().hex[:32])
        cert_arn = out["CertificateArn"]
        deadline = time.monotonic() + ISSUE_WAIT_SECONDS
        while True:
            try:
                got = self.call(name, "acm-pca", "get_certificate", CertificateAuthorityArn=arn,
                                CertificateArn=cert_arn)
                break
            except SourceError as e:
                if e.reason != "pending" or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        chain = _with_chain(got)
        return _validated(name, arn, lambda: material.tls_certificate(chain, private_pem(key)))

    def _pca_trust(self, name: str) -> material.SecretMaterial:
        arn = self._pca_arn()
        got = self.call(name, "acm-pca", "get_certificate_authority_certificate", CertificateAuthorityArn=arn)
        pem = _with_chain(got)
        return _validated(name, arn, lambda: material.validation_context(pem))

    # -- changes ----------------------------------------------------------------------------
    async def changes(self, specs: Iterable[SecretSpec]) -> AsyncIterator[str]:
        """Secrets Manager: a secret whose AWSCURRENT version is not the one served (rotation)."""
        if self.s.aws_mode != "secretsmanager":
            return
        names = [sp.name for sp in specs]
        while True:
            await asyncio.sleep(self.s.aws_poll_seconds)
            for name in names:
                try:
                    current = await asyncio.to_thread(self._current_version, name)
                except SourceError:
                    continue  # the renewer's own fetches report it; the cache keeps serving
                if current and name in self.versions and current != self.versions[name]:
                    yield name

    def _current_version(self, name: str) -> str:
        out = self.call(name, "secretsmanager", "describe_secret", SecretId=self.secret_id(name))
        if out.get("DeletedDate"):
            raise SourceError("deleted", f"{name}: secret {self.secret_id(name)} is scheduled for deletion")
        for version, stages in (out.get("VersionIdsToStages") or {}).items():
            if CURRENT in stages:
                return str(version)
        return ""


def _with_chain(got: dict) -> bytes:
    """Private CA's answer (a certificate and its chain) as one PEM."""
    return (got["Certificate"].strip() + "\n" + (got.get("CertificateChain") or "").strip() + "\n").encode()


def _validated(name: str, where: str, build: Callable[[], material.SecretMaterial]) -> material.SecretMaterial:
    try:
        return build()
    except InvalidSecret as e:
        raise SourceError("invalid", f"{name}: what {where} holds is not a usable secret: {e}") from None


def _bundle(name: str, where: str, text: str) -> tuple[bytes, bytes]:
    """(chain PEM, key PEM) from JSON {"certificate", "private_key", "ca_chain"} or a PEM bundle."""
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            raise SourceError("malformed", f"{name}: {where} is not JSON nor PEM") from None
        cert, key = data.get("certificate"), data.get("private_key")
        if not isinstance(cert, str) or not isinstance(key, str):
            raise SourceError("malformed", f"{name}: {where} lacks \"certificate\" or \"private_key\" "
                                           f"(present: {sorted(data) if isinstance(data, dict) else '-'})")
        ca = data.get("ca_chain") if isinstance(data.get("ca_chain"), str) else ""
        chain = cert.strip() + "\n" + (ca.strip() + "\n" if ca and ca.strip() not in cert else "")
        return chain.encode(), key.encode()
    marker = "-----BEGIN"
    blocks = [marker + b for b in text.split(marker)[1:]]
    certs = [b for b in blocks if b.startswith("-----BEGIN CERTIFICATE")]
    keys = [b for b in blocks if "PRIVATE KEY" in b.split("\n", 1)[0]]
    if not certs or len(keys) != 1:
        raise SourceError("malformed", f"{name}: {where} must hold certificates and one private key "
                                       f"(found {len(certs)} and {len(keys)})")
    return "".join(c.strip() + "\n" for c in certs).encode(), keys[0].encode()


def _cas(name: str, where: str, text: str) -> bytes:
    """A trust bundle secret: a PEM bundle of CAs, or JSON with "ca_chain" (or "certificate")."""
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            raise SourceError("malformed", f"{name}: {where} is not JSON nor PEM") from None
        text = str(data.get("ca_chain") or data.get("certificate") or "") if isinstance(data, dict) else ""
    try:
        parse_certificates(text.encode(), "trust bundle")
    except InvalidSecret:
        raise SourceError("malformed", f"{name}: {where} holds no CA certificate") from None
    return text.strip().encode() + b"\n"
