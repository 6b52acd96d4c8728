"""The one answer to one admission request, whatever decided it (controller-runtime's
admission.Response), and the Kubernetes status reason each code shows."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sds_core.policy.selection import Denied

if TYPE_CHECKING:
    from sds_core.policy.selection import Selection

    from .plan import Plan

# metav1.StatusReason for each code a denial carries (kubectl shows it beside the message).
STATUS_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
                  422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable",
                  504: "Timeout"}


def status_reason(code: int) -> str:
    return STATUS_REASONS.get(code, "InternalError" if code >= 500 else "BadRequest")


@dataclass(frozen=True)
class Verdict:
    """Allowed or not, why (`reason`: the metric label and log field), the message and code a
    denial shows, the patch an injection applies and the warnings kubectl prints. `plan` and
    `selection` travel with an injection for the callers that render pods (the inject CLI)."""

    result: str  # injected | skipped | denied | error: the requests metric's label
    reason: str
    message: str = ""
    code: int = 200
    patch: list | None = None
    warnings: tuple[str, ...] = ()
    plan: Plan | None = field(default=None, compare=False, repr=False)
    selection: Selection | None = field(default=None, compare=False, repr=False)

    @property
    def allowed(self) -> bool:
        return self.result in ("injected", "skipped")


def deny(reason: str, message: str, code: int) -> Verdict:
    return Verdict("denied", reason, message, code)


def denied(d: Denied) -> Verdict:
    return deny(d.reason, d.message, d.code)


def skip(reason: str, message: str = "", warnings: tuple[str, ...] = ()) -> Verdict:
    return Verdict("skipped", reason, message, warnings=warnings)
