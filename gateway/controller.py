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
from sds_core.sds.sources.base import GatewayIdentity, SecretSpec, Source, Tenant

from . import envoy, shards
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
                 stores: dict[str, ResourceStore], source: Source, status_writer=None):
        self.s, self.config, self.feed = settings, config, feed
        self.status_writer = status_writer  # HostnameClaim status (cluster claims only)
        self.renewer, self.cache, self.stores, self.source = renewer, cache, stores, source
        self.tenants: dict[str, Claim] = {}  # secret name -> tenant
        self.refusals: tuple[Refusal, ...] = ()
        self.published = False
        self.resolved = False
        self.upstreams: dict[GatewayIdentity, tuple[str, str]] = {}  # -> (identity, trust) secret names
        self._chains: dict[Claim, object] = {}
        self._backends: dict[GatewayIdentity | None, object] = {}
        self._shard_clusters: dict[int, object] = {}
        self._shards: dict[int, tuple[frozenset, object]] = {}  # shard -> (its tenants, its listener)
        self._dispatcher: tuple | None = None
        self._waiting: set[str] = set()  # certificates not cached yet
        self._memo: dict = {}  # claims already checked, for resolve()
        self._business_line_cas = False
        self._make_chain = self._chains_builder()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._resolve_needed = False
        self._settle_by: float | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._config_timer: asyncio.TimerHandle | None = None
        self._resolved_with: InjectorConfig | None = None  # the injector config of the last resolution

    def _chains_builder(self) -> envoy.Chains:
        s = self.s
        return envoy.Chains(s.gateway_min_tls_version, tuple(s.gateway_ecdh_curves), s.gateway_ocsp_staple_policy,
                            s.gateway_handshake_timeout_seconds, cluster_domain=s.cluster_domain,
                            business_line_cas=self._business_line_cas)

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
        if self.status_writer is not None:
            self.status_writer.stop()
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
        if name in self.tenants or name in self._upstream_names():
            self._waiting.discard(name)
            # The last certificate a change waited for goes out at once; within a burst (thousands
            # being issued) the debounce still gathers them.
            self._schedule(False, now=not self._waiting)

    def _schedule(self, resolve_claims: bool, now: bool = False) -> None:
        self._resolve_needed |= resolve_claims
        if now and self._timer is not None and not self._resolve_needed:
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._timer = self.loop.call_later(0 if now else self.s.debounce_seconds, self._update)

    def _update(self) -> None:
        self._timer = None
        try:
            if self._resolve_needed and self.feed.synced:
                self._resolve_needed = False
                self._resolved_with = config = self.config()
                if config.business_line_cas != self._business_line_cas:  # other clusters: rebuild chains
                    self._business_line_cas = config.business_line_cas
                    # The shards' listeners hold the old chains: rebuilt too, whatever their members.
                    self._make_chain, self._chains, self._shards = self._chains_builder(), {}, {}
                objects = self.feed.objects()
                resolved = resolve(objects, config, self.feed.labels_of, self._memo)
                self.apply(resolved)
                if self.status_writer is not None:
                    self.status_writer.sync(objects, resolved)
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
        self._keep_upstreams(wanted.values())
        self._waiting = {n for n in [*wanted, *self._upstream_names()] if self.cache.get(n) is None}
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

    def _keep_upstreams(self, tenants) -> None:
        """The gateway's own certificate and trust bundle for each environment (and business
        line) whose pods a tenant's backend is, over mTLS; none for the others."""
        wanted = {u for t in tenants if (u := envoy.upstream(t, self._business_line_cas)) is not None}
        for u in set(self.upstreams) - wanted:
            for name in self.upstreams.pop(u):
                self.renewer.remove(name)
        for u in wanted - set(self.upstreams):
            self.upstreams[u] = (envoy.identity_secret(u), envoy.trust_secret(u))
            self.renewer.add(SecretSpec(envoy.identity_secret(u), material.TLS_CERTIFICATE, identity=u), self.source)
            self.renewer.add(SecretSpec(envoy.trust_secret(u), material.VALIDATION_CONTEXT, identity=u), self.source)
        self._backends = {u: c for u, c in self._backends.items() if u is None or u in wanted}

    def _upstream_names(self) -> set[str]:
        return {n for pair in self.upstreams.values() for n in pair}

    def _ready(self, t: Claim) -> bool:
        """A tenant is served once its certificate is cached and, over mTLS, the gateway's own
        identity and trust for its backend are too (the cluster would not warm without them)."""
        if self.cache.get(envoy.secret_name(t)) is None:
            return False
        u = envoy.upstream(t, self._business_line_cas)
        return u is None or all(self.cache.get(n) is not None for n in self.upstreams.get(u, ("?",)))

    def _settling(self) -> bool:
        """True while a (re)started agent still waits for its tenants' first certificates. An
        Envoy that outlived the agent keeps its listener until the first answer: answering with
        the few tenants issued so far would drop the others until they are issued again."""
        if self._settle_by is None:
            return False
        pending = [n for n in [*self.tenants, *self._upstream_names()]
                   if self.cache.get(n) is None and n not in self.renewer.failing]
        if self.feed.synced and (not pending or self.loop.time() >= self._settle_by):
            self._settle_by = None
            return False
        if self._deadline is None:  # look again at the deadline: failures wake nobody
            self._deadline = self.loop.call_later(max(0.0, self._settle_by - self.loop.time()),
                                                   self._schedule, False)
        return True

    def publish(self) -> None:
        served = [t for t in self.tenants.values() if self._ready(t)]
        TENANTS.labels("served").set(len(served))
        TENANTS.labels("waiting").set(len(self.tenants) - len(served))
        if self._settling():
            return
        for t in served:
            if t not in self._chains:
                host = envoy.backend_host(t, self.s.gateway_backend, self.s.cluster_domain)
                self._chains[t] = self._make_chain(t, host)
        by_shard: dict[int, list[Claim]] = {}
        for t in served:
            by_shard.setdefault(shards.shard_of(t, self.s.gateway_shards), []).append(t)
        # The clusters first: on the one ADS stream Envoy then knows them before the chains using them.
        clusters = {}
        for u in {envoy.upstream(t, self._business_line_cas) for t in served}:
            if u not in self._backends:
                self._backends[u] = envoy.backends(self.s.gateway_max_connections, u, self.s.trust_domain)
            clusters[envoy.backends_name(u)] = self._backends[u]
        for k in by_shard:
            if k not in self._shard_clusters:
                self._shard_clusters[k] = shards.shard_cluster(k, self.s.gateway_max_connections)
            clusters[shards.shard_name(k)] = self._shard_clusters[k]
        self.stores[CLUSTER].replace(clusters)
        self.stores[LISTENER].replace(self._listeners(by_shard))
        self.published = self.feed.synced

    def _listeners(self, by_shard: dict[int, list[Claim]]) -> dict:
        """The public listener and one internal listener per shard; a shard whose tenants did not
        change keeps the very message it had (nothing re-serialized, nothing new for Envoy)."""
        out = {}
        for k, tenants in by_shard.items():
            members = frozenset(tenants)
            cached = self._shards.get(k)
            if cached is None or cached[0] != members:
                cached = (members, shards.shard_listener(k, [self._chains[t] for t in tenants]))
                self._shards[k] = cached
            out[shards.shard_name(k)] = cached[1]
        self._shards = {k: v for k, v in self._shards.items() if k in by_shard}
        if not by_shard:
            return {}
        key = tuple(sorted((k, self._shards[k][0]) for k in by_shard))
        if self._dispatcher is None or self._dispatcher[0] != key:  # the names of 10,000 tenants: only on change
            hostnames = {k: [h for t in tenants for h in t.hostnames] for k, tenants in by_shard.items()}
            self._dispatcher = (key, shards.dispatcher(hostnames, self.s.gateway_address, self.s.gateway_port))
        out[envoy.LISTENER_NAME] = self._dispatcher[1]
        return out

    def knows(self, name: str) -> bool:
        """Names Envoy may rightly ask for: the tenants', and, until the claims are first read
        (a restarted agent, an Envoy that remembers), any tenant name."""
        return (name in self.tenants or name in self._upstream_names()
                or (not self.resolved and name.startswith(("gateway:", "gateway-identity:", "gateway-trust:"))))

    def status(self) -> dict:
        waiting = sorted(n for n in self.tenants if not self._ready(self.tenants[n]))
        mine = {*self.tenants, *self._upstream_names()}
        failing = {n: r for n, r in self.renewer.failing.items() if n in mine}
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
