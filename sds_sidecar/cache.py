"""In-memory store of the secrets being served, with change notification to SDS streams.

Private keys live here and nowhere else: never on disk, never in a log line."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from google.protobuf import any_pb2

from .material import SecretMaterial


@dataclass(frozen=True)
class Entry:
    version: str
    material: SecretMaterial
    resource: any_pb2.Any  # packed once, shared by every stream


class SecretCache:
    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._watchers: set[asyncio.Queue] = set()

    def get(self, name: str) -> Entry | None:
        return self._entries.get(name)

    def put(self, name: str, material: SecretMaterial) -> Entry | None:
        """Store `material`; returns the new entry, or None when the content is unchanged."""
        old = self._entries.get(name)
        if old is not None and old.material.digest == material.digest:
            return None
        resource = any_pb2.Any()
        resource.Pack(material.to_proto(name))
        # A content-derived version stays meaningful across agent restarts, so an Envoy that
        # reconnects with initial_resource_versions is only skipped when it truly has this secret.
        entry = Entry(material.digest[:16], material, resource)
        self._entries[name] = entry
        self._notify(name)
        return entry

    def remove(self, name: str) -> bool:
        if self._entries.pop(name, None) is None:
            return False
        self._notify(name)
        return True

    def watch(self, queue: asyncio.Queue) -> None:
        """Names of changed or removed entries are put on `queue`."""
        self._watchers.add(queue)

    def unwatch(self, queue: asyncio.Queue) -> None:
        self._watchers.discard(queue)

    def _notify(self, name: str) -> None:
        for queue in self._watchers:
            queue.put_nowait(name)
