from prometheus_client import Counter, Histogram

REQUESTS = Counter("sds_webhook_requests_total", "AdmissionReview requests", ["result"])
INJECTIONS = Counter("sds_webhook_injections_total", "Pods injected")
SKIPS = Counter("sds_webhook_skips_total", "Pods admitted unchanged", ["reason"])
DENIALS = Counter("sds_webhook_denials_total", "Pods denied", ["reason"])
ERRORS = Counter("sds_webhook_errors_total", "Requests that failed inside the webhook", ["kind"])
LATENCY = Histogram("sds_webhook_latency_seconds", "Time to answer an AdmissionReview",
                    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
