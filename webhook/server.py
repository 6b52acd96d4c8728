"""uvicorn over HTTPS (TLS ≥ 1.2) whose certificate files are re-read when they change: new
handshakes get the new certificate, in-flight connections are untouched, no restart."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl

import uvicorn

from sds_core.policy.config import ServerSettings
from .deadline import with_timeout
from sds_core.listen import bind_tcp
import signal
import importlib.util

log = logging.getLogger("webhook.server")
SHUTDOWN_GRACE_SECONDS = 2
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


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


def _bound_tls_handshakes(loop: asyncio.AbstractEventLoop, seconds: float) -> None:
    """uvicorn creates its server without `ssl_handshake_timeout`, so a client that connects and
    never sends its ClientHello holds a connection (and a concurrency slot) for asyncio's default
    60 s. Every TLS server of this loop gets `seconds` instead."""
    if getattr(loop, "_sds_handshake_timeout", None) is not None:
        return
    create = loop.create_server

    async def create_server(*args, **kwargs):
        if kwargs.get("ssl") is not None and kwargs.get("ssl_handshake_timeout") is None:
            kwargs["ssl_handshake_timeout"] = seconds
        return await create(*args, **kwargs)

    # asyncio has no per-loop default for TLS handshake deadlines: wrap the loop's own method.
    loop.create_server = create_server  # type: ignore[method-assign]
    loop._sds_handshake_timeout = seconds  # type: ignore[attr-defined]


async def serve_app(app, host: str, port: int, cert_file, key_file, name: str,
                    stop: asyncio.Event | None = None, read_timeout: float = 10.0,
                    max_concurrency: int = 1000, sock=None) -> None:
    """One uvicorn server until `stop` is set; TLS (≥ 1.2, certificate re-read on change) when
    files are given."""
    tls = cert_file is not None

    sock = sock or bind_tcp(host, port, f"{name} port")
    config = uvicorn.Config(
        app, log_level="warning", access_log=False,
        ssl_certfile=str(cert_file) if tls else None, ssl_keyfile=str(key_file) if tls else None,
        http=with_timeout(read_timeout) if _has("httptools") else "h11",
        lifespan="off",
        # Beyond this many connections and requests at once, new requests get 503 at once
        # instead of piling up in memory.
        limit_concurrency=max_concurrency,
        # Requests take milliseconds; an idle TLS keep-alive connection must not hold a stop.
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )
    config.load()
    watcher = None
    if config.ssl is not None:
        config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        # TLS 1.2: forward-secret AEAD suites only (no CBC); TLS 1.3's are all AEAD.
        config.ssl.set_ciphers(TLS12_CIPHERS)
        watcher = asyncio.create_task(watch_certificate(config.ssl, cert_file, key_file))
    if tls:
        _bound_tls_handshakes(asyncio.get_running_loop(), read_timeout)
    server = uvicorn.Server(config)
    # Several servers share one loop: the caller owns the signals, uvicorn must not take them.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    stopper = asyncio.create_task((stop or asyncio.Event()).wait())
    try:
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:  # announce only once bound
            log.info(f"{name} serving", extra={"fields": {"port": port, "tls": tls}})
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await task
    finally:
        stopper.cancel()
        if watcher:
            watcher.cancel()


async def serve(app, settings: ServerSettings, also=(), sock=None) -> None:
    """The webhook, and the other servers of this process (`also`: functions of a stop event
    returning a coroutine), until SIGTERM/SIGINT; the first to end ends them all."""

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(serve_app(app, settings.host, settings.port, settings.cert_file,
                                           settings.key_file, "webhook", stop, settings.read_timeout_seconds,
                                           settings.max_concurrency, sock))]
    tasks += [asyncio.create_task(run(stop)) for run in also]
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
