"""PEM files per name, as a mounted Kubernetes Secret or CSI volume lays them out:
<root>/<name>/tls.crt + tls.key (certificate) or ca.crt [+ ca.crl] (trust bundle)."""
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from sds_core.sds import material
from ..settings import AgentSettings
from .base import SecretSpec, Source, SourceError

FILES = {
    material.TLS_CERTIFICATE: ("tls.crt", "tls.key"),
    material.VALIDATION_CONTEXT: ("ca.crt", "ca.crl"),
}


def _signature(path: Path) -> tuple | None:
    # Stat through symlinks and record the resolved target: Kubernetes swaps the `..data`
    # symlink atomically, which changes the target even when size and mtime look alike.
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (os.path.realpath(path), st.st_ino, st.st_mtime_ns, st.st_size)


class FilesSource(Source):
    label = "files"

    def __init__(self, settings: AgentSettings):
        self.root = settings.files_root
        self.poll = settings.files_poll_seconds
        self._read: dict[str, list] = {}  # name -> file signatures as of the last fetch

    def _paths(self, spec: SecretSpec) -> list[Path]:
        return [self.root / spec.name / f for f in FILES[spec.kind]]

    async def fetch(self, spec: SecretSpec) -> material.SecretMaterial:
        first, second = self._paths(spec)
        # Before reading: a change landing after this is seen by `changes` even when its watch
        # starts later (gateway tenants are added while running).
        self._read[spec.name] = [_signature(p) for p in (first, second)]
        try:
            a = first.read_bytes()
            b = second.read_bytes() if second.exists() or spec.kind == material.TLS_CERTIFICATE else b""
        except FileNotFoundError as e:
            raise SourceError("missing", f"file not found: {e.filename}") from None
        except OSError as e:
            raise SourceError("unreadable", f"cannot read {e.filename}: {e.strerror}") from None
        if spec.kind == material.TLS_CERTIFICATE:
            return material.tls_certificate(a, b)
        return material.validation_context(a, b)

    async def changes(self, specs: Iterable[SecretSpec]) -> AsyncIterator[str]:
        # Polling rather than inotify: inotify misses the `..data` swap on some volume types
        # (envoy #39498) and does not work on network filesystems; a few stat calls per name
        # every 50 ms keep the propagation well under the 100 ms budget.
        specs = list(specs)
        seen = {s.name: self._read.get(s.name) or [_signature(p) for p in self._paths(s)] for s in specs}
        while True:
            await asyncio.sleep(self.poll)
            for spec in specs:
                now = [_signature(p) for p in self._paths(spec)]
                if now != seen[spec.name]:
                    seen[spec.name] = now
                    yield spec.name
