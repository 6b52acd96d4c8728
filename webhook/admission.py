"""AdmissionReview v1 in, AdmissionReview v1 out. Bad input is a clear 400 (when no uid can be
echoed) or a denial with a readable message — never a 500."""
from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable

import orjson

from . import istio, metrics, podshape
from .config import InjectorConfig
from .injector import decide
from .plan import check_owned_mounts
from .selection import Denied

log = logging.getLogger("webhook.admission")
API_VERSION = "admission.k8s.io/v1"


class BadRequest(ValueError):
    pass


def _response(uid: str, allowed: bool, message: str = "", code: int = 200, patch: list | None = None,
              warnings: list[str] | None = None) -> bytes:
    resp: dict = {"uid": uid, "allowed": allowed}
    if not allowed:
        resp["status"] = {"code": code, "message": message, "reason": "Forbidden" if code == 403 else "BadRequest"}
    if patch:
        resp["patchType"] = "JSONPatch"
        resp["patch"] = base64.b64encode(orjson.dumps(patch)).decode()
    if warnings:
        resp["warnings"] = warnings
    return orjson.dumps({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": resp})


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
    return _response(uid, True)


def handle(body: bytes, config: Callable[[], InjectorConfig], namespace_labels=None) -> tuple[int, bytes]:
    """Returns (HTTP status, response body)."""
    start = time.perf_counter()
    try:
        try:
            req = parse_review(body)
        except BadRequest as e:
            metrics.REQUESTS.labels("bad_request").inc()
            return 400, orjson.dumps({"error": str(e)})
        uid = req["uid"]
        try:
            return 200, _review(req, uid, config(), namespace_labels)
        except Exception as e:  # noqa: BLE001 - any bug becomes a denial that says so, not a 500
            metrics.ERRORS.labels(type(e).__name__).inc()
            metrics.REQUESTS.labels("error").inc()
            log.exception("internal error", extra={"fields": {"uid": uid}})
            return 200, _response(uid, False, f"sds-injector internal error ({type(e).__name__}); see the "
                                  f"webhook log for request uid {uid}", 500)
    finally:
        metrics.LATENCY.observe(time.perf_counter() - start)


def _review(req: dict, uid: str, cfg: InjectorConfig, namespace_labels) -> bytes:
    kind = req.get("kind")
    if not isinstance(kind, dict):
        metrics.REQUESTS.labels("denied").inc()
        metrics.DENIALS.labels("malformed_request").inc()
        return _response(uid, False, "request.kind must be an object {group, version, kind}", 400)
    if (kind.get("group"), kind.get("kind")) != ("", "Pod"):
        metrics.REQUESTS.labels("denied").inc()
        metrics.DENIALS.labels("not_a_pod").inc()
        return _response(uid, False, f"sds-injector only mutates pods, got {kind.get('group') or 'core'}/"
                         f"{kind.get('kind')}; check the rules of the MutatingWebhookConfiguration", 400)
    pod = req.get("object")
    ephemeral = req.get("subResource") == "ephemeralcontainers"
    if req.get("operation") != "CREATE" and not ephemeral:
        metrics.SKIPS.labels("operation").inc()
        metrics.REQUESTS.labels("skipped").inc()
        return _response(uid, True)
    if not isinstance(pod, dict):
        metrics.REQUESTS.labels("denied").inc()
        metrics.DENIALS.labels("malformed_pod").inc()
        return _response(uid, False, "AdmissionReview request.object is missing or not an object", 400)
    if (shape := podshape.problem(req)) is not None:
        metrics.REQUESTS.labels("denied").inc()
        metrics.DENIALS.labels("malformed_pod").inc()
        return _response(uid, False, f"malformed pod: {shape}", 400)
    if ephemeral:
        return _ephemeral(uid, pod)
    namespace = req.get("namespace") or (pod.get("metadata") or {}).get("namespace") or "default"
    out = decide(pod, namespace, cfg, namespace_labels)
    fields = {"uid": uid, "namespace": namespace, "pod": (pod.get("metadata") or {}).get("generateName")
              or (pod.get("metadata") or {}).get("name"), "reason": out.reason, "dry_run": bool(req.get("dryRun"))}
    if out.action == "deny":
        metrics.DENIALS.labels(out.reason).inc()
        metrics.REQUESTS.labels("denied").inc()
        log.info("denied: %s", out.message, extra={"fields": fields})
        return _response(uid, False, out.message, out.code)
    if out.action == "skip":
        metrics.SKIPS.labels(out.reason).inc()
        metrics.REQUESTS.labels("skipped").inc()
        log.info("skipped", extra={"fields": fields})
        return _response(uid, True)
    metrics.INJECTIONS.inc()
    metrics.REQUESTS.labels("injected").inc()
    log.info("injected", extra={"fields": {**fields, "certificates": list(out.selection.certificates)}})
    return _response(uid, True, patch=out.patch)


def _ephemeral(uid: str, pod: dict) -> bytes:
    """`kubectl debug` adds ephemeral containers to a running pod: one may not mount the
    injector's volumes (the agent's socket hands out every private key it serves)."""
    try:
        check_owned_mounts(pod, keys=("ephemeralContainers",), mode=istio.mode(pod))
    except Denied as d:
        metrics.REQUESTS.labels("denied").inc()
        metrics.DENIALS.labels(d.reason).inc()
        return _response(uid, False, d.message, d.code)
    metrics.SKIPS.labels("ephemeral_containers").inc()
    metrics.REQUESTS.labels("skipped").inc()
    return _response(uid, True)
