"""State-of-the-world streams: StreamSecrets, and the wildcard sub-streams that ADS uses for
listeners and clusters."""
from __future__ import annotations

import secrets

from envoy.service.discovery.v3 import discovery_pb2

from sds_core import logs
from sds_core.sds import metrics
from sds_core.sds.cache import Entry
from sds_core.sds.streams import (MAX_PER_RESPONSE, TYPE_URL, Stream, audit_fields, check_type, nacked, version_of,
                                  warn)


class SotwStream(Stream):
    def __init__(self, cache, knows, api: str = "sotw", type_url: str = TYPE_URL):
        super().__init__(api, cache, knows, type_url)
        self.nonce = ""

    def _accept(self, req: discovery_pb2.DiscoveryRequest) -> bool:
        """Count the ACK or NACK a request carries; False for a stale nonce (no reply)."""
        if req.node.id:
            self.node = req.node.id
        if req.response_nonce and req.response_nonce != self.nonce:
            metrics.STALE.inc()
            return False
        if nacked(req):
            metrics.NACKS.labels(self.api).inc()
            warn("nack", "Envoy rejected a response; not resending", node=logs.clip(self.node), type_url=self.type_url,
                  names=logs.clip(",".join(req.resource_names), 400), error=logs.clip(req.error_detail.message, 400))
        elif req.response_nonce:
            metrics.ACKS.labels(self.api).inc()
        return True

    def on_request(self, req: discovery_pb2.DiscoveryRequest):
        check_type(req.type_url, self.type_url)
        if not self._accept(req):
            return
        names = set(req.resource_names)
        if not req.response_nonce:
            # A request without a nonce opens a (new) subscription, e.g. after a ConfigSource
            # change (envoy #47309): every requested name must be answered again.
            self.sent.clear()
        for gone in self.subscribed - names:
            self._drop(gone)
        new = names - self.subscribed if req.response_nonce else names
        self.subscribed = names
        yield from self._respond(self.ready_entries(new))

    def on_change(self, name: str):
        if name in self.subscribed:
            yield from self._respond(self.ready_entries([name]))

    def _respond(self, entries: list[tuple[str, Entry]]):
        for i in range(0, len(entries), MAX_PER_RESPONSE):
            batch = entries[i : i + MAX_PER_RESPONSE]
            version = version_of(batch)
            self.nonce = secrets.token_hex(8)
            for name, entry in batch:
                self.sent[name] = entry.version
                logs.audit("served", name, api=self.api, node=self.node, **audit_fields(entry))
            metrics.PUSHES.labels(self.api).inc(len(batch))
            yield discovery_pb2.DiscoveryResponse(
                version_info=version, type_url=self.type_url, nonce=self.nonce,
                resources=[e.resource for _, e in batch],
            )


class WildcardStream(SotwStream):
    """Listeners and clusters (gateway mode): Envoy subscribes to all of them, and every response
    carries the whole set, since a state-of-the-world LDS/CDS response that leaves a resource out
    removes it."""

    # One response in flight at a time: changes made while Envoy applies one are sent together
    # once it answers. A listener of 10,000 filter chains costs Envoy ~2 s of CPU per update;
    # sending every intermediate state would queue dozens of them.
    inflight = False
    dirty = False
    # Envoy has asked for this type. Until then nothing is pushed: Envoy asks for listeners only
    # once its clusters have warmed (an mTLS cluster waits for its secrets), and drops a response
    # of a type it has not subscribed to yet ("no current subscribers").
    opened = False

    def on_request(self, req: discovery_pb2.DiscoveryRequest):
        if not self._accept(req):
            return
        if not req.response_nonce:  # a (re)subscription: everything, now, even if sent before
            self.opened, self.inflight = True, False
            self.sent.pop("*", None)
            yield from self._respond_all()
        elif self.inflight:  # the ACK or NACK of the response in flight
            self.inflight = False
            if self.dirty:
                yield from self._respond_all()

    def on_change(self, name: str):
        if not self.opened:
            return
        if self.inflight:
            self.dirty = True
            return
        yield from self._respond_all()

    def _respond_all(self):
        if not self.cache.ready:
            return  # answered at the store's first replace() (its change notice)
        self.dirty = False
        entries = [(n, self.cache.get(n)) for n in self.cache.names()]
        version = version_of(entries)
        if self.sent.get("*") == version:
            return
        self.sent["*"] = version
        self.nonce = secrets.token_hex(8)
        self.inflight = True
        metrics.PUSHES.labels(self.api).inc(len(entries))
        yield discovery_pb2.DiscoveryResponse(version_info=version, type_url=self.type_url, nonce=self.nonce,
                                              resources=[e.resource for _, e in entries])


