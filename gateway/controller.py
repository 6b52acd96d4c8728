"""Claims → tenants → certificates → what Envoy is told, in that order.

A tenant's filter chain reaches Envoy only once its certificate is in the cache: a listener
update waits (warms) until every secret it names has arrived, so one tenant whose certificate
cannot be issued would otherwise hold back every other tenant's change. Rotating a certificate
changes no listener: Envoy gets only that secret."""
from __future__ import annotations

import asyncio
import logging

from prometheus_client import Gauge

from sds_core.sds import material
from sds_core.sds.cache import SecretCache
from sds_core.sds.renewal import Renewer
from sds_core.sds.resources import CLUSTER, LISTENER, ResourceStore
from sds_core.sds.sources.base import SecretSpec, Source, Tenant

from . import envoy
from sds_core.policy.claims import Claim, Refusal, resolve
from sds_core.policy.config import InjectorConfig
from .settings import GatewaySettings

log = logging.getLogger("gateway")
TENANTS = Gauge("sds_gateway_tenants", "Tenants by state: served by Envoy, or waiting for their certificate",
                ["state"])
REFUSED = Gauge("sds_gateway_refused_claims", "Claims (or hostnames of claims) refused, by reason", ["reason"])
MAX_REPORTED = 100
CONFIG_CHECK_SECONDS = 1.0


