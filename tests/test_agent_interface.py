"""The webhook/agent process boundary: the webhook writes the agent's settings into the pod as
SDS_* variables through sds_core.sds.settings (agent_env: a name that is not a setting fails at
once), and what it writes is what the agent parses back, field by field, for every source."""
from __future__ import annotations

import os

import pytest

from sds_core.policy.config import InjectorConfig
from sds_core.sds.settings import AgentSettings, env_name, env_value
from tests.webhook_util import pod
from webhook.injector import decide

SOURCES = {
    "issuer": {},
    "local-ca": {},
    "files": {},
    "vault": {"vault": {"addresses": ["https://vault-a:8200", "https://vault-b:8200"], "crl": True, "mode": "kv"}},
}


@pytest.mark.parametrize("source", SOURCES)
def test_what_the_webhook_writes_is_what_the_agent_reads(source, monkeypatch):
    cfg = InjectorConfig.model_validate({"agent": {"source": source, **SOURCES[source]}})
    out = decide(pod({"sds-injector.io/env": "dev", "sds-injector.io/business-line": "retail",
                      "sds-injector.io/ocsp-staple-policy": "STRICT_STAPLING"}), "shop", cfg)
    assert out.result == "injected", out.message
    agent = next(c for c in out.plan.containers if c["name"] == "sds-agent")
    for k in [k for k in os.environ if k.startswith("SDS_")]:
        monkeypatch.delenv(k)
    written = {}
    for e in agent["env"]:
        value = e.get("value", "downward-api-value")  # the kubelet fills valueFrom entries
        monkeypatch.setenv(e["name"], value)
        written[e["name"]] = value
    settings = AgentSettings.load([])
    for field in AgentSettings.names():
        name = env_name(field)
        if name in written:
            got = getattr(settings, field)
            got = got.get_secret_value() if hasattr(got, "get_secret_value") else got
            if isinstance(got, float):
                assert got == float(written[name]), (name, got)
            else:
                assert env_value(got) == written[name], (name, got)
    assert settings.source == source and settings.ocsp_stapling is True


def test_a_name_that_is_not_a_setting_fails_at_once():
    with pytest.raises(KeyError, match="not an agent setting"):
        env_name("vault_adresses")


@pytest.mark.parametrize("source, memory", [("issuer", "32Mi"), ("local-ca", "32Mi"), ("files", "32Mi"),
                                            ("vault", "40Mi")])
def test_the_agents_memory_request_follows_its_sources_footprint(source, memory):
    """Measured private memory: 26 MB with the issuer or local CA, ~32 MB with Vault's client
    (docs/benchmarks.md); an explicit setting wins."""
    cfg = InjectorConfig.model_validate({"agent": {"source": source}})
    assert cfg.agent.resources.memory_request == memory
    mine = InjectorConfig.model_validate({"agent": {"source": source, "resources": {"memoryRequest": "70Mi"}}})
    assert mine.agent.resources.memory_request == "70Mi"


def test_nothing_ca_related_is_written_into_the_pod_spec():
    """The issuer's serving CA was copied inline into every pod (SDS_ISSUER_CA): rotating it broke
    every running agent until its pod was re-created, and offline `inject` needed --issuer-ca. Now
    the agent mounts the ConfigMap the issuer keeps in the namespace, by name."""
    import json

    cfg = InjectorConfig.model_validate({"agent": {"source": "issuer"}})
    out = decide(pod({"sds-injector.io/env": "dev", "sds-injector.io/business-line": "retail"}), "shop", cfg)
    spec = json.dumps(out.patch)
    assert "BEGIN CERTIFICATE" not in spec and f"\"{env_name('issuer_ca')}\"" not in spec
    agent = next(c for c in out.plan.containers if c["name"] == "sds-agent")
    env = {e["name"]: e.get("value") for e in agent["env"]}
    mount = next(m for m in agent["volumeMounts"] if m["name"] == "sds-issuer-ca")
    assert env[env_name("issuer_ca_file")] == mount["mountPath"] + "/ca.crt"
    volume = next(v for v in out.plan.volumes if v["name"] == "sds-issuer-ca")
    assert volume["configMap"]["name"] == cfg.agent.issuer.ca_config_map == "sds-injector-issuer-ca"
