"""Pods that Istio also injects. Istio's proxy takes its certificates from an external SDS server
when a socket exists at /var/run/secrets/workload-spiffe-uds/socket when it starts (the path
SPIRE uses), asking for `default` (the workload certificate) and `ROOTCA` (the trust bundle).
In Istio mode the injector adds only the agent, serving those two names there: one proxy per
pod, Istio's."""
from __future__ import annotations

PROXY = "istio-proxy"
INJECT = "sidecar.istio.io/inject"  # label (current) or annotation (older Istio)
STATUS = "sidecar.istio.io/status"  # what Istio's injector records after injecting
SOCKET_DIR = "/var/run/secrets/workload-spiffe-uds"
SOCKET_VOL = "workload-socket"  # Istio's own name for that volume: both injections share it
CERTIFICATE, TRUST_BUNDLE = "default", "ROOTCA"
# Istio's iptables rules let the proxy's uid out uncaptured; the agent runs as it, so its calls
# to the issuer or Vault do not loop through a proxy that is waiting for the agent's certificates.
PROXY_UID = 1337
# The agent's health port in Istio mode: istio-proxy holds 15000-15090 (15090: its Prometheus
# port, which is also the agent's default).
AGENT_HTTP_PORT = 15096


def proxy_identity(pod: dict, default_gid: int) -> tuple[int, int]:
    """The uid and gid istio-proxy runs as: Istio's 1337 unless the pod's own istio-proxy
    container says otherwise (Istio's `proxy-override-runas`). The agent runs as the same: Istio's
    traffic capture lets that uid out uncaptured, and the socket (0660) is the proxy's to open."""
    spec = pod.get("spec") or {}
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if isinstance(c, dict) and c.get("name") == PROXY:
            sc = c.get("securityContext")
            sc = sc if isinstance(sc, dict) else {}
            return _positive(sc.get("runAsUser"), PROXY_UID), _positive(sc.get("runAsGroup"), default_gid)
    return PROXY_UID, default_gid


def _positive(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def foreign_socket_volume(pod: dict) -> str | None:
    """The kind of a `workload-socket` volume that is not a plain emptyDir (Istio's SPIRE
    template mounts a read-only `csi.spiffe.io` volume): another SDS server serves there."""
    for v in (pod.get("spec") or {}).get("volumes") or []:
        if isinstance(v, dict) and v.get("name") == SOCKET_VOL:
            kinds = sorted(set(v) - {"name"})
            return None if kinds == ["emptyDir"] else ", ".join(kinds) or "unknown"
    return None


def has_socket_volume(pod: dict) -> bool:
    return any(isinstance(v, dict) and v.get("name") == SOCKET_VOL for v in (pod.get("spec") or {}).get("volumes") or [])


def _flag(pod: dict) -> str | None:
    meta = pod.get("metadata") or {}
    for source in (meta.get("labels") or {}, meta.get("annotations") or {}):
        value = source.get(INJECT)
        if isinstance(value, str):
            # Exactly as Istio reads it: only "true" and "false" mean anything; any other value
            # ("True", " false") falls back to the namespace default, as if unset.
            return value if value in ("true", "false") else None
    return None


def opted_out(pod: dict) -> bool:
    """`sidecar.istio.io/inject: "false"`: the owner wants no proxy in this pod."""
    return _flag(pod) == "false"


def has_proxy(pod: dict) -> bool:
    spec = pod.get("spec") or {}
    return any(isinstance(c, dict) and c.get("name") == PROXY
               for key in ("containers", "initContainers") for c in spec.get(key) or [])


def mode(pod: dict) -> str:
    """"istio" when Istio's proxy is there or is coming (Istio's injector may run after this one;
    reinvocation then finds the proxy anyway), else "envoy"."""
    meta = pod.get("metadata") or {}
    if has_proxy(pod) or _flag(pod) == "true" or STATUS in (meta.get("annotations") or {}):
        return "istio"
    return "envoy"
