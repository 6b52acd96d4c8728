"""AdmissionReview v1 in, AdmissionReview v1 out: parse the review, ask the decider for the one
verdict, build the response from it, count and log it. Bad input is a clear 400 (when no uid can
be echoed) or a denial with a readable message — never a 500."""
from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable

import orjson

from sds_core.policy.config import InjectorConfig
from sds_core.reasons import Reason

from . import injector, metrics
from .verdict import Verdict, deny, skip, status_reason

log = logging.getLogger("webhook.admission")
API_VERSION = "admission.k8s.io/v1"


class BadRequest(ValueError):
    pass


def respond(uid: str, v: Verdict) -> tuple[Verdict, bytes]:
    """The AdmissionReview for a verdict. A patch that cannot be encoded (a field of the pod
    nested beyond the encoder's 255 levels, which no Pod field is) becomes a clear 400 denial."""
    resp: dict = {"uid": uid, "allowed": v.allowed}
    if not v.allowed:
        resp["status"] = {"code": v.code, "message": v.message, "reason": status_reason(v.code)}
    if v.patch:
        try:
            encoded = orjson.dumps(v.patch)
        except orjson.JSONEncodeError:
            return respond(uid, deny(Reason.TOO_DEEP, "the pod nests deeper than 255 levels (an unknown field?); "
                                     "no Pod field does: remove it", 400))
        resp["patchType"] = "JSONPatch"
        resp["patch"] = base64.b64encode(encoded).decode()
    if v.warnings:
        resp["warnings"] = list(v.warnings)
    return v, orjson.dumps({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": resp})


def record(v: Verdict, fields: dict) -> None:
    """One place that counts and logs every answer."""
    metrics.REQUESTS.labels(v.result).inc()
    if v.result == "injected":
        metrics.INJECTIONS.inc()
        log.info("injected", extra={"fields": fields})
    elif v.result == "skipped":
        metrics.SKIPS.labels(v.reason).inc()
        log.info("skipped", extra={"fields": fields})
    elif v.result == "denied":
        metrics.DENIALS.labels(v.reason).inc()
        log.info("denied: %s", v.message, extra={"fields": fields})
    else:
        metrics.ERRORS.labels(v.reason).inc()


def parse_review(body: bytes) -> dict:
    try:
        review = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"body is not JSON: {e}") from None
    if not isinstance(review, dict):
        raise BadRequest("body is not a JSON object")
    if review.get("apiVersion") != API_VERSION or review.get("kind") != "AdmissionReview":
        raise BadRequest(f"expected apiVersion {API_VERSION}, kind AdmissionReview; got "
                         f"{review.get('apiVersion')!r}, {review.get('kind')!r} "
                         "(set admissionReviewVersions: [v1] in the webhook configuration)")
    req = review.get("request")
    if not isinstance(req, dict) or not isinstance(req.get("uid"), str) or not req["uid"]:
        raise BadRequest("AdmissionReview has no request.uid")
    return req


def noop(body: bytes) -> bytes:
    """Parse the review and allow it unchanged: the benchmarks' baseline."""
    try:
        uid = parse_review(body)["uid"]
    except BadRequest:
        uid = ""
    return respond(uid, skip(Reason.NOOP))[1]


def handle(body: bytes, config: Callable[[], InjectorConfig], namespace_labels=None,
           decider: Callable[..., Verdict] | None = None) -> tuple[int, bytes]:
    """Returns (HTTP status, response body): parse, decide (pods by default; `decider` for the
    workload check), respond, record."""
    start = time.perf_counter()
    try:
        try:
            req = parse_review(body)
        except BadRequest as e:
            metrics.REQUESTS.labels("bad_request").inc()
            return 400, orjson.dumps({"error": str(e)})
        uid = req["uid"]
        fields: dict = {"uid": uid}
        try:
            verdict = (decider or injector.review)(req, config(), namespace_labels, fields)
        except Exception as e:  # any bug becomes a denial that says so, not a 500
            log.exception("internal error", extra={"fields": fields})
            verdict = Verdict("error", type(e).__name__, f"sds-injector internal error ({type(e).__name__}); "
                              f"see the webhook log for request uid {uid}", 500)
        verdict, out = respond(uid, verdict)
        fields["reason"] = verdict.reason
        record(verdict, fields)
        return 200, out
    finally:
        metrics.LATENCY.observe(time.perf_counter() - start)
