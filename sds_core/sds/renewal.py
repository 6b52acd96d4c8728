"""Keeps the cache filled: fetches each configured secret, renews it by the rotation rule,
re-reads it when its source reports a change, and backs off through source outages while
the cached version keeps being served."""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import Callable, Mapping

from sds_core import logs
from sds_core.sds import material, metrics
from .cache import SecretCache
from .material import SecretMaterial
from .settings import AgentSettings
from .sources.base import WITHDRAWN, SecretSpec, Source, SourceError
from sds_core.pki.validation import InvalidSecret, now

log = logging.getLogger("sds.renewal")


def renew_delay(m: SecretMaterial, s: AgentSettings, at: dt.datetime, rng: random.Random) -> float:
    """Seconds until `m` should be renewed: at `fraction` of its lifetime for short-lived
    certificates, and when `floor` (7 days) remains for long-lived ones — whichever threshold is
    smaller. Both move smoothly with the lifetime, so Vault's 30 s back-dating cannot switch rules.
    Jitter spreads thousands of pods issued together."""
    lifetime = m.lifetime.total_seconds()
    threshold = lifetime * s.rotation_fraction
    if s.rotation_floor_seconds > 0:
        threshold = min(threshold, s.rotation_floor_seconds)
    threshold *= 1 + rng.uniform(-s.rotation_jitter, s.rotation_jitter)
    threshold = min(threshold, lifetime * 0.95)
    renew_at = m.expiry - dt.timedelta(seconds=threshold)
    return max(s.min_refresh_seconds, (renew_at - at).total_seconds())


def backoff(failures: int, s: AgentSettings, rng: random.Random) -> float:
    cap = min(s.retry_max_seconds, s.retry_initial_seconds * 2 ** (failures - 1))
    return rng.uniform(cap / 2, cap)


def _report_expiry(name: str, m: SecretMaterial) -> None:
    if m.not_after:
        metrics.report_deadline(metrics.EXPIRY, metrics.NOT_AFTER, name, m.not_after)


