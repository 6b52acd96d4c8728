"""Every `sds-injector.io/` annotation, declared once. Validation, error messages and
docs/annotations.md all derive from this table."""
from __future__ import annotations

from typing import Any

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass

from .config import PREFIX

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_CERT_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?)?$")


STAPLE_POLICIES = ("LENIENT_STAPLING", "STRICT_STAPLING", "MUST_STAPLE")


class AnnotationError(ValueError):
    pass


def _bool(v: str) -> bool:
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise AnnotationError("expected \"true\" or \"false\"")


def _port(v: str) -> int:
    # ASCII digits only: str.isdigit() accepts "²" (then int() raises) and fullwidth digits.
    if not re.fullmatch(r"[0-9]{1,5}", v) or not 1 <= int(v) <= 65535:
        raise AnnotationError(f"{v!r} is not a port number (1-65535)")
    return int(v)


def _inbound(v: str) -> list[tuple[int, int]]:
    out = []
    for item in _items(v):
        tls, sep, app = item.partition(":")
        if not sep:
            raise AnnotationError(f"{item!r}: expected TLS_PORT:APP_PORT, e.g. 8443:8080")
        out.append((_port(tls), _port(app)))
    if len({t for t, _ in out}) != len(out):
        raise AnnotationError("a TLS port is listed twice")
    return out


def _outbound(v: str) -> list[tuple[int, str, int, str | None]]:
    """LOCAL_PORT=HOST:PORT[@SPIFFE_ID]: a local plain port whose traffic leaves over mTLS."""
    out = []
    for item in _items(v):
        local, sep, rest = item.partition("=")
        target, _, peer = rest.partition("@")
        host, sep2, port = target.rpartition(":")
        if not sep or not sep2 or not host:
            raise AnnotationError(f"{item!r}: expected LOCAL_PORT=HOST:PORT[@spiffe://...], "
                                  "e.g. 15001=payments.shop.svc:8443")
        if peer and not peer.startswith("spiffe://"):
            raise AnnotationError(f"{item!r}: the peer identity after @ must be a spiffe:// ID")
        out.append((_port(local), host, _port(port), peer or None))
    return out


def _items(v: str) -> list[str]:
    return [p.strip() for p in v.split(",") if p.strip()]


def _names(v: str) -> list[str]:
    names = _items(v)
    for n in names:
        if not _CERT_NAME.match(n):
            raise AnnotationError(f"{n!r} is not a valid certificate name")
    return names


def _peers(v: str) -> list[str]:
    peers = _items(v)
    for p in peers:
        if not p.startswith("spiffe://"):
            raise AnnotationError(f"{p!r} is not a spiffe:// ID (a trailing * matches a prefix)")
    return peers


def _label(v: str) -> str:
    if not _DNS_LABEL.match(v) or len(v) > 63:
        raise AnnotationError(f"{v!r} is not a lowercase DNS label")
    return v


def _quantity(v: str) -> str:
    if not _QUANTITY.match(v):
        raise AnnotationError(f"{v!r} is not a Kubernetes quantity (\"\" unsets the default)")
    return v


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(v: str) -> str:
        if v not in allowed:
            raise AnnotationError(f"{v!r} is not one of {', '.join(allowed)}")
        return v
    return parse


CURVES = ("X25519MLKEM768", "X25519", "P-256", "P-384", "P-521")
HYBRID_CURVES = ("X25519MLKEM768",)  # post-quantum hybrids: TLS 1.3 only


def _curves(v: str) -> list[str]:
    items = _items(v)
    for c in items:
        if c not in CURVES:
            raise AnnotationError(f"{c!r} is not one of {', '.join(CURVES)}")
    if not items:
        raise AnnotationError("name at least one group")
    return list(dict.fromkeys(items))


def _ciphers(v: str) -> list[str]:
    items = _items(v)
    for c in items:
        if not re.match(r"^\[?[A-Z0-9_|-]+\]?$", c):
            raise AnnotationError(f"{c!r} is not an OpenSSL cipher suite name")
    return items


@dataclass(frozen=True)
class Annotation:
    key: str  # without the prefix
    type: str
    parse: Callable[[str], object]
    default: str
    description: str
    allowed: str = ""

    @property
    def name(self) -> str:
        return PREFIX + self.key


