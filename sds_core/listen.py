"""Bind a listening TCP socket before anything is announced: a port in use is a clear error at
start-up, not a traceback after a "serving" line. Used by the agent and the webhook."""
from __future__ import annotations

import socket


def bind_tcp(host: str, port: int, what: str):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"{what} {host}:{port}: {e.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock
