"""The issuer's OCSP responder (RFC 6960, HTTP POST of a DER request): answers for certificates
of the environment CAs that sign now or will sign next, signed by that CA itself.

"good" for a serial the issuer issued (its tag verifies: serials.py), "revoked" for one a
revocation record matches (revocations.py), "unknown" for any other serial of its CAs. Requests
about other CAs get "unauthorized", as RFC 6960 prescribes. Each answer is signed once and reused
for half its validity, as production responders do: a flood costs no signatures. A change of the
revocations starts a new set of answers (a cached "good" is never served after a revocation)."""
from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from . import serials
from prometheus_client import Counter

from sds_core.pki.ocsp import issuer_key_hash

from .revocations import Revocations

SIGNATURES = Counter("sds_issuer_ocsp_signatures_total", "OCSP responses signed (each reused for half its "
                     "validity): what a flood of OCSP requests costs")
VALIDITY = dt.timedelta(hours=1)
MAX_CACHED = 100_000
# (issuer key hash, issuer name hash, serial, hash algorithm, revocations) -> (signed response,
# reuse until, the revocations it was signed under)
_SIGNED: dict[tuple, tuple[bytes, dt.datetime, Revocations]] = {}
_NO_REVOCATIONS = Revocations()
_REASON_FLAGS = {"unspecified": "unspecified", "keyCompromise": "key_compromise",
                 "affiliationChanged": "affiliation_changed", "superseded": "superseded",
                 "cessationOfOperation": "cessation_of_operation"}


def respond(authority, request_der: bytes, at: dt.datetime | None = None,
            revocations: Revocations | None = None) -> bytes:
    try:
        req = ocsp.load_der_ocsp_request(request_der)
    except ValueError:
        return ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST).public_bytes(
            serialization.Encoding.DER)
    signing = [*authority.envs.values(), *(ca for ca, _ in authority.nexts.values())]
    ca = next((c for c in signing if issuer_key_hash(c.cert, req.hash_algorithm) == req.issuer_key_hash), None)
    if ca is None:
        return ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED).public_bytes(
            serialization.Encoding.DER)
    at = at or dt.datetime.now(dt.UTC)
    revocations = revocations if revocations is not None else _NO_REVOCATIONS
    key = (req.issuer_key_hash, req.issuer_name_hash, req.serial_number, req.hash_algorithm.name, id(revocations))
    cached = _SIGNED.get(key)
    if cached is not None and cached[1] > at and cached[2] is revocations:
        return cached[0]
    status, revoked_at, reason = ocsp.OCSPCertStatus.UNKNOWN, None, None
    if serials.issued_by(ca, req.serial_number):
        status = ocsp.OCSPCertStatus.GOOD
        if (rec := revocations.check(ca, req.serial_number)) is not None:
            status, revoked_at = ocsp.OCSPCertStatus.REVOKED, rec.revoked_at
            reason = x509.ReasonFlags[_REASON_FLAGS[rec.reason]]
    builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
        issuer_name_hash=req.issuer_name_hash, issuer_key_hash=req.issuer_key_hash, serial_number=req.serial_number,
        algorithm=req.hash_algorithm, cert_status=status, this_update=at - dt.timedelta(minutes=1),
        next_update=at + VALIDITY, revocation_time=revoked_at, revocation_reason=reason,
    ).responder_id(ocsp.OCSPResponderEncoding.HASH, ca.cert)
    der = builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    SIGNATURES.inc()
    if len(_SIGNED) >= MAX_CACHED:
        _SIGNED.pop(next(iter(_SIGNED)))  # the oldest: insertion order
    _SIGNED[key] = (der, at + VALIDITY / 2, revocations)
    return der
