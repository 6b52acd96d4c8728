"""The cluster's gateway claims as the gateway and the issuer hold them: HostnameClaims (the claim
resource; ConfigMap claims, the previous form, are read only from local claims files), slimmed
to what ownership and status need."""
from __future__ import annotations

import functools

from sds_core.kube.informer import Informer
from sds_core.policy import claim_crd


def slim_claim(cm: dict) -> dict:
    m = cm.get("metadata") or {}
    return {"metadata": {k: m.get(k) for k in ("name", "namespace", "creationTimestamp")},
            "immutable": cm.get("immutable"), "data": cm.get("data") or {}}


def slim_hostname_claim(obj: dict) -> dict:
    """A HostnameClaim in the shape `claims.parse` reads (its spec is immutable: the API server's
    CEL rule), plus what the status writer compares: generation and the current status."""
    m = obj.get("metadata") or {}
    return {"kind": claim_crd.KIND,
            "metadata": {k: m.get(k) for k in ("name", "namespace", "creationTimestamp", "generation")},
            "immutable": True, "data": claim_crd.as_claim_data(obj), "status": obj.get("status") or {}}


def hostname_claims_informer(api_client, watch_seconds: int = 300):
    """Every namespace's HostnameClaims: the one kind the gateway's and the issuer's RBAC lets
    them list and watch for claims (no ConfigMaps)."""
    from kubernetes import client  # lazy: the claims file needs no client

    custom = client.CustomObjectsApi(api_client)
    return Informer(claim_crd.PLURAL, functools.partial(custom.list_cluster_custom_object, claim_crd.GROUP,
                                                        claim_crd.VERSION, claim_crd.PLURAL),
                    slim_hostname_claim, watch_seconds)
