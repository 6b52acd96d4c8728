"""The API double behaves as kube-apiserver 1.36 did where the project relies on it (observed
with etcd; see ../shared/reference.md): ConfigMap update rules, label-selector watches that
send ADDED/DELETED as objects start or stop matching, BOOKMARK events, 410 Expired as an ERROR
event; and the project's informer copes with each."""
from __future__ import annotations

import functools
import json
import logging
import urllib.request

import pytest

from devkit.harness import wait_for
from devkit.kube_api import API_TOKEN, Invalid, KubeAPI
from sds_core.kube.claims_informer import slim_claim
from sds_core.kube.informer import Informer
from sds_core.kube.client import api_client


@pytest.fixture
def kube(tmp_path):
    k = KubeAPI().start()
    yield k
    k.stop()


def test_configmap_immutability_is_one_way_and_settable_later_and_labels_stay_mutable(kube):
    cm = kube.add_configmap("bank", "early", {"hostnames": "old.example.com"}, immutable=None,
                            created="2026-01-01T00:00:00Z")
    # immutable switched on in the same update that changes data: accepted, as by kube-apiserver
    kube.update_configmap("bank", "early", data={"hostnames": "shop.example.com"}, immutable=True)
    with pytest.raises(Invalid, match="data: field is immutable"):
        kube.update_configmap("bank", "early", data={"hostnames": "other.example.com"})
    with pytest.raises(Invalid, match="immutable: field is immutable"):
        kube.update_configmap("bank", "early", immutable=False)
    after = kube.update_configmap("bank", "early", labels={"sds-injector.io/gateway-claim": "true"})
    assert after["metadata"]["labels"] == {"sds-injector.io/gateway-claim": "true"}
    assert after["metadata"]["creationTimestamp"] == cm["metadata"]["creationTimestamp"] == "2026-01-01T00:00:00Z"
    assert after["data"] == {"hostnames": "shop.example.com"} and after["immutable"] is True


def _watch(kube, query: str, timeout: float = 2) -> list[dict]:
    req = urllib.request.Request(f"{kube.url}/api/v1/configmaps?watch=true&timeoutSeconds={timeout}&{query}",
                                 headers={"Authorization": f"Bearer {API_TOKEN}"})
    with urllib.request.urlopen(req, timeout=timeout + 5) as r:
        return [json.loads(line) for line in r.read().splitlines() if line.strip()]


def test_a_selector_watch_sees_objects_start_and_stop_matching(kube):
    label = {"sds-injector.io/gateway-claim": "true"}
    kube.add_configmap("bank", "dormant", {"hostnames": "a.example.com"})
    start = kube.rv
    kube.update_configmap("bank", "dormant", labels=label)    # starts matching
    kube.update_configmap("bank", "dormant", labels={})       # stops matching
    kube.add_configmap("bank", "other", {"hostnames": "b.example.com"})  # never matches
    events = _watch(kube, f"resourceVersion={start}&labelSelector=sds-injector.io/gateway-claim%3Dtrue", 1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "dormant"),
                                                                              ("DELETED", "dormant")]


def test_bookmarks_and_expired_resource_versions(kube):
    kube.bookmark_seconds = 0.2
    kube.add_configmap("bank", "a", {})
    events = _watch(kube, f"resourceVersion={kube.rv}&allowWatchBookmarks=true", 1)
    assert events and all(e["type"] == "BOOKMARK" for e in events)
    assert events[-1]["object"]["metadata"]["resourceVersion"] == str(kube.rv)
    old = kube.rv
    kube.add_configmap("bank", "b", {})
    kube.compact()
    (event,) = _watch(kube, f"resourceVersion={old}", 1)
    assert event["type"] == "ERROR" and event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"


def test_the_informer_relists_after_410_and_drops_what_stops_matching(kube, tmp_path, caplog):
    (tmp_path / "kubeconfig.json").write_text(kube.kubeconfig())
    from kubernetes import client

    core = client.CoreV1Api(api_client(tmp_path / "kubeconfig.json"))
    # A label-selected watch (as revocation records are watched): what stops matching is DELETED.
    informer = Informer("configmaps", functools.partial(core.list_config_map_for_all_namespaces,
                                                        label_selector="sds-injector.io/gateway-claim=true"),
                        slim_claim, watch_seconds=1)
    label = {"sds-injector.io/gateway-claim": "true"}
    kube.add_configmap("bank", "c1", {"hostnames": "a.example.com"}, labels=label)
    informer.start()
    try:
        wait_for(lambda: informer.get("bank", "c1") is not None, what="the first list")
        kube.update_configmap("bank", "c1", labels={})
        wait_for(lambda: informer.get("bank", "c1") is None, what="DELETED when the label is removed")
        with caplog.at_level(logging.WARNING, logger="webhook.informer"):
            kube.add_configmap("bank", "unrelated", {})  # history the informer never saw ...
            kube.compact()  # ... compacted: its next watch (1 s) starts from an expired version
            wait_for(lambda: any("410" in r.getMessage() and "Expired" in r.getMessage() for r in caplog.records),
                     timeout=20, what="the 410 named in the log")
            kube.add_configmap("bank", "c2", {"hostnames": "b.example.com"}, labels=label)
            wait_for(lambda: informer.get("bank", "c2") is not None, timeout=20, what="relist after 410")
    finally:
        informer.stop()


def test_the_service_account_plugin_runs_around_the_webhook_as_in_kube_apiserver():
    """The pod the webhook sees already mounts the API token in every container (the plugin ran
    first); after injection the plugin runs again and leaves the sidecars alone (they mask the
    token path), so the webhook's reinvocation is not needed; the app keeps its token."""
    import jsonpatch

    from devkit.kube_api import SA_TOKEN_DIR, admit_pod
    from sds_core.policy.config import load_config
    from devkit.podrun import ROOT
    from webhook.injector import decide

    cfg = load_config(ROOT / "examples" / "config.yaml")
    seen: list[dict] = []

    def webhook(pod: dict) -> dict:
        seen.append(pod)
        out = decide(pod, "shop", cfg)
        return jsonpatch.apply_patch(pod, out.patch) if out.result == "injected" else pod

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop",
                                                           "annotations": {"sds-injector.io/env": "dev"}},
           "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "app:1"}]}}
    stored, calls = admit_pod(pod, webhook)
    assert any(m["mountPath"] == SA_TOKEN_DIR for m in seen[0]["spec"]["containers"][0]["volumeMounts"])
    mounts = {c["name"]: {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
              for c in stored["spec"]["initContainers"] + stored["spec"]["containers"]}
    assert mounts["app"][SA_TOKEN_DIR].startswith("kube-api-access-")
    assert mounts["sds-agent"][SA_TOKEN_DIR] == mounts["sds-envoy"][SA_TOKEN_DIR] == "sds-no-sa-token"
    assert calls == 1
    # The webhook's reinvocation on the stored pod would be a no-op: already injected.
    assert decide(stored, "shop", cfg).result == "skipped"
