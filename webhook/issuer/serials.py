"""Serial numbers any issuer replica can recognise as its own, with no shared state: 11 random
bytes and an 8-byte tag (HMAC-SHA256 keyed from the signing CA's private key) behind a 0x01 byte
(20 bytes, positive: RFC 5280's maximum). The OCSP responder answers `unknown` for a serial
without a valid tag: a serial this issuer never issued (RFC 6960 2.2)."""
from __future__ import annotations

import hashlib
import hmac
import os
from functools import lru_cache

from cryptography.hazmat.primitives import serialization


@lru_cache(maxsize=64)
def _key(ca_key_der: bytes) -> bytes:
    return hashlib.sha256(b"sds-injector serial tag\x00" + ca_key_der).digest()


def _key_of(ca) -> bytes:
    return _key(ca.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))


def mint(ca) -> int:
    nonce = os.urandom(11)
    tag = hmac.new(_key_of(ca), nonce, hashlib.sha256).digest()[:8]
    return int.from_bytes(b"\x01" + nonce + tag, "big")


def issued_by(ca, serial: int) -> bool:
    raw = serial.to_bytes(20, "big") if 0 < serial < 1 << 160 else b""
    if len(raw) != 20 or raw[0] != 1:
        return False
    return hmac.compare_digest(raw[12:], hmac.new(_key_of(ca), raw[1:12], hashlib.sha256).digest()[:8])
