"""OCSP stapling: every served certificate carries a current response from its CA's responder
(Envoy's `tls_certificate.ocsp_staple`). A response saying "revoked" makes the renewer replace
the certificate at once rather than at the next CRL poll. A responder outage keeps the last
good staple until its nextUpdate, then serves without one: never blocks serving (the
LENIENT_STAPLING case; STRICT/MUST_STAPLE make Envoy itself refuse an unstapled certificate)."""
from __future__ import annotations

import asyncio
import logging

from sds_core import logs
from sds_core.sds import metrics
from sds_core.pki import ocsp
from .material import TLS_CERTIFICATE, SecretMaterial, with_staple
from .sources.base import SecretSpec, Source, SourceError
from sds_core.pki.validation import now

log = logging.getLogger("sds.stapling")


def needs_restaple(served: bytes, served_expires, fresh: ocsp.Staple, at) -> bool:
    """Whether a fresh GOOD response should replace the one served. Responders sign a new
    response on every request (a new thisUpdate), so replacing on any difference pushed a new
    secret version to Envoy and an audit line at every poll. Replace only when nothing is
    stapled, or the served staple has less than half of a response's validity window left (what
    production responders reuse a response for)."""
    if not served or served_expires is None:
        return True
    if fresh.next_update is None:
        return False  # a response without nextUpdate is no fresher than the one served
    window = fresh.next_update - fresh.this_update
    return served_expires - at < window / 2


class Stapler:
    def __init__(self, settings, cache):
        self.s, self.cache = settings, cache
        self._tasks: dict[str, asyncio.Task] = {}

    async def fetch(self, spec: SecretSpec, src: Source, m: SecretMaterial) -> ocsp.Staple | None:
        """A checked response for `m`, or None (no responder, or a failure: counted and logged)."""
        try:
            leaf, issuer = ocsp.leaf_and_issuer(m.certificate_chain)
            der = await src.ocsp(spec, ocsp.request(leaf, issuer))
            if der is None:
                return None
            return ocsp.parse(der, leaf, issuer, now())
        except (ocsp.StapleError, SourceError) as e:
            metrics.OCSP_ERRORS.labels(e.reason).inc()
            log.warning("no OCSP staple: %s", e, extra=logs.kv(name=spec.served, reason=e.reason))
            return None

    async def attach(self, spec: SecretSpec, src: Source, m: SecretMaterial) -> SecretMaterial:
        """`m` stapled with a good response when there is one (a freshly issued certificate)."""
        staple = await self.fetch(spec, src, m)
        if staple is None or staple.status != ocsp.GOOD:
            return m
        self._report(spec, staple)
        return with_staple(m, staple.der, staple.next_update)

    def keep(self, spec: SecretSpec, src: Source, renew) -> None:
        if spec.kind == TLS_CERTIFICATE and spec.name not in self._tasks:
            self._tasks[spec.name] = asyncio.create_task(self._keep(spec, src, renew), name=f"ocsp:{spec.name}")

    def drop(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        for t in self._tasks.values():
            t.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _keep(self, spec: SecretSpec, src: Source, renew) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self._next(spec, failures))
            entry = self.cache.get(spec.served)
            if entry is None:
                continue
            m = entry.material
            staple = await self.fetch(spec, src, m)
            if staple is not None and staple.status == ocsp.REVOKED:
                metrics.OCSP_REVOKED.inc()
                logs.audit("revoked", spec.served, serial=m.serial, source="ocsp")
                log.warning("the CA's OCSP responder says the served certificate is revoked; replacing it now",
                            extra=logs.kv(name=spec.served, serial=m.serial))
                self._put(spec, entry, with_staple(m, b"", None))  # never staple "revoked"
                renew(spec.name)
                failures = 1
            elif staple is not None and staple.status == ocsp.GOOD:
                failures = 0
                self._report(spec, staple)
                if needs_restaple(m.ocsp_staple, m.staple_expires, staple, now()):
                    self._put(spec, entry, with_staple(m, staple.der, staple.next_update))
            else:
                failures += 1
                if m.ocsp_staple and m.staple_expires is not None and m.staple_expires <= now():
                    # Past nextUpdate a staple is invalid: serve without one rather than a stale one.
                    self._put(spec, entry, with_staple(m, b"", None))
                    metrics.clear_deadline(metrics.STAPLE_EXPIRY, metrics.STAPLE_NEXT_UPDATE, spec.served)

    def _put(self, spec: SecretSpec, seen, m: SecretMaterial) -> None:
        # Only if the renewer has not replaced the certificate meanwhile.
        if self.cache.get(spec.served) is seen:
            self.cache.put(spec.served, m)

    def _next(self, spec: SecretSpec, failures: int) -> float:
        poll = self.s.ocsp_poll_seconds
        if failures:
            return min(poll, self.s.retry_initial_seconds * 2 ** min(failures, 8))
        entry = self.cache.get(spec.served)
        expires = entry.material.staple_expires if entry else None
        if expires is None:
            return poll if entry and entry.material.ocsp_staple else min(poll, self.s.retry_initial_seconds * 4)
        return max(self.s.min_refresh_seconds, min(poll, (expires - now()).total_seconds() / 2))

    @staticmethod
    def _report(spec: SecretSpec, staple: ocsp.Staple) -> None:
        if staple.next_update is not None:
            metrics.report_deadline(metrics.STAPLE_EXPIRY, metrics.STAPLE_NEXT_UPDATE, spec.served, staple.next_update)
