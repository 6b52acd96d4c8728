"""What kube-apiserver does for the HostnameClaim CustomResourceDefinition, for the API double:
structural-schema validation of the object (the CRD's openAPIV3Schema, with its defaults), the
CEL rule `self == oldSelf` on the spec, a status subresource (the main resource's updates keep
the stored status; /status updates change only the status), metadata.generation that counts spec
changes. The rules come from the same CRD the chart installs (sds_core/policy/claim_crd.py).

CEL is not evaluated in general: the only rule the CRD has is checked as written, and any other
rule fails loudly here, so a rule added to the CRD cannot pass this double unchecked."""
from __future__ import annotations

import copy
import functools

import jsonschema

from sds_core.policy import claim_crd


class Invalid(ValueError):
    """An update the API server refuses (HTTP 422 Invalid)."""


@functools.cache
def _schema() -> dict:
    return claim_crd.definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    # Built once: jsonschema.validate() checks the schema itself on every call (tens of ms).
    return jsonschema.Draft7Validator(_schema())


def _defaults(schema: dict, obj: dict) -> None:
    """Apply the schema's `default`s, as the API server does before validation."""
    for key, sub in (schema.get("properties") or {}).items():
        if key not in obj and "default" in sub:
            obj[key] = copy.deepcopy(sub["default"])
        if isinstance(obj.get(key), dict):
            _defaults(sub, obj[key])


def _cel(schema: dict, new, old, path: str) -> None:
    for rule in schema.get("x-kubernetes-validations") or []:
        if rule["rule"] != "self == oldSelf":
            raise NotImplementedError(f"CEL rule {rule['rule']!r} is not modelled by the API double")
        if old is not None and new != old:
            raise Invalid(f"{path}: Invalid value: \"object\": {rule['message']}")
    for key, sub in (schema.get("properties") or {}).items():
        if isinstance(new, dict):
            _cel(sub, new.get(key), (old or {}).get(key) if isinstance(old, dict) else None, f"{path}.{key}")


def admit(obj: dict, old: dict | None = None) -> dict:
    """The object as the API server would store it on create (`old` None) or update of the main
    resource: defaulted, validated, transition rules checked, status and generation kept."""
    obj = copy.deepcopy(obj)
    spec = obj.setdefault("spec", {})
    _defaults(_schema()["properties"]["spec"], spec)
    try:
        _validator().validate(obj)
    except jsonschema.ValidationError as e:
        where = ".".join(str(p) for p in e.absolute_path) or "object"
        raise Invalid(f"{claim_crd.KIND}.{claim_crd.GROUP} {obj.get('metadata', {}).get('name')!r} is invalid: "
                      f"{where}: {e.message}") from None
    _cel(_schema(), obj, old, "")
    meta = obj.setdefault("metadata", {})
    if old is None:
        meta["generation"] = 1
        obj.pop("status", None)  # a create's status is dropped (the status subresource owns it)
    else:
        meta["generation"] = old["metadata"].get("generation", 1) + (obj["spec"] != old["spec"])
        obj["status"] = copy.deepcopy(old.get("status"))
        if obj["status"] is None:
            obj.pop("status")
        for k in ("uid", "creationTimestamp"):
            meta[k] = old["metadata"].get(k)
    return obj


def with_status(current: dict, status: dict) -> dict:
    """An update through /status: only the status changes (validated against the schema)."""
    obj = copy.deepcopy(current)
    obj["status"] = status
    try:
        _validator().validate(obj)
    except jsonschema.ValidationError as e:
        raise Invalid(f"status: {e.message}") from None
    return obj
