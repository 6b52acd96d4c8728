"""The issuer's OCSP responder (RFC 6960, HTTP POST of a DER request): answers for certificates
of the environment CAs that sign now or will sign next, signed by that CA itself.

"good" for a serial the issuer issued (its tag verifies: serials.py), "unknown" for any other
serial of its CAs; the issuer has no revocation yet (certificates are short-lived instead).
Requests about other CAs get "unauthorized", as RFC 6960 prescribes. Each answer is signed once
and reused for half its validity, as production responders do: a flood costs no signatures."""
from __future__ import annotations

import datetime as dt

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from . import serials
from prometheus_client import Counter

from sds_core.pki.ocsp import issuer_key_hash

SIGNATURES = Counter("sds_issuer_ocsp_signatures_total", "OCSP responses signed (each reused for half its "
                     "validity): what a flood of OCSP requests costs")
VALIDITY = dt.timedelta(hours=1)
MAX_CACHED = 100_000
# (issuer key hash, issuer name hash, serial, hash algorithm) -> (signed response, reuse until)
_SIGNED: dict[tuple, tuple[bytes, dt.datetime]] = {}


def respond(authority, request_der: bytes, at: dt.datetime | None = None) -> bytes:
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
    key = (req.issuer_key_hash, req.issuer_name_hash, req.serial_number, req.hash_algorithm.name)
    cached = _SIGNED.get(key)
    if cached is not None and cached[1] > at:
        return cached[0]
    status = ocsp.OCSPCertStatus.GOOD if serials.issued_by(ca, req.serial_number) else ocsp.OCSPCertStatus.UNKNOWN
    builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
        issuer_name_hash=req.issuer_name_hash, issuer_key_hash=req.issuer_key_hash, serial_number=req.serial_number,
        algorithm=req.hash_algorithm, cert_status=status, this_update=at - dt.timedelta(minutes=1),
        next_update=at + VALIDITY, revocation_time=None, revocation_reason=None,
    ).responder_id(ocsp.OCSPResponderEncoding.HASH, ca.cert)
    der = builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    SIGNATURES.inc()
    if len(_SIGNED) >= MAX_CACHED:
        _SIGNED.pop(next(iter(_SIGNED)))  # the oldest: insertion order
    _SIGNED[key] = (der, at + VALIDITY / 2)
    return der
