"""HashiCorp Vault as a source: KV v2 entries or PKI-issued certificates, trust bundles from the
PKI CA chain (optionally with its CRL) or a KV entry, with CA rollover overlap, revocation and
new KV versions noticed by polling. Errors name the secret and the path, never its content."""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from hvac import exceptions as vexc

from sds_core import logs
from sds_core.sds import material
from ..settings import AgentSettings
from sds_core.pki.validation import InvalidSecret, now, parse_certificates, serial_hex
from ..vault_client import VaultClient
from .base import Tenant, SecretSpec, Source, SourceError
import random
from sds_core.pki.ocsp import CONTENT_TYPE
from sds_core.sds.sources.issuer import csr_pem, new_key, private_pem

log = logging.getLogger("sds.vault")


PROBE_SECONDS = 1.0  # health probe period during an outage
ISSUERS_REFRESH_SECONDS = 3600.0
_OUTAGE = ("unavailable", "sealed")


def _serial_int(serial: str) -> int:
    return int(serial.replace(":", "").replace("-", ""), 16)


class VaultSource(Source):
    label = "vault"

    def __init__(self, settings: AgentSettings, client: VaultClient | None = None):
        self.s = settings
        self.has_ocsp = settings.vault_mode == "pki"
        self.vault = client or VaultClient(settings)
        self.kv_versions: dict[str, int] = {}
        self.served_serial: dict[str, int] = {}
        self.seen: dict[str, str] = {}  # trust bundle name -> CA chain + CRL text last served
        self.ca_history: dict[str, dict[str, tuple[bytes, float | None]]] = {}  # fp -> (pem, retired_at)
        self._capped_warned: dict[str, int] = {}
        self.pending: set[str] = set()  # names whose last fetch met an outage
        self._issuers: dict[str, tuple[list[str], float]] = {}  # mount -> (issuer refs, listed at)
        self._chains: dict[str, str] = {}  # mount -> CA chain last read
        self._outage = asyncio.Event()
        # The poll's schedule and a round under way outlive one change watch: the renewer restarts
        # the watch whenever gateway tenants come or go, and must not postpone the poll doing so.
        self._next_poll: float | None = None
        self._round: asyncio.Future | None = None

    def issues(self, spec: SecretSpec) -> bool:
        return self.s.vault_mode == "pki" and spec.kind == material.TLS_CERTIFICATE

    # -- paths ------------------------------------------------------------------------------
    def kv_path(self, name: str) -> str:
        return self.s.vault_kv_path.format(**self.s.template_values(name))

    def pki_mount_role(self) -> tuple[str, str]:
        return self._pki_path()[0::2]

    def _pki_path(self, tenant: Tenant | None = None) -> tuple[str, str, str]:
        """(mount, operation, role): `sign` sends our CSR (the key never leaves the pod);
        `issue` has Vault make the key (kept for roles that only allow issue). A gateway
        tenant's certificate comes from its own environment's and business line's role."""
        values = self.s.template_values()
        if tenant is not None:
            values.update(namespace=tenant.namespace, service=tenant.service, env=tenant.env,
                          business_line=tenant.business_line)
        path = self.s.vault_pki_path.format(**values)
        for op in ("sign", "issue"):
            mount, sep, role = path.partition(f"/{op}/")
            if sep and mount and role:
                return mount, op, role
        raise SourceError("config", f"vault_pki_path {self.s.vault_pki_path!r} must look like MOUNT/sign/ROLE "
                                    "(or MOUNT/issue/ROLE)")

    async def ocsp(self, spec: SecretSpec, request_der: bytes) -> bytes | None:
        mount = self._pki_path(spec.tenant)[0]
        try:
            return await asyncio.to_thread(self.vault.post_bytes, f"/v1/{mount}/ocsp", request_der, CONTENT_TYPE)
        except OSError as e:
            raise SourceError("ocsp_unavailable", f"{spec.served}: Vault's OCSP responder {mount}/ocsp: {e}") from None

    # -- fetch ------------------------------------------------------------------------------
    async def fetch(self, spec: SecretSpec) -> material.SecretMaterial:
        try:
            m = await asyncio.to_thread(self._fetch, spec)
        except SourceError as e:
            if e.reason in _OUTAGE:
                # Retried when a health probe sees Vault back, not when the backoff runs out.
                self.pending.add(spec.name)
                self._outage.set()
            raise
        self.pending.discard(spec.name)
        return m

    def _fetch(self, spec: SecretSpec) -> material.SecretMaterial:
        if spec.kind == material.VALIDATION_CONTEXT:
            return self._trust(spec.name)
        return self._kv_cert(spec.name) if self.s.vault_mode == "kv" else self._pki_cert(spec.name, spec.tenant)

    def _call(self, name: str, where: str, fn, auth: bool = True):
        try:
            return self.vault.call(where, fn, auth)
        except vexc.Forbidden:
            raise self._forbidden(name, where) from None
        except vexc.InvalidPath as e:
            raise SourceError("missing", f"{name}: {where} does not exist in Vault (no such mount, role or "
                                         "entry); create it or fix the path setting",
                              detail=e.json if isinstance(e.json, dict) else None) from None
        except vexc.InvalidRequest as e:
            raise SourceError("rejected", f"{name}: Vault rejected the request to {where}: "
                                          f"{'; '.join(e.errors or []) or 'invalid request'}") from None
        except vexc.VaultError as e:
            raise SourceError("vault_error", f"{name}: Vault error {type(e).__name__} at {where}") from None

    def _forbidden(self, name: str, where: str) -> SourceError:
        """Vault says "permission denied" for a bad token and for a missing policy alike: ask
        which one it is, so the message sends the operator to the right place."""
        policies = self.vault.token_policies()
        if policies is None:
            return SourceError("auth_failed", f"{name}: Vault refused the token at {where}: it is invalid or "
                                              "expired (token auth: set a valid SDS_VAULT_TOKEN; kubernetes "
                                              "auth: the agent logs in again)")
        return SourceError("permission_denied", f"{name}: Vault denied access to {where}: the token's policies "
                                                f"{policies} do not allow this path (namespace isolation); "
                                                "grant it in the role's policy if this pod should have it")

    def _kv_read(self, name: str) -> tuple[dict, int, str]:
        mount, path = self.s.vault_kv_mount, self.kv_path(name)
        where = f"{mount}/data/{path}"
        try:
            resp = self._call(name, where, lambda c: c.secrets.kv.v2.read_secret_version(
                path=path, mount_point=mount, raise_on_deleted_version=False))
        except SourceError as e:
            # A destroyed version is a 404 with its metadata, which hvac does not pass through.
            meta = (e.detail.get("data") or {}).get("metadata") or {}
            if e.reason == "missing" and name in self.kv_versions and not meta:
                raise SourceError("deleted", f"{name}: the entry at {where}, served before, was deleted with all "
                                             "its versions; the cached secret stays until it expires") from None
            if e.reason != "missing" or not meta.get("destroyed"):
                raise
            resp = {"data": {"data": None, "metadata": meta}}
        data, meta = resp["data"].get("data"), resp["data"]["metadata"]
        if data is None or meta.get("deletion_time"):
            state = "destroyed" if meta.get("destroyed") else "deleted"
            raise SourceError("deleted", f"{name}: the latest version ({meta.get('version')}) at {where} is "
                                         f"{state}; the cached secret stays until it expires")
        if not isinstance(data, dict):
            raise SourceError("malformed", f"{name}: {where} does not hold a key/value map")
        return data, int(meta["version"]), where

    def _fields(self, name: str, where: str, data: dict, *fields: str) -> list[str]:
        missing = [f for f in fields if not isinstance(data.get(f), str) or not data.get(f)]
        if missing:
            raise SourceError("malformed", f"{name}: field(s) {missing} missing at {where} "
                                           f"(present: {sorted(data)})")
        return [data[f] for f in fields]

    def _kv_cert(self, name: str) -> material.SecretMaterial:
        s = self.s
        data, version, where = self._kv_read(name)
        cert, key = self._fields(name, where, data, s.vault_kv_cert_field, s.vault_kv_key_field)
        chain = cert.strip() + "\n"
        ca = data.get(s.vault_kv_ca_field)
        if isinstance(ca, str) and ca.strip() and ca.strip() not in chain:
            chain += ca.strip() + "\n"
        m = _validated(where, lambda: material.tls_certificate(chain.encode(), key.encode()))
        if data.get("revokes_previous") and self.kv_versions.get(name, version) != version:
            log.warning("new KV version revokes the previous one: replaced at once",
                        extra=logs.kv(name=name, path=where, version=version))
        self.kv_versions[name] = version
        return m

    def _pki_cert(self, name: str, tenant: Tenant | None = None) -> material.SecretMaterial:
        s = self.s
        mount, op, role = self._pki_path(tenant)
        dns = list(tenant.hostnames) if tenant else s.dns_sans()
        params = {"alt_names": ",".join(dns), "ttl": s.vault_pki_ttl}
        if tenant is None:  # a gateway's certificate names hostnames only, not the gateway's pod
            params["uri_sans"] = s.spiffe_id
        cn = dns[0] if dns else name
        where = f"{mount}/{op}/{role}"
        if op == "sign":
            own_key = new_key(s.key_type)
            csr = csr_pem(own_key, cn, dns, [params["uri_sans"]] if "uri_sans" in params else [])
            resp = self._call(name, where, lambda c: c.secrets.pki.sign_certificate(
                role, csr, cn, extra_params=dict(params), mount_point=mount))
            d = resp.get("data") or {}
            (cert,) = self._fields(name, where, d, "certificate")
            key = private_pem(own_key).decode()
        else:
            resp = self._call(name, where, lambda c: c.secrets.pki.generate_certificate(
                role, cn, extra_params=dict(params), mount_point=mount))
            d = resp.get("data") or {}
            cert, key = self._fields(name, where, d, "certificate", "private_key")
        cas = d.get("ca_chain") or ([d["issuing_ca"]] if d.get("issuing_ca") else [])
        chain = "\n".join([cert.strip(), *[c.strip() for c in cas]]) + "\n"
        m = _validated(where, lambda: material.tls_certificate(chain.encode(), key.encode()))
        self.served_serial[name] = int(m.serial, 16)
        self._check_ttl(name, where, m)
        return m

    def _check_ttl(self, name: str, where: str, m: material.SecretMaterial) -> None:
        """Vault silently caps a TTL at the role's or mount's max_ttl: say so, once."""
        asked = _duration_seconds(self.s.vault_pki_ttl)
        got = (m.expiry - now()).total_seconds()
        if asked and got < asked - 60 and self._capped_warned.get(name) != int(got // 60):
            self._capped_warned[name] = int(got // 60)
            mount, _, role = self._pki_path()
            log.warning("Vault issued a shorter certificate than asked: the TTL is capped by max_ttl of %s/roles/%s "
                        "(or of the mount); raise it or lower pkiTTL", mount, role,
                        extra=logs.kv(name=name, path=where, asked_seconds=asked, got_seconds=round(got)))

    def _crl(self, name: str, mount: str, memo: dict | None = None) -> bytes:
        """The CRLs of every issuer of the mount (a mount in a CA rollover has two), concatenated:
        `{mount}/crl/pem` is only the default issuer's."""
        if memo is not None and mount in memo:
            return memo[mount]
        refs = self._issuer_refs(name, mount)
        if refs:
            # An issuer without a key (a root imported beside its intermediate) has no CRL: skip it.
            crls = [self.vault.get_text(f"/v1/{mount}/issuer/{ref}/crl/pem") for ref in refs]
            text = "".join(c.strip() + "\n" for c in crls if c and c.strip())
        else:
            text = self._call(name, f"{mount}/crl/pem", lambda c: c.secrets.pki.read_crl(mount_point=mount),
                              auth=False)
        if memo is not None:
            memo[mount] = text.encode()
        return text.encode()

    def _issuer_refs(self, name: str, mount: str) -> list[str]:
        """The mount's issuers, listed again hourly or when its CA chain changed (a rollover):
        not every poll round, which 5,000 agents would turn into a steady load on Vault."""
        cached = self._issuers.get(mount)
        if cached and time.monotonic() - cached[1] < ISSUERS_REFRESH_SECONDS:
            return cached[0]
        try:
            listed = self._call(name, f"{mount}/issuers", lambda c: c.adapter.list(f"/v1/{mount}/issuers"),
                                auth=False)
            refs = list(((listed or {}).get("data") or {}).get("keys") or [])
        except SourceError:
            refs = []  # a Vault without multiple issuers
        self._issuers[mount] = (refs, time.monotonic())
        return refs

    def _trust_source(self, name: str, crl_memo: dict | None = None) -> tuple[bytes, bytes, str]:
        if self.s.vault_mode == "kv":
            data, version, where = self._kv_read(name)
            self.kv_versions[name] = version
            (ca,) = self._fields(name, where, data, self.s.vault_kv_ca_field)
            return ca.encode(), b"", where
        mount, _ = self.pki_mount_role()
        ca = self._call(name, f"{mount}/ca_chain",
                        lambda c: c.secrets.pki.read_ca_certificate_chain(mount_point=mount), auth=False)
        if self._chains.get(mount) != ca:
            self._chains[mount] = ca
            self._issuers.pop(mount, None)  # a changed chain may mean a new issuer
        if not isinstance(ca, str) or not ca.strip():
            raise SourceError("no_ca", f"{name}: PKI mount {mount} has no CA certificate yet; generate or import "
                                       f"one ({mount}/root/generate/internal, or {mount}/intermediate/set-signed)")
        crl = self._crl(name, mount, crl_memo) if self.s.vault_crl else b""
        return ca.encode(), crl, f"{mount}/ca_chain"

    def _trust(self, name: str) -> material.SecretMaterial:
        ca, crl, where = self._trust_source(name)
        self.seen[name] = (ca + crl).decode()
        bundle = self._with_overlap(name, where, ca)
        return _validated(where, lambda: material.validation_context(bundle, crl))

    def _with_overlap(self, name: str, where: str, ca_pem: bytes) -> bytes:
        """The current CAs plus those replaced less than the overlap ago, so peers holding
        certificates of the old CA are not cut off during a rollover."""
        current = {c.fingerprint(hashes.SHA256()).hex(): c.public_bytes(serialization.Encoding.PEM)
                   for c in _validated(where, lambda: parse_certificates(ca_pem, "CA chain"))}
        hist = self.ca_history.setdefault(name, {})
        now = time.time()
        for fp, (pem, retired) in list(hist.items()):
            if fp not in current and retired is None:
                hist[fp] = (pem, now)
                log.info("CA rolled over; the old CA stays trusted for the overlap",
                         extra=logs.kv(name=name, overlap_seconds=self.s.vault_ca_overlap_seconds))
            elif retired is not None and now - retired >= self.s.vault_ca_overlap_seconds:
                del hist[fp]
        for fp, pem in current.items():
            hist[fp] = (pem, None)
        ordered = sorted(hist.items(), key=lambda kv: kv[1][1] is not None)
        return b"".join(pem for _, (pem, _) in ordered)

    # -- change detection -------------------------------------------------------------------
    async def changes(self, specs: Iterable[SecretSpec]) -> AsyncIterator[str]:
        """Names to fetch again: those the periodic poll finds changed, and — probed every
        second during an outage — those that failed, as soon as an address is healthy again."""

        specs = list(specs)
        poll = self.s.vault_poll_seconds
        if self._next_poll is None:
            # Agents started together (a scale-out) must not poll together: a random phase, then ±10 %.
            self._next_poll = time.monotonic() + random.uniform(0.5, 1.0) * poll
        while True:
            wait = 0.0 if self._round is not None else max(0.0, self._next_poll - time.monotonic())
            if self.pending:
                wait = min(wait, PROBE_SECONDS)
            try:
                await asyncio.wait_for(self._outage.wait(), wait)
            except TimeoutError:
                pass
            self._outage.clear()
            healthy: bool = bool(self.pending) and await asyncio.to_thread(self.vault.any_healthy)
            if healthy:
                for name in sorted(self.pending):
                    yield name
            if self._round is None and time.monotonic() >= self._next_poll:
                self._next_poll = time.monotonic() + poll * random.uniform(0.9, 1.1)
                self._round = asyncio.ensure_future(asyncio.to_thread(self._poll, specs))
            if self._round is not None:
                # Shielded: a watch restarted mid-round leaves the round running for the next.
                round_ = self._round
                try:
                    changed = await asyncio.shield(round_)
                finally:
                    if round_.done():  # finished, or failed: the next watch starts a new one
                        self._round = None
                for name in changed:
                    yield name

    def _kv_changed(self, name: str) -> bool:
        """A new version, or the served one deleted or destroyed, or the whole entry gone."""
        mount, path = self.s.vault_kv_mount, self.kv_path(name)
        try:
            meta = self.vault.call(f"{mount}/metadata/{path}", lambda c: c.secrets.kv.v2.read_secret_metadata(
                path=path, mount_point=mount))["data"]
        except vexc.InvalidPath:
            return True  # `kv metadata delete`: the fetch reports it as missing
        current = int(meta["current_version"])
        latest = (meta.get("versions") or {}).get(str(current)) or {}
        gone = bool(latest.get("deletion_time")) or bool(latest.get("destroyed"))
        return current != self.kv_versions.get(name) or gone

    def _poll(self, specs: list[SecretSpec]) -> list[str]:
        out = []
        crl_memo: dict[str, bytes] = {}  # one CRL read per mount and round, shared by all names
        for spec in specs:
            try:
                if self.s.vault_mode == "kv":
                    if self._kv_changed(spec.name):
                        out.append(spec.name)
                    continue
                mount, _ = self.pki_mount_role()
                if spec.kind == material.VALIDATION_CONTEXT:
                    ca, crl, _ = self._trust_source(spec.name, crl_memo)
                    overlap_due = any(r is not None and time.time() - r >= self.s.vault_ca_overlap_seconds
                                      for _, r in self.ca_history.get(spec.name, {}).values())
                    if (ca + crl).decode() != self.seen.get(spec.name) or overlap_due:
                        out.append(spec.name)
                elif spec.name in self.served_serial:
                    crls = _pem_crls(self._crl(spec.name, mount, crl_memo))
                    if any(c.get_revoked_certificate_by_serial_number(self.served_serial[spec.name]) for c in crls):
                        log.warning("served certificate was revoked; issuing a replacement now",
                                    extra=logs.kv(name=spec.name, serial=serial_hex(self.served_serial[spec.name])))
                        out.append(spec.name)
            except (SourceError, vexc.VaultError, ValueError) as e:
                # The fetch path reports failures with full context; polling just skips this round.
                log.debug("vault poll skipped", extra=logs.kv(name=spec.name, error=type(e).__name__))
        return out


def _pem_crls(pem: bytes) -> list[x509.CertificateRevocationList]:
    end = b"-----END X509 CRL-----"
    return [x509.load_pem_x509_crl(block + end) for block in pem.split(end) if b"-----BEGIN X509 CRL-----" in block]


def _duration_seconds(text: str) -> float:
    """Vault's duration strings ("24h", "90m", "1h30m", "3600s", "3600")."""
    if text.isdigit():
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([dhms])", text)
    return sum(float(n) * {"d": 86400, "h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def _validated(where: str, build):
    try:
        return build()
    except InvalidSecret as e:
        raise InvalidSecret(e.reason, f"{where}: {e}") from None
