"""AdmissionReview v1 in, AdmissionReview v1 out. Bad input is a clear 400 (when no uid can be
echoed) or a denial with a readable message — never a 500."""
from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from . import istio, metrics, podshape
from sds_core.policy.config import InjectorConfig
from .injector import decide
from .plan import check_owned_mounts
from sds_core.policy.selection import Denied
from sds_core.reasons import Reason

log = logging.getLogger("webhook.admission")
API_VERSION = "admission.k8s.io/v1"


class BadRequest(ValueError):
    pass


# metav1.StatusReason for each code a denial carries (kubectl shows it beside the message).
STATUS_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
                  422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable",
                  504: "Timeout"}


def status_reason(code: int) -> str:
    return STATUS_REASONS.get(code, "InternalError" if code >= 500 else "BadRequest")


@dataclass(frozen=True)
class Verdict:
    """The one answer to one AdmissionReview, whatever decided it (controller-runtime's
    admission.Response): allowed or not, why (`reason`: the metric label and log field), the
    message and code a denial shows, the patch an injection applies."""

    result: str  # injected | skipped | denied | error: the requests metric's label
    reason: str
    message: str = ""
    code: int = 200
    patch: list | None = None
    warnings: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.result in ("injected", "skipped")


def deny(reason: str, message: str, code: int) -> Verdict:
    return Verdict("denied", reason, message, code)


def skip(reason: str) -> Verdict:
    return Verdict("skipped", reason)


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
            verdict = (decider or decide_review)(req, config(), namespace_labels, fields)
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


def decide_review(req: dict, cfg: InjectorConfig, namespace_labels, fields: dict) -> Verdict:
    """Every check of one review, in order; the first that applies is the verdict. `fields`
    gathers what the log line says about the request."""
    kind = req.get("kind")
    if not isinstance(kind, dict):
        return deny(Reason.MALFORMED_REQUEST, "request.kind must be an object {group, version, kind}", 400)
    if (kind.get("group"), kind.get("kind")) != ("", "Pod"):
        return deny(Reason.NOT_A_POD, f"sds-injector only mutates pods, got {kind.get('group') or 'core'}/"
                    f"{kind.get('kind')}; check the rules of the MutatingWebhookConfiguration", 400)
    pod = req.get("object")
    ephemeral = req.get("subResource") == "ephemeralcontainers"
    if req.get("operation") != "CREATE" and not ephemeral:
        return skip(Reason.OPERATION)
    if not isinstance(pod, dict):
        return deny(Reason.MALFORMED_POD, "AdmissionReview request.object is missing or not an object", 400)
    if (shape := podshape.problem(req)) is not None:
        return deny(Reason.MALFORMED_POD, f"malformed pod: {shape}", 400)
    if ephemeral:
        return _ephemeral(pod)
    namespace = req.get("namespace") or (pod.get("metadata") or {}).get("namespace") or "default"
    meta = pod.get("metadata") or {}
    fields.update(namespace=namespace, pod=meta.get("generateName") or meta.get("name"),
                  dry_run=bool(req.get("dryRun")))
    out = decide(pod, namespace, cfg, namespace_labels)
    if out.action == "deny":
        return deny(out.reason, out.message, out.code)
    if out.action == "skip":
        return Verdict("skipped", out.reason, warnings=out.warnings)
    fields["certificates"] = list(out.selection.certificates) if out.selection else []
    return Verdict("injected", out.reason, patch=out.patch, warnings=out.warnings)


def _ephemeral(pod: dict) -> Verdict:
    """`kubectl debug` adds ephemeral containers to a running pod: one may not mount the
    injector's volumes (the agent's socket hands out every private key it serves)."""
    try:
        check_owned_mounts(pod, keys=("ephemeralContainers",), mode=istio.mode(pod))
    except Denied as d:
        return deny(d.reason, d.message, d.code)
    return skip(Reason.EPHEMERAL_CONTAINERS)
