"""AdmissionReview v1 requests as the API server sends them, for tests, fuzzing and benchmarks."""
from __future__ import annotations

import uuid


def review(pod: dict | None, namespace: str = "shop", operation: str = "CREATE", kind: str = "Pod",
           group: str = "", dry_run: bool = False) -> dict:
    req = {"uid": str(uuid.uuid4()), "kind": {"group": group, "version": "v1", "kind": kind},
           "resource": {"group": group, "version": "v1", "resource": kind.lower() + "s"},
           "namespace": namespace, "operation": operation, "dryRun": dry_run,
           "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"}}
    if pod is not None:
        req["object"] = pod
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}
