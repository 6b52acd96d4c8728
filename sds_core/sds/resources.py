"""Listeners and clusters served over ADS (gateway mode), beside the secrets of the cache.

Same interface as SecretCache (get, names, watch, content-derived versions) so one stream class
serves both; these hold configuration, never key material."""
from __future__ import annotations

import asyncio
import hashlib

from google.protobuf import any_pb2, message

from .cache import Entry

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


class ResourceStore:
    def __init__(self, type_url: str) -> None:
        self.type_url = type_url
        self._entries: dict[str, Entry] = {}
        self._msgs: dict[str, message.Message] = {}  # what each entry was made from
        self._watchers: set = set()
        # Nothing is said before the first replace(): an empty answer would remove what Envoy has.
        self.ready = False

    def get(self, name: str) -> Entry | None:
        return self._entries.get(name)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def replace(self, resources: dict[str, message.Message]) -> bool:
        """Make the store hold exactly `resources`; watchers hear once per call that changed it
        (a state-of-the-world type is always sent whole, so one notice is enough)."""
        new: dict[str, Entry] = {}
        for name, msg in resources.items():
            if self._msgs.get(name) is msg:  # the same object as last time: not serialized again
                new[name] = self._entries[name]
                continue
            packed = any_pb2.Any()
            packed.Pack(msg, deterministic=True)
            version = hashlib.sha256(packed.value).hexdigest()[:16]
            old = self._entries.get(name)
            new[name] = old if old is not None and old.version == version else Entry(version, None, packed)
        changed = not self.ready or new.keys() != self._entries.keys() or any(new[n] is not self._entries[n] for n in new)
        self._entries, self.ready = new, True
        self._msgs = dict(resources)
        if changed:
            for queue in self._watchers:
                queue.put_nowait("")
        return changed

    def watch(self, queue: asyncio.Queue) -> None:
        self._watchers.add(queue)

    def unwatch(self, queue) -> None:
        self._watchers.discard(queue)
