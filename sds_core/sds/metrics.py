"""Prometheus metrics of the agent (one registry per process, the default one)."""
import time

from prometheus_client import Counter, Gauge

PUSHES = Counter("sds_pushes_total", "Secrets sent to Envoy", ["api"])
ACKS = Counter("sds_acks_total", "Responses acknowledged by Envoy", ["api"])
NACKS = Counter("sds_nacks_total", "Responses rejected by Envoy", ["api"])
STALE = Counter("sds_stale_nonce_requests_total", "Requests ignored for a stale nonce")
PENDING = Gauge("sds_pending_names", "Names subscribed by Envoy that the agent does not have yet")
UNKNOWN = Counter("sds_unknown_name_requests_total", "Subscriptions to names the agent is not configured for")
STREAMS = Gauge("sds_streams_active", "Open SDS streams", ["api"])
SOURCE_ERRORS = Counter("sds_source_errors_total", "Failed fetches from a source", ["source", "reason"])
REJECTED = Counter("sds_secrets_rejected_total", "Secrets that failed validation", ["reason"])
ROTATIONS = Counter("sds_secret_updates_total", "New secret versions stored", ["kind"])
EXPIRY = Gauge("sds_secret_expiry_seconds", "Seconds until the served secret expires (computed when scraped)",
               ["name"])
NOT_AFTER = Gauge("sds_secret_not_after_timestamp_seconds", "When the served certificate expires (Unix time)",
                  ["name"])
DEGRADED = Gauge("sds_degraded", "1 while a source is failing and cached secrets are served")
VAULT_AUTH_FAILURES = Counter("sds_vault_auth_failures_total", "Failed Vault logins")
VAULT_SWITCHES = Counter("sds_vault_address_switches_total", "Changes of the Vault address in use")
OCSP_ERRORS = Counter("sds_ocsp_errors_total", "OCSP responses not fetched or not stapleable", ["reason"])
OCSP_REVOKED = Counter("sds_ocsp_revoked_total", "Served certificates an OCSP response said were revoked")
STAPLE_EXPIRY = Gauge("sds_ocsp_staple_expiry_seconds", "Seconds until the stapled response's nextUpdate "
                      "(computed when scraped)", ["name"])
STAPLE_NEXT_UPDATE = Gauge("sds_ocsp_staple_next_update_timestamp_seconds",
                           "When the stapled response's nextUpdate falls (Unix time)", ["name"])


def report_deadline(seconds_gauge: Gauge, timestamp_gauge: Gauge, name: str, at) -> None:
    """A deadline as Prometheus wants it (the timestamp) and as people read it (seconds left,
    counted down at every scrape instead of frozen at the moment it was stored)."""
    timestamp_gauge.labels(name).set(at.timestamp())
    seconds_gauge.labels(name).set_function(lambda: at.timestamp() - time.time())


def clear_deadline(seconds_gauge: Gauge, timestamp_gauge: Gauge, name: str) -> None:
    """The deadline no longer exists (a secret withdrawn, a staple dropped): no series."""
    for gauge in (seconds_gauge, timestamp_gauge):
        try:
            gauge.remove(name)
        except KeyError:
            pass
