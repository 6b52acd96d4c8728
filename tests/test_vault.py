"""The Vault source through hvac over real HTTP to the Vault API test double (tests/vault_double.py).
These are not tests against Vault itself. Real-server behaviour is proven against OpenBao
(test_openbao.py, test_openbao_envoy.py, test_vault_envoy.py, test_vault_backends.py); what stays
here needs what a real dev server cannot be made to do on command, and says so per test:
- counting requests per path (logins, renewals, signs, failover order): OpenBao exposes no
  per-path counters without an audit device;
- a standby answering 429, an address answering 500 on demand, a login refused for one JWT
  and accepted for the next: a single dev server has no standby and no fault switch;
- KV content that fails validation (missing fields, key mismatch) and its exact error text;
- CA overlap expiry with a CA swapped instantly under the same mount name."""
from __future__ import annotations

from sds_core.pki.validation import serial_hex

import asyncio
import logging
import time

import pytest

from sds_core.sds import material
from sds_core.sds.cache import SecretCache
from sds_core.sds.renewal import Renewer
from sds_core.sds.settings import AgentSettings
from sds_core.sds.sources.base import SecretSpec, SourceError
from sds_core.sds.sources.vault import VaultSource
from sds_core.pki.validation import InvalidSecret
from sds_core.sds.vault_client import VaultClient
from tests.conftest import remember_key
from devkit.harness import issue
from tests.vault_double import VaultDouble

CERT = SecretSpec("web-cert", material.TLS_CERTIFICATE)
TRUST = SecretSpec("trust", material.VALIDATION_CONTEXT)


@pytest.fixture
def vault():
    doubles = []

    def make():
        d = VaultDouble().start()
        doubles.append(d)
        return d
    yield make
    for d in doubles:
        d.stop()


def settings(addresses, tmp_path, **kw) -> AgentSettings:
    base = dict(vault_addresses=[d.addr for d in addresses], namespace="shop", service_account="web",
                service="web", env="prod", business_line="retail", vault_timeout_seconds=0.5, vault_allow_http=True,
                vault_token_file=tmp_path / "token", source="vault")
    base.update(kw)
    return AgentSettings(**base)


def k8s_login(d: VaultDouble, tmp_path, policies=("*",), jwt="jwt-1", ttl=3600):
    (tmp_path / "token").write_text(jwt)
    d.add_k8s_role("shop-web", {jwt}, list(policies), ttl)


def test_kubernetes_auth_pki_issue_with_spiffe_and_dns_sans(vault, tmp_path):
    d = vault()
    d.add_pki("pki_retail", {"prod": {}})
    k8s_login(d, tmp_path, ["pki_retail/sign/prod"])
    src = VaultSource(settings([d], tmp_path, vault_pki_ttl="60s"))
    m = asyncio.run(src.fetch(CERT))
    from cryptography import x509

    leaf = x509.load_pem_x509_certificates(m.certificate_chain)[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cluster.local/ns/shop/sa/web"]
    assert "web.shop.svc" in san.get_values_for_type(x509.DNSName)
    import datetime as dt

    remaining = (m.not_after - dt.datetime.now(dt.UTC)).total_seconds()
    assert 55 <= remaining <= 61 and m.lifetime.total_seconds() == pytest.approx(90, abs=2)  # 30 s back-dated
    assert src.issues(CERT) and not src.issues(TRUST)
    assert d.requests_to("/v1/auth/kubernetes/login") == 1


def test_token_file_is_reread_when_a_login_is_needed_again(vault, tmp_path):
    d = vault()
    d.add_pki("pki_retail", {"prod": {}})
    k8s_login(d, tmp_path, ["pki_retail/*"], jwt="jwt-1")
    src = VaultSource(settings([d], tmp_path))
    asyncio.run(src.fetch(CERT))
    # The kubelet rotated the projected token; Vault forgot our token (renewal will fail).
    (tmp_path / "token").write_text("jwt-2")
    d.k8s_roles["kubernetes/shop-web"]["jwts"] = {"jwt-2"}
    d.tokens.clear()
    src.vault.token_expires = time.monotonic() + 1  # inside the renewal window
    asyncio.run(src.fetch(CERT))
    assert d.requests_to("/v1/auth/token/renew-self") == 1
    assert d.requests_to("/v1/auth/kubernetes/login") == 2


def test_token_is_renewed_before_its_ttl_runs_out(vault, tmp_path):
    d = vault()
    d.add_pki("pki_retail", {"prod": {}})
    k8s_login(d, tmp_path, ["pki_retail/*"], ttl=3)
    src = VaultSource(settings([d], tmp_path))
    asyncio.run(src.fetch(CERT))
    time.sleep(2.1)  # past two thirds of the 3 s TTL
    asyncio.run(src.fetch(CERT))
    assert d.requests_to("/v1/auth/token/renew-self") == 1 and d.requests_to("/v1/auth/kubernetes/login") == 1


def test_failover_to_standby_and_back_to_primary(vault, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    primary, standby = vault(), vault()
    for d in (primary, standby):
        d.add_pki("pki_retail", {"prod": {}})
    tok_p, tok_s = primary.root_token(), standby.root_token()
    standby.tokens[tok_p] = standby.tokens.pop(tok_s)  # a replicated token, as in a Vault cluster
    s = settings([primary, standby], tmp_path, vault_auth="token", vault_token=tok_p, vault_down_seconds=1)
    src = VaultSource(s)
    asyncio.run(src.fetch(CERT))
    assert primary.requests_to("/v1/pki_retail/sign") == 1
    primary.mode = "hang"  # unresponsive: only the 500 ms timeout tells
    t0 = time.monotonic()
    asyncio.run(src.fetch(CERT))
    total = time.monotonic() - t0
    switch = total - s.vault_timeout_seconds
    print(f"failover: primary timed out after {s.vault_timeout_seconds * 1000:.0f} ms, standby answered "
          f"{switch * 1000:.0f} ms later ({total * 1000:.0f} ms in all)")
    assert standby.requests_to("/v1/pki_retail/sign") == 1
    assert switch <= 0.2, f"the switch added {switch * 1000:.0f} ms"
    assert any(r.getMessage() == "vault address switched" for r in caplog.records)
    # While the primary is marked down, requests go straight to the standby.
    asyncio.run(src.fetch(CERT))
    assert standby.requests_to("/v1/pki_retail/sign") == 2
    primary.mode = "ok"
    time.sleep(1.1)
    asyncio.run(src.fetch(CERT))
    # 1 before, 1 that hung (logged on arrival), 1 now: back on the primary once it is healthy.
    assert primary.requests_to("/v1/pki_retail/sign") == 3, "back on the primary once it is healthy"
    assert standby.requests_to("/v1/pki_retail/sign") == 2
    assert primary.requests_to("/v1/sys/health") >= 1


@pytest.mark.parametrize("mode", ["sealed", "error", "down", "slow"])
def test_sealed_erroring_or_down_primary_fails_over(vault, tmp_path, ca, mode):
    primary, standby = vault(), vault()
    tok = primary.root_token()
    standby.tokens[tok] = primary.tokens[tok]
    served = issue(ca)
    remember_key(served.key_pem)
    for d in (primary, standby):
        d.kv_put("secret", "shop/web-cert", {"certificate": served.chain_pem.decode(),
                                             "private_key": served.key_pem.decode()})
    if mode == "down":
        primary.stop()
    else:
        primary.mode, primary.delay = mode, 1.0  # slow: answers after the 0.5 s timeout
    src = VaultSource(settings([primary, standby], tmp_path, vault_auth="token", vault_token=tok, vault_mode="kv"))
    m = asyncio.run(src.fetch(CERT))
    assert m.serial == serial_hex(served.certificate.serial_number)
    assert standby.requests_to("/v1/secret/data/shop/web-cert") == 1


def kv_source(vault, tmp_path, data, policies=("secret/data/shop/*", "secret/metadata/shop/*"), **kw):
    d = vault()
    if data is not None:
        d.kv_put("secret", "shop/web-cert", data)
    tok = d.add_token(list(policies))
    return d, VaultSource(settings([d], tmp_path, vault_auth="token", vault_token=tok, vault_mode="kv", **kw))


def test_kv_errors_are_distinct_clear_and_keep_the_old_secret(vault, tmp_path, ca, caplog):
    caplog.set_level(logging.INFO)
    good, other = issue(ca), issue(ca)
    for k in (good, other):
        remember_key(k.key_pem)
    d, src = kv_source(vault, tmp_path, {"certificate": good.chain_pem.decode(), "private_key": good.key_pem.decode()})
    cache = SecretCache()
    r = Renewer(src.s, cache, [CERT], {CERT.name: src})

    def refresh():
        return asyncio.run(r.refresh(CERT))

    assert refresh()
    cases = [
        ({"certificate": good.chain_pem.decode()}, "malformed", "field(s) ['private_key'] missing at secret/data/shop/web-cert"),
        ({"certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
          "private_key": good.key_pem.decode()}, "bad_pem", "secret/data/shop/web-cert: certificate chain"),
        ({"certificate": good.chain_pem.decode(), "private_key": other.key_pem.decode()}, "key_mismatch",
         "secret/data/shop/web-cert: private key does not match"),
    ]
    for data, reason, text in cases:
        d.kv_put("secret", "shop/web-cert", data)
        assert not refresh()
        assert r.failing == {CERT.name: reason}
        assert any(text in rec.getMessage() and rec.fields.get("name") == CERT.name for rec in caplog.records), reason
        assert cache.get(CERT.name).material.serial == serial_hex(good.certificate.serial_number)
    # Deleted latest version: handled, old kept.
    d.kv_delete_latest("secret", "shop/web-cert")
    assert not refresh() and r.failing == {CERT.name: "deleted"}
    # Permission denied: the namespace isolation policy at work.
    d.tokens[src.s.vault_token.get_secret_value()].policies = ["secret/data/default/*"]
    assert not refresh() and r.failing == {CERT.name: "permission_denied"}
    assert any("denied access to secret/data/shop/web-cert" in rec.getMessage() for rec in caplog.records)
    d.kv["secret"].clear()
    d.tokens[src.s.vault_token.get_secret_value()].policies = ["*"]
    # Served before, now gone with all its versions: deleted (the agent reports not ready).
    assert not refresh() and r.failing == {CERT.name: "deleted"} and not r.status()["ready"]
    assert any("deleted with all its versions" in rec.getMessage() for rec in caplog.records)
    assert cache.get(CERT.name).material.serial == serial_hex(good.certificate.serial_number)


def test_kv_new_version_is_noticed_by_polling(vault, tmp_path, ca):
    first, second = issue(ca), issue(ca)
    for k in (first, second):
        remember_key(k.key_pem)
    d, src = kv_source(vault, tmp_path, {"certificate": first.chain_pem.decode(), "private_key": first.key_pem.decode()})
    asyncio.run(src.fetch(CERT))
    assert src._poll([CERT]) == []
    d.kv_put("secret", "shop/web-cert", {"certificate": second.chain_pem.decode(),
                                         "private_key": second.key_pem.decode(), "revokes_previous": True})
    assert src._poll([CERT]) == [CERT.name]
    assert asyncio.run(src.fetch(CERT)).serial == serial_hex(second.certificate.serial_number)


def test_ca_rollover_serves_both_cas_for_the_overlap_then_only_the_new(vault, tmp_path):
    from sds_core.pki.ca import LocalCA

    d = vault()
    pki = d.add_pki("pki_retail", {"prod": {}})
    old = pki.ca
    src = VaultSource(settings([d], tmp_path, vault_auth="token", vault_token=d.root_token(),
                               vault_ca_overlap_seconds=1))
    assert asyncio.run(src.fetch(TRUST)).trusted_ca == old.cert_pem
    pki.ca = LocalCA.generate("pki_retail CA 2")
    assert src._poll([TRUST]) == [TRUST.name]
    both = asyncio.run(src.fetch(TRUST)).trusted_ca
    assert pki.ca.cert_pem in both and old.cert_pem in both
    time.sleep(1.1)
    assert src._poll([TRUST]) == [TRUST.name], "the overlap's end must trigger a refresh"
    assert asyncio.run(src.fetch(TRUST)).trusted_ca == pki.ca.cert_pem


def test_all_addresses_down_is_a_source_error_not_a_crash(vault, tmp_path):
    a, b = vault(), vault()
    a.stop()
    b.stop()
    src = VaultSource(settings([a, b], tmp_path, vault_auth="token", vault_token="t"))
    with pytest.raises(SourceError) as e:
        asyncio.run(src.fetch(CERT))
    assert e.value.reason == "unavailable" and a.addr in str(e.value)


def test_auth_failure_is_clear_and_counted(vault, tmp_path):
    from sds_core.sds import metrics

    d = vault()
    d.add_pki("pki_retail", {"prod": {}})
    k8s_login(d, tmp_path, jwt="right")
    (tmp_path / "token").write_text("wrong")
    before = metrics.VAULT_AUTH_FAILURES._value.get()
    with pytest.raises(SourceError) as e:
        asyncio.run(VaultSource(settings([d], tmp_path)).fetch(CERT))
    assert e.value.reason == "auth_failed" and "role 'shop-web'" in str(e.value)
    assert metrics.VAULT_AUTH_FAILURES._value.get() == before + 1
    assert "right" not in str(e.value) and "wrong" not in str(e.value)


def test_vault_client_needs_addresses(tmp_path):
    with pytest.raises(ValueError, match="vault_addresses"):
        VaultClient(AgentSettings(source="vault"))


def test_invalid_secret_messages_name_the_path(vault, tmp_path, ca):
    d, src = kv_source(vault, tmp_path, {"certificate": "x", "private_key": "y"})
    with pytest.raises(InvalidSecret, match="^secret/data/shop/web-cert: "):
        asyncio.run(src.fetch(CERT))


def test_kv_trust_bundle(vault, tmp_path, ca):
    d, src = kv_source(vault, tmp_path, None)
    d.kv_put("secret", "shop/trust", {"ca_chain": ca.cert_pem.decode()})
    m = asyncio.run(src.fetch(TRUST))
    assert m.trusted_ca == ca.cert_pem and src.kv_versions["trust"] == 1
    d.kv_put("secret", "shop/trust", {"ca_chain": ca.cert_pem.decode(), "note": "v2"})
    assert src._poll([TRUST]) == ["trust"]


def test_pki_sign_keeps_the_key_in_the_agent_and_issue_still_works(vault, tmp_path):
    """Default `MOUNT/sign/ROLE`: the agent sends a CSR; Vault never makes or sees the key.
    A path naming `issue` keeps the old behaviour for roles that only allow it."""
    d = vault()
    d.add_pki("pki_retail", {"prod": {}})
    k8s_login(d, tmp_path, ["pki_retail/sign/prod", "pki_retail/issue/prod"])
    m = asyncio.run(VaultSource(settings([d], tmp_path)).fetch(CERT))
    assert d.requests_to("/v1/pki_retail/sign/prod") == 1 and d.requests_to("/v1/pki_retail/issue") == 0
    assert m.private_key and m.serial
    legacy = VaultSource(settings([d], tmp_path, vault_pki_path="pki_{business_line}/issue/{env}"))
    assert asyncio.run(legacy.fetch(CERT)).serial and d.requests_to("/v1/pki_retail/issue/prod") == 1
    bad = VaultSource(settings([d], tmp_path, vault_pki_path="pki_retail/prod"))
    with pytest.raises(Exception, match="MOUNT/sign/ROLE"):
        asyncio.run(bad.fetch(CERT))
