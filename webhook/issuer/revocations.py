"""Revocations: immutable ConfigMaps labelled sds-injector.io/revocation=true in the issuer's own
namespace (`python -m webhook revoke` writes them), so Kubernetes RBAC decides who may revoke
(create ConfigMaps there) and every replica sees every revocation through its watch. One names a
serial, or an identity: a namespace, optionally a service account or a pod (by uid); an identity
revokes every certificate issued to it up to `revokedAt`. The OCSP responder answers `revoked` for
what they match (serials.py carries the identity and issue time in each serial); certificates
issued later are good, so a revoked pod's agent gets a new one at its next renewal, at once
when it staples (its OCSP poll sees `revoked`)."""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from . import serials

LABEL = "sds-injector.io/revocation"
LABEL_SELECTOR = f"{LABEL}=true"
# RFC 5280 CRLReason names accepted by `revoke --reason` (and their x509 enum names).
REASONS = ("unspecified", "keyCompromise", "affiliationChanged", "superseded", "cessationOfOperation")


@dataclass(frozen=True)
class Revocation:
    name: str  # the ConfigMap's
    revoked_at: dt.datetime
    reason: str = "unspecified"
    serial: str = ""  # hex, as the audit or openssl prints it (compared as a number)
    namespace: str = ""
    service_account: str = ""
    pod_uid: str = ""
    pod: str = ""  # the pod's name, for people (the uid is what matches)

    def matches(self, serial: int, info: serials.SerialInfo) -> bool:
        if self.serial:
            return int(self.serial, 16) == serial
        if info.issued_at is None or info.issued_at > self.revoked_at or not self.namespace:
            return False
        if info.namespace != serials.h_namespace(self.namespace):
            return False
        if self.service_account and info.service_account != serials.h_service_account(self.namespace,
                                                                                         self.service_account):
            return False
        return not self.pod_uid or info.pod == serials.h_pod(self.pod_uid)

    def to_data(self) -> dict[str, str]:
        data = {"revokedAt": self.revoked_at.isoformat(), "reason": self.reason}
        for key, value in (("serial", self.serial), ("namespace", self.namespace),
                           ("serviceAccount", self.service_account), ("podUID", self.pod_uid), ("pod", self.pod)):
            if value:
                data[key] = value
        return data


def parse(name: str, data: dict) -> Revocation | None:
    """A record as stored; None for one that is malformed (it revokes nothing, and is logged)."""
    try:
        at = dt.datetime.fromisoformat(str(data["revokedAt"]))
    except (KeyError, ValueError):
        return None
    if at.tzinfo is None:
        return None
    reason = str(data.get("reason") or "unspecified")
    serial = str(data.get("serial", "")).lower()
    if serial and not re.fullmatch(r"[0-9a-f]{1,40}", serial):
        return None
    rec = Revocation(name, at, reason if reason in REASONS else "unspecified", serial,
                     str(data.get("namespace", "")), str(data.get("serviceAccount", "")), str(data.get("podUID", "")),
                     str(data.get("pod", "")))
    return rec if rec.serial or rec.namespace else None


class Revocations:
    """The revocations in force, from the informer's ConfigMaps (a read-only view)."""

    def __init__(self, records: list[Revocation] | None = None):
        self.records = records or []

    @classmethod
    def of(cls, configmaps: list[dict]) -> Revocations:
        out = []
        for cm in configmaps:
            rec = parse((cm.get("metadata") or {}).get("name", ""), cm.get("data") or {})
            if rec is not None:
                out.append(rec)
        return cls(out)

    def check(self, ca, serial: int) -> Revocation | None:
        info = serials.read(ca, serial)
        if info is None:
            return None
        return next((r for r in self.records if r.matches(serial, info)), None)
