"""The webhook's metrics, in a registry of their own: the webhook port is open to the pod network,
and the issuer running in the same process keeps per-namespace metrics (certificate names, expiry)
in the default registry, served only on its operations port."""
from prometheus_client import CollectorRegistry, Counter, GCCollector, Histogram, PlatformCollector, ProcessCollector

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # the process's own figures (memory, CPU, files) are no tenant's
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)
REQUESTS = Counter("sds_webhook_requests_total", "AdmissionReview requests", ["result"], registry=REGISTRY)
INJECTIONS = Counter("sds_webhook_injections_total", "Pods injected", registry=REGISTRY)
SKIPS = Counter("sds_webhook_skips_total", "Pods admitted unchanged", ["reason"], registry=REGISTRY)
DENIALS = Counter("sds_webhook_denials_total", "Pods denied", ["reason"], registry=REGISTRY)
ERRORS = Counter("sds_webhook_errors_total", "Requests that failed inside the webhook", ["kind"], registry=REGISTRY)
LATENCY = Histogram("sds_webhook_latency_seconds", "Time to answer an AdmissionReview",
                    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=REGISTRY)
