"""The gateway's Envoy configuration, without Envoy: the fast chain builder and the readable
chain spec must stay the same chain (Envoy-facing behaviour is tested in test_gateway_envoy.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import json_format

from envoy.config.listener.v3 import listener_components_pb2
from gateway import envoy
from sds_core.policy.claims import Claim

TENANTS = [
    Claim("shop-prod", "storefront-hosts", "2026-01-01T00:00:00Z", ("shop.example.com", "www.shop.example.com"),
          "storefront", 8080, "prod", "retail"),
    Claim("a", "b", "2026-01-01T00:00:00Z", ("*.pay.example.com",), "api", 65535, "dev", ""),
    Claim("team.x", "site", "2026-01-01T00:00:00Z", tuple(f"h{i}.example.com" for i in range(100)), "web", 1, "dev", ""),
]
SETTINGS = [("TLSv1_2", (), "LENIENT_STAPLING", 10), ("TLSv1_3", ("X25519MLKEM768", "X25519"), "MUST_STAPLE", 1),
            ("TLSv1_2", ("P-256",), "STRICT_STAPLING", 2.5)]


@pytest.mark.parametrize("settings", SETTINGS)
def test_fast_chains_equal_the_spec(settings):
    make = envoy.Chains(*settings)
    for t in TENANTS:
        host = envoy.backend_host(t, "{service}.{namespace}.svc.{domain}", "cluster.local")
        spec = json_format.ParseDict(envoy.chain_spec(t, host, *settings), listener_components_pb2.FilterChain())
        built = make(t, host)
        assert built == spec, t
        assert built.SerializeToString(deterministic=True) == spec.SerializeToString(deterministic=True)


def test_one_tenant_s_chain_names_nothing_of_another():
    make = envoy.Chains()
    a, b = TENANTS[0], TENANTS[1]
    chain_a = make(a, "storefront.shop-prod.svc.cluster.local")
    make(b, "api.a.svc.cluster.local")  # the builder keeps no state between tenants
    again = make(a, "storefront.shop-prod.svc.cluster.local")
    assert again == chain_a
    text = str(json_format.MessageToDict(chain_a))
    for other in ("pay.example.com", "api.a.svc", "gw_a_b", "gateway:a/b"):
        assert other not in text


def test_the_claims_file_feed_takes_only_labelled_configmaps_as_the_cluster_watch_does(tmp_path):
    from devkit.gatewayrun import claim, claim_configmap, write_claims
    from gateway.feed import FileFeed

    labelled = claim_configmap("shop", claim(["a.example.com"], 8080), name="site")
    unlabelled = {**claim_configmap("shop", claim(["b.example.com"], 8080), name="other")}
    unlabelled["metadata"] = {**unlabelled["metadata"], "labels": {}}
    feed = FileFeed(Path(write_claims(tmp_path / "claims.json", [labelled, unlabelled])))
    assert feed.load()
    assert [o["metadata"]["name"] for o in feed.objects()] == ["site"]