class Renewer:
    def __init__(self, settings: AgentSettings, cache: SecretCache, specs: list[SecretSpec],
                 sources: Mapping[str, Source], rng: random.Random | None = None, stapler=None):
        self.settings = settings
        self.cache = cache
        self.specs = {s.name: s for s in specs}
        self._aliases = {s.serve_as for s in specs if s.serve_as}
        self.sources = dict(sources)  # by name
        self.rng = rng or random.Random()
        self.failing: dict[str, str] = {}
        self._wake = {name: asyncio.Event() for name in self.specs}
        self._keepers: dict[str, asyncio.Task] = {}
        self._followers: dict[int, asyncio.Task] = {}  # id(source) -> its change watch
        self._refollow_due: set[int] = set()
        self._stored_listeners: list[Callable[[str], None]] = []
        self._not_before: dict[str, float] = {}  # name -> seconds the source asked us to wait
        self.stapler = stapler  # stapling.Stapler when OCSP stapling is on

    def add_stored_listener(self, listener: Callable[[str], None]) -> None:
        """`listener(name)` after a new version of a secret is cached; every listener is kept."""
        self._stored_listeners.append(listener)

    def knows(self, name: str) -> bool:
        return name in self.specs or name in self._aliases

    def status(self) -> dict:
        """What /readyz reports: ready once every configured name has an unexpired secret."""
        at = now()
        missing, expired = [], []
        for spec in self.specs.values():
            name = spec.served
            entry = self.cache.get(name)
            if entry is None:
                missing.append(name)
            elif entry.material.not_after and entry.material.not_after <= at:
                expired.append(name)
        withdrawn = [n for n, reason in self.failing.items() if reason in WITHDRAWN]
        return {
            "ready": not missing and not expired and not withdrawn,
            "withdrawn": withdrawn,
            "degraded": bool(self.failing),
            "missing": missing,
            "expired": expired,
            "failing": dict(self.failing),
        }

    def trigger(self, name: str) -> None:
        """Re-fetch `name` now (a source change, a revocation)."""
        if name in self._wake:
            self._wake[name].set()

    def trigger_all(self) -> None:
        log.info("renewing every secret now")
        for name in self._wake:
            self.trigger(name)

    async def start(self) -> None:
        for spec in self.specs.values():
            self._keepers[spec.name] = asyncio.create_task(self._keep(spec), name=f"renew:{spec.name}")
            self._staple(spec)
        for src in {id(s): s for s in self.sources.values()}.values():
            self._restart_follow(src)

    def _staple(self, spec: SecretSpec) -> None:
        if self.stapler is not None and self.sources[spec.name].has_ocsp:
            self.stapler.keep(spec, self.sources[spec.name], self.trigger)

    def _restart_follow(self, src: Source) -> None:
        self._refollow_due.discard(id(src))
        old = self._followers.pop(id(src), None)
        if old is not None:
            old.cancel()
        specs = [spec for name, spec in self.specs.items() if self.sources.get(name) is src]
        if specs:
            self._followers[id(src)] = asyncio.create_task(self._follow(src, specs), name=f"watch:{src.label}")

    def _refollow(self, src: Source) -> None:
        """The names a source watches changed (gateway tenants came or went): restart its watch,
        once per burst rather than once per name."""
        if id(src) not in self._refollow_due:
            self._refollow_due.add(id(src))
            asyncio.get_running_loop().call_later(0.5, self._restart_follow, src)

    def add(self, spec: SecretSpec, source: Source) -> None:
        """Start keeping `spec` (gateway mode: a tenant arrived). Replaces a spec of that name."""
        if self.specs.get(spec.name) == spec:
            return
        self.remove(spec.name, keep_cached=True)
        self.specs[spec.name], self.sources[spec.name] = spec, source
        self._wake[spec.name] = asyncio.Event()
        self._keepers[spec.name] = asyncio.create_task(self._keep(spec), name=f"renew:{spec.name}")
        self._staple(spec)
        self._refollow(source)

    def remove(self, name: str, keep_cached: bool = False) -> None:
        """Stop keeping `name` and, unless replaced, forget its secret (a tenant left)."""
        task = self._keepers.pop(name, None)
        if task is not None:
            task.cancel()
        if self.stapler is not None:
            self.stapler.drop(name)
        self.specs.pop(name, None)
        src = self.sources.pop(name, None)
        if src is not None and not keep_cached:
            self._refollow(src)
        self._wake.pop(name, None)
        self.failing.pop(name, None)
        if not keep_cached:
            self.cache.remove(name)
            metrics.clear_deadline(metrics.EXPIRY, metrics.NOT_AFTER, name)

    async def stop(self) -> None:
        if self.stapler is not None:
            await self.stapler.stop()
        tasks = [*self._keepers.values(), *self._followers.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for src in {id(s): s for s in self.sources.values()}.values():
            await src.aclose()

    async def _follow(self, src: Source, specs: list[SecretSpec]) -> None:
        try:
            async for name in src.changes(specs):
                self.trigger(name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("change watch failed; periodic refresh continues", extra=logs.kv(source=src.label))

    async def _keep(self, spec: SecretSpec) -> None:
        failures = 0
        wake = self._wake[spec.name]
        while True:
            wake.clear()
            ok = await self.refresh(spec)
            failures = 0 if ok else failures + 1
            await self._sleep(wake, self._next_delay(spec, failures))

    @staticmethod
    async def _sleep(wake: asyncio.Event, delay: float) -> None:
        try:
            await asyncio.wait_for(wake.wait(), delay)
        except TimeoutError:
            pass

    def _next_delay(self, spec: SecretSpec, failures: int) -> float:
        s = self.settings
        if failures:
            # A source that said when to come back (429 Retry-After) is not asked sooner.
            return max(backoff(failures, s, self.rng), self._not_before.pop(spec.name, 0.0))
        entry = self.cache.get(spec.served)
        if entry and self.sources[spec.name].issues(spec):
            return renew_delay(entry.material, s, now(), self.rng)
        return s.static_refresh_seconds

    async def refresh(self, spec: SecretSpec) -> bool:
        src = self.sources[spec.name]
        fields = {"name": spec.name, "source": src.label}
        try:
            m = await src.fetch(spec)
        except InvalidSecret as e:
            metrics.REJECTED.labels(e.reason).inc()
            logs.audit("rejected", spec.name, reason=e.reason, error=str(e))
            log.warning("secret rejected, previous version kept: %s", e, extra=logs.kv(reason=e.reason, **fields))
            return self._failed(spec, e.reason)
        except SourceError as e:
            metrics.SOURCE_ERRORS.labels(src.label, e.reason).inc()
            log.warning("source failed, cached version kept: %s", e, extra=logs.kv(reason=e.reason, **fields))
            if e.retry_after:
                self._not_before[spec.name] = e.retry_after
            return self._failed(spec, e.reason)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a source bug must not kill the agent; type only, no message
            metrics.SOURCE_ERRORS.labels(src.label, "internal").inc()
            log.error("source raised %s, cached version kept", type(e).__name__, extra=logs.kv(**fields))
            return self._failed(spec, "internal")
        if self.stapler is not None and src.has_ocsp and m.kind == material.TLS_CERTIFICATE:
            m = await self.stapler.attach(spec, src, m)
        previous = self.cache.get(spec.served)
        entry = self.cache.put(spec.served, m)
        if entry is not None:
            metrics.ROTATIONS.labels(m.kind).inc()
            logs.audit("rotated" if previous else "loaded", spec.served, version=entry.version, **m.audit())
        _report_expiry(spec.served, m)
        self.failing.pop(spec.name, None)
        metrics.DEGRADED.set(1 if self.failing else 0)
        if entry is not None:
            for listener in self._stored_listeners:
                listener(spec.name)
        return True

    def _failed(self, spec: SecretSpec, reason: str) -> bool:
        self.failing[spec.name] = reason
        metrics.DEGRADED.set(1)
        entry = self.cache.get(spec.served)
        if entry:
            _report_expiry(spec.served, entry.material)
        return False
