"""uvicorn over HTTPS (TLS ≥ 1.2) whose certificate files are re-read when they change: new
handshakes get the new certificate, in-flight connections are untouched, no restart."""
from __future__ import annotations

import asyncio
import logging
import os
import ssl

import uvicorn

from .config import ServerSettings

log = logging.getLogger("webhook.server")


def _stamp(*paths) -> tuple:
    return tuple((os.path.realpath(p), st.st_mtime_ns, st.st_size) for p in paths for st in [os.stat(p)])


async def watch_certificate(ctx: ssl.SSLContext, cert_file, key_file, interval: float = 1.0) -> None:
    seen = _stamp(cert_file, key_file)
    while True:
        await asyncio.sleep(interval)
        try:
            now = _stamp(cert_file, key_file)
            if now != seen:
                # The SSLContext is shared by the listening socket; loading into it changes what
                # new connections present. A half-written pair fails to load and is retried.
                ctx.load_cert_chain(cert_file, key_file)
                seen = now
                log.info("serving certificate reloaded", extra={"fields": {"cert": str(cert_file)}})
        except (OSError, ssl.SSLError) as e:
            log.warning("certificate reload failed, keeping the current one: %s", type(e).__name__)


async def serve(app, settings: ServerSettings) -> None:
    tls = settings.cert_file is not None
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
        ssl_certfile=str(settings.cert_file) if tls else None, ssl_keyfile=str(settings.key_file) if tls else None,
        http="httptools" if _has("httptools") else "h11",
        lifespan="off",
    )
    config.load()
    watcher = None
    if tls:
        config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        watcher = asyncio.create_task(watch_certificate(config.ssl, settings.cert_file, settings.key_file))
    server = uvicorn.Server(config)
    log.info("webhook serving", extra={"fields": {"port": settings.port, "tls": tls}})
    try:
        await server.serve()
    finally:
        if watcher:
            watcher.cancel()


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
