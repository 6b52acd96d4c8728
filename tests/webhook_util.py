from __future__ import annotations

import base64
import json

from devkit.reviews import review  # noqa: F401 - the tests' review(), shared with devkit


def pod(annotations: dict | None = None, namespace: str = "shop", **spec) -> dict:
    meta = {"generateName": "web-", "namespace": namespace, "labels": {"app": "web"}}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "app", "image": "registry.example/web:1"}], **spec}}


def decode_patch(response: dict) -> list:
    return json.loads(base64.b64decode(response["response"]["patch"]))
