"""CRLs for trust bundles (ISSUER_CRL): per signing CA whose key the issuer holds, the serials
revoked by serial (revocations.py), signed by that CA, valid an hour and remade at half of it or
when the revocations change. Revocations by identity (pod, service account, namespace) name no
serial, so only OCSP answers for them: peers that check CRLs see serial revocations alone."""
from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from . import serials
from .revocations import Revocations

VALIDITY = dt.timedelta(hours=1)
_MADE: dict[tuple[int, int], tuple[bytes, dt.datetime, Revocations]] = {}  # (CA serial, id) -> (PEM, remake at, for)


def crl_pem(ca, revocations: Revocations, at: dt.datetime | None = None) -> bytes:
    at = at or dt.datetime.now(dt.UTC)
    key = (ca.cert.serial_number, id(revocations))
    made = _MADE.get(key)
    if made is not None and made[1] > at and made[2] is revocations:
        return made[0]
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
               .last_update(at - dt.timedelta(minutes=1)).next_update(at + VALIDITY))
    for rec in revocations.records:
        if rec.serial and serials.issued_by(ca, int(rec.serial, 16)):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(int(rec.serial, 16)).revocation_date(rec.revoked_at)
                .build())
    pem = builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    if len(_MADE) > 1000:
        _MADE.clear()
    _MADE[key] = (pem, at + VALIDITY / 2, revocations)
    return pem
