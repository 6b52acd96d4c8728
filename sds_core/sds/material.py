"""Validated secret material and its SDS proto form."""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, serialization
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from sds_core.pki import validation as v

TLS_CERTIFICATE = "tls_certificate"
VALIDATION_CONTEXT = "validation_context"


def _pem(certs) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@dataclass(frozen=True, repr=False)
class SecretMaterial:
    """One secret as served: immutable, validated, comparable by `digest`."""

    kind: str
    certificate_chain: bytes = b""
    private_key: bytes = field(default=b"", compare=False)
    trusted_ca: bytes = b""
    crl: bytes = b""
    # SPIFFE IDs accepted besides the listener's own peers (a validation context for an inbound
    # port that a gateway may call): Envoy adds them to the listener's static SAN matchers.
    extra_peers: tuple[str, ...] = ()
    ocsp_staple: bytes = b""  # DER OCSP response Envoy staples to handshakes (tls_certificate)
    staple_expires: dt.datetime | None = None
    serial: str = ""
    fingerprint: str = ""  # SHA-256 of the leaf (or first CA) DER
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    digest: str = ""  # content hash: a new digest is a new version

    def __repr__(self) -> str:  # never show the key
        return f"SecretMaterial({self.kind}, serial={self.serial}, not_after={self.not_after})"

    @property
    def lifetime(self) -> dt.timedelta:
        return self.expiry - self.starts

    @property
    def starts(self) -> dt.datetime:
        if self.not_before is None:
            raise ValueError(f"{self.kind} has no validity period")
        return self.not_before

    @property
    def expiry(self) -> dt.datetime:
        if self.not_after is None:
            raise ValueError(f"{self.kind} has no validity period")
        return self.not_after

    def audit(self) -> dict:
        return {
            "kind": self.kind,
            "serial": self.serial,
            "sha256": self.fingerprint,
            "not_after": self.not_after.isoformat() if self.not_after else None,
        }

    def to_proto(self, name: str) -> secret_pb2.Secret:
        if self.kind == TLS_CERTIFICATE:
            cert = common_pb2.TlsCertificate(certificate_chain={"inline_bytes": self.certificate_chain},
                                             private_key={"inline_bytes": self.private_key})
            if self.ocsp_staple:
                cert.ocsp_staple.inline_bytes = self.ocsp_staple
            return secret_pb2.Secret(name=name, tls_certificate=cert)
        ctx = common_pb2.CertificateValidationContext(trusted_ca={"inline_bytes": self.trusted_ca})
        if self.crl:
            ctx.crl.inline_bytes = self.crl
            # Only the leaf's issuer's CRL: with a root + intermediate, the root's CRL lives on
            # another mount and Envoy would refuse every peer for want of it.
            ctx.only_verify_leaf_cert_crl = True
        for peer in self.extra_peers:
            ctx.match_typed_subject_alt_names.add(
                san_type=common_pb2.SubjectAltNameMatcher.URI).matcher.exact = peer
        return secret_pb2.Secret(name=name, validation_context=ctx)


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()


def with_staple(m: SecretMaterial, der: bytes, expires: dt.datetime | None) -> SecretMaterial:
    """`m` with an OCSP staple (b"" removes it): a new digest, so Envoy gets the new version."""
    parts = (m.certificate_chain, m.private_key, der) if der else (m.certificate_chain, m.private_key)
    return dataclasses.replace(m, ocsp_staple=der, staple_expires=expires if der else None, digest=_digest(*parts))


def tls_certificate(chain_pem: bytes, key_pem: bytes, at: dt.datetime | None = None) -> SecretMaterial:
    """Validate a certificate chain and its key; the key is re-encoded as PKCS#8."""
    chain = v.parse_certificates(chain_pem, "certificate chain")
    key = v.parse_private_key(key_pem)
    leaf = chain[0]
    v.check_key_matches(key, leaf)
    v.check_validity(leaf, "leaf certificate", at)
    v.check_chain_order(chain)
    key_pkcs8 = v.to_pkcs8(key)
    chain_out = _pem(chain)
    return SecretMaterial(
        kind=TLS_CERTIFICATE,
        certificate_chain=chain_out,
        private_key=key_pkcs8,
        serial=v.serial_hex(leaf.serial_number),
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        digest=_digest(chain_out, key_pkcs8),
    )


def validation_context(ca_pem: bytes, crl_pem: bytes = b"", at: dt.datetime | None = None,
                       extra_peers: tuple[str, ...] = ()) -> SecretMaterial:
    """Validate a trust bundle (one or more CAs, expired ones dropped) and an optional CRL."""
    cas = v.parse_certificates(ca_pem, "trust bundle")
    at = at or v.now()
    live = [c for c in cas if c.not_valid_after_utc > at]
    if not live:
        raise v.InvalidSecret("expired", "trust bundle: every CA has expired")
    if crl_pem:
        crl_pem = v.check_crl(crl_pem, live)
    bundle = _pem(live)
    first = live[0]
    return SecretMaterial(
        kind=VALIDATION_CONTEXT,
        trusted_ca=bundle,
        crl=crl_pem,
        extra_peers=extra_peers,
        serial=",".join(v.serial_hex(c.serial_number) for c in live),
        fingerprint=first.fingerprint(hashes.SHA256()).hex(),
        not_before=max(c.not_valid_before_utc for c in live),
        not_after=min(c.not_valid_after_utc for c in live),
        digest=_digest(bundle, crl_pem, ",".join(extra_peers).encode()),
    )
