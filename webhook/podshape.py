"""The shape the injector relies on, checked once at the edge: a malformed AdmissionReview gets a
400 denial that says which field is wrong, never an internal error further in. Only what the
injector reads is checked; the API server validates the rest after admission."""
from __future__ import annotations

import re

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _str_map(value, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        return f"{where} must be a map of strings"
    return None


# Fields the injector reads inside a container's lists, and their types (None: optional).
_NESTED: dict[str, dict[str, type]] = {"volumeMounts": {"name": str, "mountPath": str}, "ports": {"containerPort": int},
           "env": {"name": str}}


def _objects(value, where: str, required: bool = False, fields: dict | None = None) -> str | None:
    """A list of objects whose `fields` have the given types; by default each has a string
    name and is a container or volume."""
    if value is None and not required:
        return None
    if not isinstance(value, list) or (required and not value) or not all(isinstance(x, dict) for x in value):
        return f"{where} must be a {'non-empty ' if required else ''}list of objects"
    for i, x in enumerate(value):
        for field, kind in (fields or {"name": str}).items():
            v = x.get(field)
            if (v is not None or fields is None) and (not isinstance(v, kind) or isinstance(v, bool)):
                return f"{where}[{i}].{field} must be {'a string' if kind is str else 'an integer'}"
        if fields is None:
            for nested, types in _NESTED.items():
                if (err := _objects(x.get(nested), f"{where}[{i}].{nested}", fields=types)) is not None:
                    return err
    return None


def problem(req: dict) -> str | None:
    """What is wrong with the request's shape, or None."""
    if "namespace" in req and req["namespace"] is not None and not isinstance(req["namespace"], str):
        return "request.namespace must be a string"
    pod = req.get("object")
    if not isinstance(pod, dict):
        return "request.object must be an object"
    meta = pod.get("metadata")
    if meta is not None:
        if not isinstance(meta, dict):
            return "request.object.metadata must be an object"
        for field in ("annotations", "labels"):
            if (err := _str_map(meta.get(field), f"request.object.metadata.{field}")) is not None:
                return err
        for field in ("name", "generateName", "namespace"):
            if meta.get(field) is not None and not isinstance(meta[field], str):
                return f"request.object.metadata.{field} must be a string"
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return "request.object.spec must be an object"
    checks = [_objects(spec.get("containers"), "request.object.spec.containers", required=True),
              _objects(spec.get("initContainers"), "request.object.spec.initContainers"),
              _objects(spec.get("ephemeralContainers"), "request.object.spec.ephemeralContainers"),
              _objects(spec.get("volumes"), "request.object.spec.volumes")]
    if (err := next((c for c in checks if c is not None), None)) is not None:
        return err
    sa = spec.get("serviceAccountName")
    if sa is not None and (not isinstance(sa, str) or len(sa) > 253 or not _DNS_SUBDOMAIN.match(sa)):
        return "request.object.spec.serviceAccountName must be a DNS subdomain name"
    if spec.get("hostNetwork") is not None and not isinstance(spec["hostNetwork"], bool):
        return "request.object.spec.hostNetwork must be a boolean"
    return None
