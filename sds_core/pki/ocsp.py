"""OCSP for stapling: the request for a served certificate, and the checks a response must pass
before Envoy staples it (right certificate, signed by its issuer or a responder the issuer
delegated to, current). Envoy does not verify a staple's signature; clients do, so a bad one
would fail their handshakes."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

CONTENT_TYPE = "application/ocsp-request"
GOOD, REVOKED, UNKNOWN = "good", "revoked", "unknown"


class StapleError(Exception):
    """The response cannot be stapled; `reason` is a short metric label."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Staple:
    der: bytes
    status: str
    this_update: dt.datetime
    next_update: dt.datetime | None


def leaf_and_issuer(chain_pem: bytes) -> tuple[x509.Certificate, x509.Certificate]:
    certs = x509.load_pem_x509_certificates(chain_pem)
    if len(certs) < 2:
        raise StapleError("no_issuer", "the chain has no issuer certificate to ask OCSP about")
    return certs[0], certs[1]


def request(leaf: x509.Certificate, issuer: x509.Certificate) -> bytes:
    return ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1()).build().public_bytes(
        serialization.Encoding.DER)


def issuer_key_hash(issuer: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    """CertID's issuerKeyHash (RFC 6960 4.1.1): the hash of the issuer's subjectPublicKey BIT
    STRING value, the raw key bytes. Used by the stapler and by the issuer's responder alike."""
    key = issuer.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        raw = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    elif isinstance(key, rsa.RSAPublicKey):
        raw = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    else:
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)  # Ed25519, Ed448
    return _hash(algorithm, raw)


def _hash(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    digest = hashes.Hash(algorithm)
    digest.update(data)
    return digest.finalize()


def _issuer_hashes(issuer: x509.Certificate, algorithm: hashes.HashAlgorithm) -> tuple[bytes, bytes]:
    """CertID's issuerNameHash and issuerKeyHash for this issuer."""
    return _hash(algorithm, issuer.subject.public_bytes()), issuer_key_hash(issuer, algorithm)


def _verify(signer: x509.Certificate, resp: ocsp.OCSPResponse) -> None:
    key, algorithm = signer.public_key(), resp.signature_hash_algorithm
    if algorithm is None:
        raise StapleError("bad_signature", "OCSP response signed without a hash algorithm (not supported)")
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(algorithm))
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(), algorithm)
    else:
        raise StapleError("bad_signature", "OCSP responder key type not supported")


def _signer(resp: ocsp.OCSPResponse, issuer: x509.Certificate) -> x509.Certificate:
    """The issuer itself, or a certificate it issued for OCSP signing (RFC 6960 4.2.2.2)."""
    for cert in resp.certificates:
        try:
            cert.verify_directly_issued_by(issuer)
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            continue
        if ExtendedKeyUsageOID.OCSP_SIGNING in eku:
            return cert
    return issuer


def parse(der: bytes, leaf: x509.Certificate, issuer: x509.Certificate, at: dt.datetime) -> Staple:
    try:
        resp = ocsp.load_der_ocsp_response(der)
    except ValueError:
        raise StapleError("malformed", "the OCSP response does not parse") from None
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise StapleError("responder_error", f"the OCSP responder answered {resp.response_status.name}")
    if resp.serial_number != leaf.serial_number:
        raise StapleError("wrong_certificate", "the OCSP response is about another certificate")
    if (resp.issuer_name_hash, resp.issuer_key_hash) != _issuer_hashes(issuer, resp.hash_algorithm):
        raise StapleError("wrong_certificate", "the OCSP response names another issuer (name or key hash) than the "
                                               "certificate's")
    try:
        _verify(_signer(resp, issuer), resp)
    except InvalidSignature:
        raise StapleError("bad_signature", "the OCSP response is not signed by the certificate's issuer") from None
    this_update, next_update = resp.this_update_utc, resp.next_update_utc
    if this_update > at + dt.timedelta(minutes=5) or (next_update is not None and next_update <= at):
        raise StapleError("stale", f"the OCSP response is not current (thisUpdate {this_update}, "
                                   f"nextUpdate {next_update})")
    status = {ocsp.OCSPCertStatus.GOOD: GOOD, ocsp.OCSPCertStatus.REVOKED: REVOKED}.get(resp.certificate_status,
                                                                                     UNKNOWN)
    return Staple(der, status, this_update, next_update)
