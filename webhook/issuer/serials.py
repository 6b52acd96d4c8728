"""Serial numbers any issuer replica can read without shared state. 20 bytes (RFC 5280's maximum),
positive:

    0x02 | issued at (4, Unix seconds) | H(namespace) 2 | H(namespace/service account) 2 |
    H(pod uid) 2 | random 3 | tag 6

The tag (HMAC-SHA256 keyed from the signing CA's private key) proves the issuer made the serial:
the OCSP responder answers `unknown` for any serial without one (RFC 6960 2.2). The identity
fields let every replica answer `revoked` for a revocation by pod, service account or namespace
(revocations.py) from the serial alone; 2-byte hashes can collide (1 in 65,536 per pair of
namespaces): a false match revokes a certificate whose agent then simply renews. Version 0x01
serials (11 random bytes, 8-byte tag) are still recognised; they carry no identity."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
from dataclasses import dataclass
from functools import lru_cache

from cryptography.hazmat.primitives import serialization

V1, V2 = 1, 2


@dataclass(frozen=True)
class Identity:
    namespace: str
    service_account: str
    pod_uid: str


@dataclass(frozen=True)
class SerialInfo:
    issued_at: dt.datetime | None  # None: a version 1 serial
    namespace: bytes = b""
    service_account: bytes = b""
    pod: bytes = b""


def h_namespace(namespace: str) -> bytes:
    return hashlib.sha256(b"ns\x00" + namespace.encode()).digest()[:2]


def h_service_account(namespace: str, service_account: str) -> bytes:
    return hashlib.sha256(b"sa\x00" + f"{namespace}/{service_account}".encode()).digest()[:2]


def h_pod(pod_uid: str) -> bytes:
    return hashlib.sha256(b"pod\x00" + pod_uid.encode()).digest()[:2]


@lru_cache(maxsize=64)
def _key(ca_key_der: bytes) -> bytes:
    return hashlib.sha256(b"sds-injector serial tag\x00" + ca_key_der).digest()


def _key_of(ca) -> bytes:
    return _key(ca.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))


def _tag(ca, body: bytes, size: int) -> bytes:
    return hmac.new(_key_of(ca), body, hashlib.sha256).digest()[:size]


def mint(ca, who: Identity, at: dt.datetime | None = None) -> int:
    at = at or dt.datetime.now(dt.UTC)
    body = (int(at.timestamp()).to_bytes(4, "big") + h_namespace(who.namespace)
            + h_service_account(who.namespace, who.service_account) + h_pod(who.pod_uid) + os.urandom(3))
    return int.from_bytes(bytes([V2]) + body + _tag(ca, bytes([V2]) + body, 6), "big")


def read(ca, serial: int) -> SerialInfo | None:
    """What a serial this CA's issuer made says; None for any other serial."""
    raw = serial.to_bytes(20, "big") if 0 < serial < 1 << 160 else b""
    if len(raw) != 20:
        return None
    if raw[0] == V1 and hmac.compare_digest(raw[12:], _tag(ca, raw[1:12], 8)):
        return SerialInfo(None)
    if raw[0] == V2 and hmac.compare_digest(raw[14:], _tag(ca, raw[:14], 6)):
        at = dt.datetime.fromtimestamp(int.from_bytes(raw[1:5], "big"), dt.UTC)
        return SerialInfo(at, raw[5:7], raw[7:9], raw[9:11])
    return None


def issued_by(ca, serial: int) -> bool:
    return read(ca, serial) is not None