class Controller:
    def __init__(self, settings: GatewaySettings, config, feed, renewer: Renewer, cache: SecretCache,
                 stores: dict[str, ResourceStore], source: Source):
        self.s, self.config, self.feed = settings, config, feed
        self.renewer, self.cache, self.stores, self.source = renewer, cache, stores, source
        self.tenants: dict[str, Claim] = {}  # secret name -> tenant
        self.refusals: tuple[Refusal, ...] = ()
        self.published = False
        self.resolved = False
        self._chains: dict[Claim, object] = {}
        self._backends = envoy.backends(settings.gateway_max_connections)
        self._make_chain = envoy.Chains(settings.gateway_min_tls_version, tuple(settings.gateway_ecdh_curves),
                                        settings.gateway_ocsp_staple_policy, settings.gateway_handshake_timeout_seconds)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._resolve_needed = False
        self._settle_by: float | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._config_timer: asyncio.TimerHandle | None = None
        self._resolved_with: InjectorConfig | None = None  # the injector config of the last resolution

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the gateway controller is not started")
        return self._loop

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._settle_by = self._loop.time() + self.s.settle_seconds
        self.renewer.add_stored_listener(self._stored)
        self.feed.start(self.claims_changed)
        self._config_timer = self.loop.call_later(CONFIG_CHECK_SECONDS, self._config_check)

    def stop(self) -> None:
        self.feed.stop()
        for timer in (self._timer, self._deadline, self._config_timer):
            if timer:
                timer.cancel()

    # -- triggers (debounced: thousands of changes in a burst make a handful of updates) -------
    def claims_changed(self) -> None:
        """Any thread (the informers call it from theirs)."""
        self.loop.call_soon_threadsafe(self._schedule, True)

    def _config_check(self) -> None:
        """A policy change (a hostname grant revoked, an environment withdrawn) applies without
        waiting for a claim to change: the config store re-reads its file when it changed."""
        if self.resolved and self.config() is not self._resolved_with:
            self._schedule(True)
        self._config_timer = self.loop.call_later(CONFIG_CHECK_SECONDS, self._config_check)

    def _stored(self, name: str) -> None:
        if name in self.tenants:
            self._schedule(False)

    def _schedule(self, resolve_claims: bool) -> None:
        self._resolve_needed |= resolve_claims
        if self._timer is None:
            self._timer = self.loop.call_later(self.s.debounce_seconds, self._update)

    def _update(self) -> None:
        self._timer = None
        try:
            if self._resolve_needed and self.feed.synced:
                self._resolve_needed = False
                self._resolved_with = config = self.config()
                self.apply(resolve(self.feed.objects(), config, self.feed.labels_of))
            self.publish()
        except Exception:  # a bug here must not stop later updates; Envoy keeps what it has
            log.exception("gateway update failed; retrying")
            self._resolve_needed = True
            self._timer = self.loop.call_later(max(1.0, self.s.debounce_seconds), self._update)

    # -- the two steps ---------------------------------------------------------------------------
    def apply(self, resolved) -> None:
        """Keep exactly the resolved tenants' certificates (start new ones, drop gone ones)."""
        wanted = {envoy.secret_name(t): t for t in resolved.tenants}
        for name in set(self.tenants) - set(wanted):
            self.renewer.remove(name)
        for name, t in wanted.items():
            if self.tenants.get(name) != t:
                spec = SecretSpec(name, material.TLS_CERTIFICATE, Tenant(
                    t.namespace, t.name, t.hostnames, t.env, t.business_line, t.service, t.port))
                self.renewer.add(spec, self.source)
        self.tenants = wanted
        self.resolved = True
        if set(resolved.refusals) != set(self.refusals):
            for r in set(resolved.refusals) - set(self.refusals):
                log.warning("%s", r.message, extra={"fields": {"reason": r.reason, "claim": f"{r.namespace}/{r.name}"}})
            REFUSED.clear()
            for r in resolved.refusals:
                REFUSED.labels(r.reason).inc()
        self.refusals = resolved.refusals
        live = set(wanted.values())
        self._chains = {t: c for t, c in self._chains.items() if t in live}

    def _settling(self) -> bool:
        """True while a (re)started agent still waits for its tenants' first certificates. An
        Envoy that outlived the agent keeps its listener until the first answer: answering with
        the few tenants issued so far would drop the others until they are issued again."""
        if self._settle_by is None:
            return False
        pending = [n for n in self.tenants if self.cache.get(n) is None and n not in self.renewer.failing]
        if self.feed.synced and (not pending or self.loop.time() >= self._settle_by):
            self._settle_by = None
            return False
        if self._deadline is None:  # look again at the deadline: failures wake nobody
            self._deadline = self.loop.call_later(max(0.0, self._settle_by - self.loop.time()),
                                                   self._schedule, False)
        return True

    def publish(self) -> None:
        served = [t for name, t in self.tenants.items() if self.cache.get(name) is not None]
        TENANTS.labels("served").set(len(served))
        TENANTS.labels("waiting").set(len(self.tenants) - len(served))
        if self._settling():
            return
        for t in served:
            if t not in self._chains:
                host = envoy.backend_host(t, self.s.gateway_backend, self.s.cluster_domain)
                self._chains[t] = self._make_chain(t, host)
        # The cluster first: on the one ADS stream Envoy then knows it before the chains using it.
        self.stores[CLUSTER].replace({envoy.BACKENDS: self._backends} if served else {})
        listeners = {envoy.LISTENER_NAME: envoy.listener([self._chains[t] for t in served], self.s.gateway_address,
                                                         self.s.gateway_port)} if served else {}
        self.stores[LISTENER].replace(listeners)
        self.published = self.feed.synced

    def knows(self, name: str) -> bool:
        """Names Envoy may rightly ask for: the tenants', and, until the claims are first read
        (a restarted agent, an Envoy that remembers), any tenant name."""
        return name in self.tenants or (not self.resolved and name.startswith("gateway:"))

    def status(self) -> dict:
        waiting = sorted(n for n in self.tenants if self.cache.get(n) is None)
        failing = {n: r for n, r in self.renewer.failing.items() if n in self.tenants}
        return {
            # Ready once the claims are known and published: one tenant without a certificate
            # must not take the gateway out of its Service for every other tenant.
            "ready": self.published,
            "tenants": len(self.tenants),
            "served": len(self.tenants) - len(waiting),
            "waiting": waiting[:MAX_REPORTED],
            "failing": dict(sorted(failing.items())[:MAX_REPORTED]),
            "refused": [{"claim": f"{r.namespace}/{r.name}", "reason": r.reason, "message": r.message}
                        for r in self.refusals[:MAX_REPORTED]],
        }
