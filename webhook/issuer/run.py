"""Wires settings → Kubernetes client → CA Secret → caches → token verifier → Issuer → HTTPS."""
from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Callable

from sds_core.policy.config import InjectorConfig
from .audit import AuditLog, load_key
from sds_core.kube.health import ApiHealth

from .authority import Authority, Layout, Rotation, load_or_create
from .external import VaultSigner, load_external
from .plugin import load_plugin
from .publish import CAPublisher
from .limits import PodBuckets
from .cluster import ClusterCache
from .service import Issuer
from .settings import IssuerSettings
from .tokens import JwksVerifier, TokenReviewVerifier
from kubernetes import client
from sds_core.kube.client import api_client
import logging
import time
from ..server import serve_app
from .app import create_app, create_ops_app


def build(settings: IssuerSettings, config: Callable[[], InjectorConfig]) -> tuple[Issuer, ClusterCache]:
    api = api_client(settings.kubeconfig)
    core = client.CoreV1Api(api)
    settle = _settler(settings, core, config)
    authority = settle()
    health = ApiHealth(settings.api_refused_seconds)
    cluster = ClusterCache(api, gateway=bool(settings.gateway_identities), health=health,
                           namespace=settings.namespace).start()
    verifier: JwksVerifier | TokenReviewVerifier
    if settings.token_verifier == "jwks":
        verifier = JwksVerifier(api, settings.audience, settings.jwks_issuer)
    else:
        verifier = TokenReviewVerifier(api, settings.audience, settings.jwks_issuer, health=health)
    audit = AuditLog(settings.replica, settings.audit_file,
                     key=load_key(settings.audit_key_file) if settings.audit_key_file else None,
                     peers=lambda: cluster.peers(settings.namespace, settings.replica),
                     every_records=settings.audit_checkpoint_records, every_seconds=settings.audit_checkpoint_seconds)
    issuer = Issuer(authority, cluster, verifier, config, audit,
                    cert_ttl=dt.timedelta(seconds=settings.cert_ttl_seconds), max_dns_names=settings.max_dns_names,
                    overlap_seconds=settings.ca_overlap_seconds, gateways=settings.gateway_identities,
                    pod_limits=PodBuckets(settings.pod_issuance_per_minute, settings.pod_issuance_burst),
                    source_limits=PodBuckets(settings.source_refusals_per_minute, settings.source_refusals_burst),
                    crl=settings.crl)
    _start_background(settings, issuer, settle, core, config)
    return issuer, cluster


def _settler(settings: IssuerSettings, core, config: Callable[[], InjectorConfig]) -> Callable[[], Authority]:
    """What reads (and in self mode advances) the signing CAs: called at start and every refresh."""
    rotation = Rotation(before=settings.ca_rotate_before_seconds, propagation=settings.ca_propagation_seconds,
                        overlap=settings.ca_overlap_seconds, lifetime_days=settings.ca_lifetime_days)
    signer = None
    if settings.ca_mode == "vault":
        if not settings.vault_address:
            raise ValueError("ca_mode vault needs vault_address (ISSUER_VAULT_ADDRESS)")
        signer = VaultSigner(settings.vault_address, settings.vault_pki_path, settings.vault_timeout_seconds,
                             settings.vault_ca_cert, settings.vault_token_file, settings.vault_auth_role,
                             settings.vault_auth_mount)

    def settle() -> Authority:
        c = config()
        layout = Layout(tuple(c.environments), c.agent.trust_domain, c.agent.cluster_domain,
                        tuple(c.business_lines) if c.business_line_cas else (), tuple(settings.pod_cidrs))
        if signer is not None:
            return load_external(signer, layout)
        if settings.ca_mode == "plugin":
            return load_plugin(core, settings.namespace, settings.ca_plugin_secret, layout)
        return load_or_create(core, settings.namespace, settings.ca_secret, layout, rotation=rotation)
    return settle


def _start_background(settings: IssuerSettings, issuer: Issuer, settle, core, config) -> None:
    """The issuer's threads: CA refresh, audit checkpoints, the serving CA's publication, and the
    audit of revocation records."""
    cluster, audit = issuer.cluster, issuer.audit
    if settings.serving_ca_file is not None:
        publisher = CAPublisher(core, settings.serving_ca_file, lambda: config().agent.issuer.ca_config_map,
                                cluster.namespaces.all, every=settings.ca_publish_seconds,
                                resync=10 * settings.ca_publish_seconds)
        cluster.namespaces.add_listener(publisher.poke)
        threading.Thread(target=publisher.run, args=(threading.Event(),), name="ca-publisher", daemon=True).start()
    revocations = _audit_revocations(audit)
    cluster.on_revocations(revocations)
    revocations(cluster.revocations)  # those there before the listener: the same `seen`, audited once
    threading.Thread(target=_refresh, args=(issuer, settle, settings.ca_refresh_seconds), name="ca-refresh",
                     daemon=True).start()
    threading.Thread(target=_checkpoints, args=(audit, settings.audit_checkpoint_seconds), name="audit-checkpoints",
                     daemon=True).start()


def _audit_revocations(audit: AuditLog):
    """Each revocation record, audited once by each replica when it first sees it."""
    seen: set[str] = set()
    lock = threading.Lock()  # the informer's thread and start-up may both call it

    def listener(revocations) -> None:
        with lock:
            new = [rec for rec in revocations.records if rec.name not in seen]
            seen.update(rec.name for rec in new)
        for rec in new:
            fields = {k: v for k, v in rec.to_data().items() if k != "reason"}
            audit.record("revocation", rec.reason, record=rec.name, **fields)
    return listener


def _checkpoints(audit: AuditLog, every: float) -> None:
    while True:
        time.sleep(min(every, 5.0))
        audit.checkpoint_if_due()


def _refresh(issuer: Issuer, settle, every: float) -> None:
    """Rotations advance with the clock, and another replica may have advanced one (or added an
    environment): re-settle the Secret periodically. A failure keeps the current CAs."""

    while True:
        time.sleep(every)
        try:
            issuer.use(settle())
        except Exception as e:  # noqa: BLE001 - the API server unreachable: try again next round
            logging.getLogger("issuer").warning("CA Secret refresh failed: %s", type(e).__name__)


async def serve(settings: IssuerSettings, config: Callable[[], InjectorConfig], stop=None, sock=None,
                ops_sock=None) -> None:
    """The issuer port and, unless ops_port is 0, the operations port; `sock`/`ops_sock` when the
    caller bound them already (a busy port is found before anything starts)."""
    # Listing the cluster and settling the CA Secret block: keep the loop (and the webhook) free.
    issuer, cluster = await asyncio.to_thread(build, settings, config)
    stop = stop or asyncio.Event()
    servers = [serve_app(create_app(issuer, cluster.ready), settings.host, settings.port, settings.cert_file,
                         settings.key_file, "issuer", stop, sock=sock)]
    if settings.ops_port:
        servers.append(serve_app(create_ops_app(issuer, cluster.ready), settings.host, settings.ops_port,
                                 settings.cert_file, settings.key_file, "issuer operations", stop, sock=ops_sock))
    try:
        await asyncio.gather(*servers)
    finally:
        issuer.audit.checkpoint()  # at shutdown: the last records are confirmed too
        cluster.stop()
        logging.getLogger("issuer").info("issuer stopped")
