from __future__ import annotations

import base64
import json
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


def pod(annotations: dict | None = None, namespace: str = "shop", **spec) -> dict:
    meta = {"generateName": "web-", "namespace": namespace, "labels": {"app": "web"}}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "app", "image": "registry.example/web:1"}], **spec}}


def decode_patch(response: dict) -> list:
    return json.loads(base64.b64decode(response["response"]["patch"]))
