"""HostnameClaim, the gateway's claim resource (group sds-injector.io): its CustomResourceDefinition
(the chart's `crds/hostnameclaims.yaml` is generated from it: `python -m gateway crd`) and the
status the gateway writes. Pure data, no client: the gateway, the issuer, the chart test and the
API double read the same definition.

Modelled on the Gateway API's TLSRoute (hostnames, a backend reference by Service name and port,
status conditions with reasons and observedGeneration). The spec is immutable, enforced by the
API server (CEL `self == oldSelf`): a claim's creation time orders claims, and an object that
could change its hostnames later could take them from the tenant serving them today. Unlike a
ConfigMap, no existing object can be turned into a claim: the kind is new, so creationTimestamp
is the claim's own."""
from __future__ import annotations

from .claims import MAX_HOSTNAMES

GROUP, VERSION, KIND, PLURAL = "sds-injector.io", "v1alpha1", "HostnameClaim", "hostnameclaims"
API_VERSION = f"{GROUP}/{VERSION}"
IMMUTABLE = "spec is immutable: create a new HostnameClaim (it queues behind current owners) and delete this one"
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_HOSTNAME = r"^(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)+$"
# Condition types the gateway sets (Gateway API style: type, status, reason, message).
ACCEPTED, CONFLICTED, NOT_ALLOWED = "Accepted", "Conflicted", "NotAllowed"


def _spec_schema() -> dict:
    return {
        "type": "object",
        "required": ["hostnames", "backendRef"],
        "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": IMMUTABLE}],
        "properties": {
            "hostnames": {"type": "array", "minItems": 1, "maxItems": MAX_HOSTNAMES, "x-kubernetes-list-type": "set",
                          "description": "Edge hostnames (or *.domain wildcards) the gateway serves for this claim",
                          "items": {"type": "string", "maxLength": 253, "pattern": _HOSTNAME}},
            "backendRef": {"type": "object", "required": ["name", "port"],
                           "description": "The Service of this namespace the gateway forwards to",
                           "properties": {"name": {"type": "string", "maxLength": 63, "pattern": _DNS_LABEL},
                                          "port": {"type": "integer", "minimum": 1, "maximum": 65535}}},
            "environment": {"type": "string", "maxLength": 63, "pattern": _DNS_LABEL,
                            "description": "default: the configuration's defaultEnvironment"},
            "businessLine": {"type": "string", "maxLength": 63, "pattern": _DNS_LABEL},
            "backendTLS": {"type": "string", "enum": ["Mutual", "None"], "default": "Mutual",
                           "description": "Mutual: mTLS to the pod with the gateway's SPIFFE identity; None: plain TCP"},
        },
    }


def _status_schema() -> dict:
    condition = {"type": "object", "required": ["type", "status", "reason"], "properties": {
        "type": {"type": "string"}, "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
        "reason": {"type": "string"}, "message": {"type": "string", "maxLength": 32768},
        "observedGeneration": {"type": "integer"}, "lastTransitionTime": {"type": "string", "format": "date-time"}}}
    return {"type": "object", "properties": {
        "observedGeneration": {"type": "integer"},
        "servedHostnames": {"type": "array", "items": {"type": "string"}},
        "owners": {"type": "array", "description": "for each hostname taken by another claim: that claim",
                   "items": {"type": "object", "properties": {"hostname": {"type": "string"},
                                                              "claim": {"type": "string"}}}},
        "conditions": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
                       "items": condition}}}


def definition() -> dict:
    """The CustomResourceDefinition, as the chart installs it."""
    accepted = '.status.conditions[?(@.type=="Accepted")].status'
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": KIND.lower(),
                      "shortNames": ["hc"], "categories": ["sds-injector"]},
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Hostnames", "type": "string", "jsonPath": ".spec.hostnames"},
                    {"name": "Backend", "type": "string", "jsonPath": ".spec.backendRef.name"},
                    {"name": "Port", "type": "integer", "jsonPath": ".spec.backendRef.port"},
                    {"name": "Accepted", "type": "string", "jsonPath": accepted},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
                    "spec": _spec_schema(), "status": _status_schema()}, "required": ["spec"]}},
            }],
        },
    }


def as_claim_data(obj: dict) -> dict:
    """A HostnameClaim's spec in the claim fields `claims.parse` checks (one set of rules for
    both kinds); `immutable` is the API server's CEL rule here."""
    spec = obj.get("spec") or {}
    backend = spec.get("backendRef") or {}
    hostnames = spec.get("hostnames")
    data = {"hostnames": ",".join(h for h in hostnames if isinstance(h, str)) if isinstance(hostnames, list) else "",
            "service": str(backend.get("name", "")), "port": str(backend.get("port", "")),
            # The CRD's Mutual/None are the claim's mutual/none (claims.BACKEND_TLS).
            "backend-tls": str(spec.get("backendTLS") or "Mutual").lower()}
    if spec.get("environment"):
        data["env"] = str(spec["environment"])
    if spec.get("businessLine"):
        data["business-line"] = str(spec["businessLine"])
    return data



def from_configmaps(configmaps: list[dict]) -> list[dict]:
    """ConfigMap claims (the previous form) as HostnameClaims of the same namespaces and names,
    oldest first: created in this order, the new claims keep the old claims' order of ownership."""
    def created(cm: dict) -> tuple:
        m = cm.get("metadata") or {}
        return (m.get("creationTimestamp") or "", m.get("namespace") or "", m.get("name") or "")

    out = []
    for cm in sorted(configmaps, key=created):
        m, data = cm.get("metadata") or {}, cm.get("data") or {}
        port = str(data.get("port", ""))
        spec: dict = {"hostnames": [h.strip() for h in str(data.get("hostnames", "")).split(",") if h.strip()],
                      "backendRef": {"name": data.get("service", ""), "port": int(port) if port.isdigit() else port}}
        if data.get("env"):
            spec["environment"] = data["env"]
        if data.get("business-line"):
            spec["businessLine"] = data["business-line"]
        spec["backendTLS"] = "None" if data.get("backend-tls") == "none" else "Mutual"
        out.append({"apiVersion": API_VERSION, "kind": KIND,
                    "metadata": {"name": m.get("name"), "namespace": m.get("namespace")}, "spec": spec})
    return out
