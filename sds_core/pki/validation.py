"""Checks a secret must pass before it is served. Error messages never carry key material."""
from __future__ import annotations

from typing import Any, cast

import itertools

import datetime as dt

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


class InvalidSecret(ValueError):
    """A secret that must not reach Envoy; `reason` is a short metric label."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_certificates(pem: bytes, what: str = "certificate") -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise InvalidSecret("bad_pem", f"{what}: not a PEM certificate") from None
    if not certs:
        raise InvalidSecret("bad_pem", f"{what}: no certificate found")
    return certs


def parse_private_key(pem: bytes):
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        # Deliberately no detail from the parser: it may quote the input.
        raise InvalidSecret("bad_key", "private key: not an unencrypted PEM private key") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        raise InvalidSecret("bad_key", f"private key: unsupported type {type(key).__name__}")
    return key


def check_validity(cert: x509.Certificate, what: str, at: dt.datetime | None = None) -> None:
    at = at or now()
    if cert.not_valid_after_utc <= at:
        raise InvalidSecret("expired", f"{what}: expired at {cert.not_valid_after_utc.isoformat()}")
    if cert.not_valid_before_utc > at + dt.timedelta(minutes=5):
        raise InvalidSecret("not_yet_valid", f"{what}: not valid before {cert.not_valid_before_utc.isoformat()}")


def check_chain_order(chain: list[x509.Certificate]) -> None:
    """Leaf first, each certificate signed by the next one (what TLS servers must send)."""
    for i, (child, parent) in enumerate(itertools.pairwise(chain)):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise InvalidSecret(
                "chain_order", f"certificate chain: entry {i} is not issued by entry {i + 1}"
            ) from None


def check_key_matches(key, leaf: x509.Certificate) -> None:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*fmt) != leaf.public_key().public_bytes(*fmt):
        raise InvalidSecret("key_mismatch", "private key does not match the leaf certificate")


def to_pkcs8(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def check_crl(pem: bytes, issuers: list[x509.Certificate]) -> bytes:
    """One or more PEM CRLs: each must parse; those signed by a trusted CA are kept (a mount's
    retired issuers may have CRLs for CAs no longer trusted), at least one must be."""
    end = b"-----END X509 CRL-----"
    blocks = [b.strip() + b"\n" + end + b"\n" for b in pem.split(end) if b"-----BEGIN X509 CRL-----" in b]
    if not blocks:
        raise InvalidSecret("bad_crl", "CRL: not a PEM CRL")
    kept = []
    for block in blocks:
        try:
            crl = x509.load_pem_x509_crl(block)
        except ValueError:
            raise InvalidSecret("bad_crl", "CRL: not a PEM CRL") from None
        # A CA key of a type no CRL can be signed with simply fails the check.
        if any(crl.issuer == ca.subject and crl.is_signature_valid(cast(Any, ca.public_key())) for ca in issuers):
            kept.append(block)
    if not kept:
        raise InvalidSecret("bad_crl", "CRL: not signed by any trusted CA")
    return b"".join(kept)


def serial_hex(serial_number: int) -> str:
    """A certificate serial as openssl and Envoy print it: hex, whole bytes (a leading zero kept,
    `0486afca...`), lowercase. The one format of logs, audit records, metrics and APIs."""
    digits = f"{serial_number:x}"
    return digits.zfill(len(digits) + len(digits) % 2)