SCHEMA: tuple[Annotation, ...] = (
    Annotation("inject", "bool", _bool, "namespace default (true in an enabled namespace)",
               "Opt a pod out (`\"false\"`) or in (`\"true\"`).", "true, false"),
    Annotation("env", "string", _label, "`defaultEnvironment` of the config",
               "Environment of the workload; selects certificate names and is checked against the "
               "namespace policy.", "the config's `environments`"),
    Annotation("business-line", "string", _label, "none",
               "Business line of the workload (e.g. retail, corporate); may switch to per-business-line "
               "certificate names.", "the config's `businessLines`"),
    Annotation("service", "string", _label, "label `app.kubernetes.io/name`, then `app`, then the service account",
               "Service name used in certificate names and DNS SANs."),
    Annotation("certificates", "list", _names, "from the naming templates",
               "Explicit certificate names (comma-separated); the first is served on inbound ports."),
    Annotation("trust-bundles", "list", _names, "from the naming templates",
               "Explicit trust bundle names (comma-separated) used to verify peers."),
    Annotation("inbound", "list", _inbound, "none",
               "TLS ports terminated by Envoy and forwarded to the app on localhost: `TLS_PORT:APP_PORT`, "
               "comma-separated, e.g. `8443:8080`."),
    Annotation("outbound", "list", _outbound, "none",
               "Local plain ports whose traffic Envoy sends over mTLS: `LOCAL_PORT=HOST:PORT[@spiffe://ID]`, "
               "comma-separated. A HOST in the cluster (`svc`, `svc.ns`, `svc.ns.svc[.domain]`) is verified by "
               "identity, never by DNS name alone: the peer must hold a SPIFFE ID of the namespace HOST names "
               "(`svc` alone: the pod's own), or exactly the pinned ID, which must lie in that namespace. "
               "Any other HOST (outside the cluster; write a two-label external name with a trailing dot, "
               "`example.com.`) is verified by its DNS SAN, or by the pinned ID."),
    Annotation("mtls", "bool", _bool, "true",
               "Require client certificates on inbound ports.", "true, false"),
    Annotation("allowed-peers", "list", _peers, "workloads of the pod's own namespace",
               "SPIFFE IDs allowed to call inbound ports (a trailing `*` matches a prefix). Peers of "
               "another environment fail the handshake whatever this says: each environment has its own CA."),
    Annotation("tls-min-version", "string", _choice("TLSv1_2", "TLSv1_3"), "TLSv1_2",
               "Minimum TLS version of every listener and upstream.", "TLSv1_2, TLSv1_3"),
    Annotation("tls-max-version", "string", _choice("TLSv1_2", "TLSv1_3"), "TLSv1_3",
               "Maximum TLS version of every listener and upstream (TLSv1_2 where a peer needs it).",
               "TLSv1_2, TLSv1_3"),
    Annotation("ecdh-curves", "list", _curves, "proxy.ecdhCurves, else Envoy's (X25519, P-256)",
               "Key-exchange groups of inbound and outbound TLS, in order of preference, e.g. "
               "`X25519MLKEM768,X25519` (hybrid post-quantum first, classic fallback). Hybrid groups exist "
               "only in TLS 1.3; a pod allowing only them refuses classic-only peers.", ", ".join(CURVES)),
    Annotation("ocsp-staple-policy", "string", _choice(*STAPLE_POLICIES), "proxy.ocspStaplePolicy "
               "(LENIENT_STAPLING)", "What inbound listeners do with OCSP staples: LENIENT_STAPLING serves "
               "without one when none is valid; STRICT_STAPLING and MUST_STAPLE refuse to. Either of the "
               "last two turns stapling on in the agent for the pod.", ", ".join(STAPLE_POLICIES)),
    Annotation("cipher-suites", "list", _ciphers, "Envoy's defaults",
               "TLS 1.2 cipher suites, comma-separated OpenSSL names."),
    Annotation("proxy-cpu", "quantity", _quantity, "config `proxy.resources`",
               "CPU request and limit of the Envoy container (`\"\"` unsets)."),
    Annotation("proxy-memory", "quantity", _quantity, "config `proxy.resources`",
               "Memory request and limit of the Envoy container (`\"\"` unsets)."),
    Annotation("agent-cpu", "quantity", _quantity, "config `agent.resources`",
               "CPU request and limit of the SDS agent container (`\"\"` unsets)."),
    Annotation("agent-memory", "quantity", _quantity, "config `agent.resources`",
               "Memory request and limit of the SDS agent container (`\"\"` unsets)."),
    Annotation("status", "json", str, "set by the injector",
               "Written by the injector: what it injected and under which revision. Do not set by hand."),
)
BY_NAME = {a.name: a for a in SCHEMA}


def parse(annotations: dict[str, str] | None) -> dict[str, Any]:
    """Typed values of the pod's sds-injector.io/ annotations, keyed without the prefix.
    Raises AnnotationError with a message a user can act on."""
    out: dict[str, Any] = {}  # each key's type is its annotation's parser's
    for name, value in (annotations or {}).items():
        if not name.startswith(PREFIX):
            continue
        spec = BY_NAME.get(name)
        if spec is None:
            near = difflib.get_close_matches(name, BY_NAME, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]}?" if near else f"; known: {', '.join(sorted(BY_NAME))}"
            raise AnnotationError(f"unknown annotation {name}{hint}")
        if not isinstance(value, str):
            raise AnnotationError(f"annotation {name}: value must be a string")
        try:
            out[spec.key] = spec.parse(value.strip())
        except AnnotationError as e:
            raise AnnotationError(f"annotation {name}: {e}") from None
    return out


def markdown() -> str:
    rows = ["| annotation | type | default | allowed | description |", "|---|---|---|---|---|"]
    for a in SCHEMA:
        rows.append(f"| `{a.name}` | {a.type} | {a.default} | {a.allowed or '–'} | {a.description} |")
    return ("# Pod annotations\n\nGenerated from `sds_core/policy/annotations.py` "
            "(`python -m webhook docs > docs/annotations.md`). An unknown annotation under "
            f"`{PREFIX}` is denied, naming the nearest valid one.\n\n" + "\n".join(rows) + "\n")
