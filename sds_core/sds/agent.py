"""Wires settings → sources → cache → renewal → SDS server, and runs until SIGTERM."""
from __future__ import annotations

from collections.abc import Callable

import asyncio
import logging
import signal

from sds_core.sds import material
from .cache import SecretCache
from .health import HealthServer
from sds_core.listen import bind_tcp
from .renewal import Renewer
from .server import SdsServer, start_grpc
from .settings import AgentSettings
from .sources.base import SecretSpec, Source

log = logging.getLogger("sds.agent")


def make_source(kind: str, settings: AgentSettings) -> Source:
    if kind == "issuer":
        from .sources.issuer import IssuerSource  # lazy: per source and feature

        return IssuerSource(settings)
    if kind == "local-ca":
        from .sources.local_ca import LocalCASource  # lazy: per source and feature

        return LocalCASource(settings)
    if kind == "files":
        from .sources.files import FilesSource  # lazy: per source and feature

        return FilesSource(settings)
    if kind == "vault":
        try:
            from .sources.vault import VaultSource  # lazy: per source and feature
        except ImportError:
            raise ValueError("source 'vault' is not available in this build of the agent; "
                             "use local-ca or files") from None
        return VaultSource(settings)
    if kind == "aws":
        try:
            from .sources.aws import AwsSource  # lazy: per source and feature
        except ImportError:
            raise ValueError("source 'aws' is not available in this build of the agent (boto3 is missing)") from None
        return AwsSource(settings)
    raise ValueError(f"unknown source {kind!r}")


def specs_of(settings: AgentSettings) -> list[SecretSpec]:
    alias = settings.serve_as
    return [SecretSpec(n, material.TLS_CERTIFICATE, serve_as=alias.get(n, "")) for n in settings.certificates] + [
        SecretSpec(n, material.VALIDATION_CONTEXT, serve_as=alias.get(n, "")) for n in settings.trust_bundles
    ]


class Agent:
    def __init__(self, settings: AgentSettings, sources: dict[str, Source] | None = None,
                 stores: dict | None = None, status: Callable[[], dict] | None = None,
                 knows: Callable[[str], bool] | None = None):
        """`stores`: listeners and clusters to serve over ADS too (gateway mode). `status`: what
        /readyz reports, `knows`: which names are expected (unknown ones are warned about); both
        default to the renewer's view."""
        self.settings = settings
        self.stores = stores
        self._status, self._knows = status, knows
        self.cache = SecretCache()
        specs = specs_of(settings)
        if sources is None:
            by_kind = {k: make_source(k, settings) for k in {settings.source_for(s.name) for s in specs}}
            sources = {s.name: by_kind[settings.source_for(s.name)] for s in specs}
        stapler = None
        if settings.ocsp_stapling:
            from .stapling import Stapler  # lazy: per source and feature

            stapler = Stapler(settings, self.cache)
        self.renewer = Renewer(settings, self.cache, specs, sources, stapler=stapler)
        self.grpc: SdsServer | None = None
        self.http: HealthServer | None = None

    async def start(self) -> None:
        s = self.settings
        # Bind everything before announcing anything: a busy port is a clear error, and leaves
        # no socket file behind.
        http_socket = bind_tcp(s.http_host, s.http_port, "health port") if s.http_port else None
        # Serve before the first fetch: Envoy may already be asking, and its requests are
        # held as pending until the secrets arrive (istio #22443).
        self.grpc = await start_grpc(self.cache, self._knows or self.renewer.knows, s.socket_path, s.socket_mode_int, self.stores)
        await self.renewer.start()
        if http_socket is not None:
            self.http = HealthServer(self._status or self.renewer.status)
            await self.http.start(http_socket)
        log.info("SDS agent serving", extra={"fields": {
            "socket": str(s.socket_path), "names": list(self.renewer.specs), "http_port": s.http_port}})

    async def stop(self, grace: float = 1.0) -> None:
        if self.http is not None:
            await self.http.stop()
            self.http = None
        await self.renewer.stop()
        if self.grpc:
            await self.grpc.stop(grace)
            self.grpc = None
        log.info("SDS agent stopped")

    async def run_until_signalled(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # SIGHUP: renew every secret now (an operator's forced rotation).
        loop.add_signal_handler(signal.SIGHUP, self.renewer.trigger_all)
        try:
            await self.start()
            await stop.wait()
        finally:
            await self.stop()
