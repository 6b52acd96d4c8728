"""In-memory store of the secrets being served, with change notification to SDS streams.

Private keys live here and nowhere else: never on disk, never in a log line."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf import any_pb2

from .material import SecretMaterial


class Watcher(Protocol):
    """Told the name of every changed or removed entry (an asyncio.Queue is one)."""

    def put_nowait(self, item: Any, /) -> None: ...


@dataclass(frozen=True)
class Entry:
    """What a stream sends: a content-derived version and the packed resource, packed once and
    shared by every stream. Listener and cluster resources (gateway mode) have no material."""

    version: str
    material: SecretMaterial | None
    resource: any_pb2.Any


@dataclass(frozen=True)
class SecretEntry(Entry):
    material: SecretMaterial


class SecretCache:
    def __init__(self) -> None:
        self._entries: dict[str, SecretEntry] = {}
        self._watchers: set[Watcher] = set()

    def get(self, name: str) -> SecretEntry | None:
        return self._entries.get(name)

    def put(self, name: str, material: SecretMaterial) -> SecretEntry | None:
        """Store `material`; returns the new entry, or None when the content is unchanged."""
        old = self._entries.get(name)
        if old is not None and old.material.digest == material.digest:
            return None
        resource = any_pb2.Any()
        resource.Pack(material.to_proto(name))
        # A content-derived version stays meaningful across agent restarts, so an Envoy that
        # reconnects with initial_resource_versions is only skipped when it truly has this secret.
        entry = SecretEntry(material.digest[:16], material, resource)
        self._entries[name] = entry
        self._notify(name)
        return entry

    def remove(self, name: str) -> bool:
        if self._entries.pop(name, None) is None:
            return False
        self._notify(name)
        return True

    def watch(self, queue: Watcher) -> None:
        """Names of changed or removed entries are put on `queue`."""
        self._watchers.add(queue)

    def unwatch(self, queue: Watcher) -> None:
        self._watchers.discard(queue)

    def _notify(self, name: str) -> None:
        for queue in self._watchers:
            queue.put_nowait(name)
