"""Incremental streams: DeltaSecrets."""
from __future__ import annotations

import secrets

from envoy.service.discovery.v3 import discovery_pb2

from sds_core import logs
from sds_core.sds import metrics
from sds_core.sds.cache import Entry
from sds_core.sds.streams import MAX_PER_RESPONSE, TYPE_URL, Stream, audit_fields, check_type, nacked, warn


class DeltaStream(Stream):
    def __init__(self, cache, knows):
        super().__init__("delta", cache, knows)
        self.first = True

    def on_request(self, req: discovery_pb2.DeltaDiscoveryRequest):
        check_type(req.type_url)
        if req.node.id:
            self.node = req.node.id
        if nacked(req):
            metrics.NACKS.labels(self.api).inc()
            warn("nack", "Envoy rejected secrets; not resending", node=logs.clip(self.node),
                  error=logs.clip(req.error_detail.message, 400))
        elif req.response_nonce:
            metrics.ACKS.labels(self.api).inc()
        if self.first:
            # What Envoy already holds (e.g. from before an agent restart) need not be resent.
            self.sent.update(req.initial_resource_versions)
            self.first = False
        for name in req.resource_names_unsubscribe:
            self._drop(name)
        wanted = list(req.resource_names_subscribe)
        # Re-subscribing a name already held is a request to send it again (envoy #47309).
        force = {n for n in wanted if n in self.subscribed}
        self.subscribed.update(wanted)
        for name in force:
            self.sent.pop(name, None)
        yield from self._respond(self.ready_entries(wanted), [])

    def on_change(self, name: str):
        if name not in self.subscribed:
            return
        if self.cache.get(name) is None and name in self.sent:
            del self.sent[name]
            yield from self._respond([], [name])
        else:
            yield from self._respond(self.ready_entries([name]), [])

    def _respond(self, entries: list[tuple[str, Entry]], removed: list[str]):
        for i in range(0, max(len(entries), len(removed)), MAX_PER_RESPONSE):
            batch = entries[i : i + MAX_PER_RESPONSE]
            for name, entry in batch:
                self.sent[name] = entry.version
                logs.audit("served", name, api=self.api, node=self.node, **audit_fields(entry))
            metrics.PUSHES.labels(self.api).inc(len(batch))
            yield discovery_pb2.DeltaDiscoveryResponse(
                type_url=TYPE_URL,
                nonce=secrets.token_hex(8),
                resources=[discovery_pb2.Resource(name=n, version=e.version, resource=e.resource)
                           for n, e in batch],
                removed_resources=removed[i : i + MAX_PER_RESPONSE],
            )


