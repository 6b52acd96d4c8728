"""The cluster's gateway claims as the gateway and the issuer hold them: only labelled ConfigMaps,
slimmed to what ownership needs."""
from __future__ import annotations

import functools

from sds_core.kube.informer import Informer
from sds_core.policy.claims import LABEL_SELECTOR


def slim_claim(cm: dict) -> dict:
    m = cm.get("metadata") or {}
    return {"metadata": {k: m.get(k) for k in ("name", "namespace", "creationTimestamp")},
            "immutable": cm.get("immutable"), "data": cm.get("data") or {}}


def claims_informer(core, watch_seconds: int = 300):
    """Only labelled ConfigMaps: the gateway and the issuer never hold the cluster's others."""
    return Informer("configmaps", functools.partial(core.list_config_map_for_all_namespaces,
                                                    label_selector=LABEL_SELECTOR), slim_claim, watch_seconds)
