"""Validation, the rotation rule, sources and settings of the SDS agent, without Envoy."""
from __future__ import annotations

from sds_core.pki.validation import serial_hex

import asyncio
import datetime as dt
import logging
import random
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from sds_core.sds import material
from sds_core.pki.ca import LocalCA
from sds_core.sds.cache import SecretCache
from sds_core.sds.renewal import Renewer, backoff, renew_delay
from sds_core.sds.settings import AgentSettings
from sds_core.sds.sources.base import SecretSpec
from sds_core.sds.sources.files import FilesSource
from sds_core.sds.sources.local_ca import LocalCASource
from sds_core.pki.validation import InvalidSecret
from tests.conftest import remember_key
from devkit.harness import issue, write_cert_dir

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def mat(lifetime_h: float, start=NOW) -> material.SecretMaterial:
    return material.SecretMaterial(kind=material.TLS_CERTIFICATE, not_before=start,
                                   not_after=start + dt.timedelta(hours=lifetime_h), digest="x")


def test_validation_accepts_good_and_names_each_bad_case(ca):
    good = issue(ca)
    m = material.tls_certificate(good.chain_pem, good.key_pem)
    assert m.serial == serial_hex(good.certificate.serial_number)
    assert b"BEGIN PRIVATE KEY" in m.private_key  # PKCS#8
    assert "PRIVATE" not in repr(m) and "key" not in repr(m).lower()
    other = issue(ca)
    expired = issue(ca, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
    cases = {
        "bad_pem": (b"garbage", good.key_pem),
        "bad_key": (good.chain_pem, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
        "key_mismatch": (good.chain_pem, other.key_pem),
        "expired": (expired.chain_pem, expired.key_pem),
        "chain_order": (good.chain_pem + other.chain_pem, good.key_pem),
    }
    for reason, (crt, key) in cases.items():
        with pytest.raises(InvalidSecret) as e:
            material.tls_certificate(crt, key)
        assert e.value.reason == reason
        assert "PRIVATE" not in str(e.value) and good.key_pem.decode().splitlines()[1] not in str(e.value)


def test_chain_with_intermediate_in_order_is_accepted():
    root = LocalCA.generate("root")
    inter_issued = root.issue("intermediate", ttl=dt.timedelta(days=30))
    # Turn the issued cert into a CA by re-signing with CA constraints.
    inter_key = serialization.load_pem_private_key(inter_issued.key_pem, None)

    inter_cert = (x509.CertificateBuilder().subject_name(inter_issued.certificate.subject)
                  .issuer_name(root.cert.subject).public_key(inter_key.public_key())
                  .serial_number(x509.random_serial_number())
                  .not_valid_before(inter_issued.certificate.not_valid_before_utc)
                  .not_valid_after(inter_issued.certificate.not_valid_after_utc)
                  .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                  .sign(root.key, hashes.SHA256()))
    inter = LocalCA(inter_cert, inter_key)
    leaf = issue(inter)
    m = material.tls_certificate(leaf.chain_pem + inter.cert_pem, leaf.key_pem)
    assert m.certificate_chain.count(b"BEGIN CERTIFICATE") == 2
    with pytest.raises(InvalidSecret, match="not issued by"):
        material.tls_certificate(leaf.chain_pem + root.cert_pem, leaf.key_pem)  # intermediate missing


def test_trust_bundle_drops_expired_cas_and_checks_crl(ca):
    old = LocalCA.generate("old", days=1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    m = material.validation_context(old.cert_pem + ca.cert_pem)
    assert m.trusted_ca == ca.cert_pem
    with pytest.raises(InvalidSecret) as e:
        material.validation_context(old.cert_pem)
    assert e.value.reason == "expired"
    with pytest.raises(InvalidSecret) as e:
        material.validation_context(ca.cert_pem, b"not a crl")
    assert e.value.reason == "bad_crl"


@pytest.mark.parametrize("lifetime_h,floor_h,expect_h", [
    (48, 24, 24),              # half the lifetime and the floor agree
    (30, 24, 15),              # short-lived: at half the lifetime
    (1, 168, 0.5),             # a floor longer than the lifetime never causes a renewal loop
    (240, 24, 216),            # long-lived: when the floor (24 h) remains
    (90 * 24, 168, 83 * 24),   # the seed: 90-day certificates renew 7 days before expiry
    (24 + 30 / 3600, 168, 12 + 15 / 3600),  # Vault's 30 s back-dating changes nothing
])
def test_rotation_rule(lifetime_h, floor_h, expect_h):
    s = AgentSettings(rotation_floor_seconds=floor_h * 3600, rotation_jitter=0)
    assert renew_delay(mat(lifetime_h), s, NOW, random.Random(1)) == pytest.approx(expect_h * 3600)


def test_rotation_jitter_spreads_renewals_within_bounds():
    s = AgentSettings(rotation_floor_seconds=0, rotation_jitter=0.1)
    rng = random.Random(7)
    delays = [renew_delay(mat(10), s, NOW, rng) for _ in range(1000)]
    assert min(delays) >= 0.4 * 36000 and max(delays) <= 0.6 * 36000
    # The jitter band is ±10 % of half of 10 h: 3,600 s wide. Renewals must fill it, not bunch.
    assert max(delays) - min(delays) > 0.8 * 3600
    from collections import Counter

    assert max(Counter(round(d) for d in delays).values()) <= 5


def test_backoff_is_capped_and_grows():
    s = AgentSettings(retry_initial_seconds=0.5, retry_max_seconds=10)
    rng = random.Random(3)
    assert [backoff(n, s, rng) <= min(10, 0.5 * 2 ** (n - 1)) for n in range(1, 12)] == [True] * 11
    assert backoff(10, s, rng) >= 5


def test_local_ca_issues_spiffe_and_dns_sans():
    s = AgentSettings(namespace="shop", service_account="cart", service="cart", certificates=["c"],
                      trust_bundles=["t"])
    src = LocalCASource(s)
    m = asyncio.run(src.fetch(SecretSpec("c", material.TLS_CERTIFICATE)))
    cert = x509.load_pem_x509_certificate(m.certificate_chain)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cluster.local/ns/shop/sa/cart"]
    assert "cart.shop.svc" in san.get_values_for_type(x509.DNSName)
    assert src.issues(SecretSpec("c", material.TLS_CERTIFICATE))
    bundle = asyncio.run(src.fetch(SecretSpec("t", material.VALIDATION_CONTEXT)))
    assert bundle.trusted_ca == src.ca.cert_pem


def test_renewer_keeps_previous_secret_on_bad_files_and_logs_reason(tmp_path, ca, caplog):
    caplog.set_level(logging.INFO)
    good = issue(ca)
    remember_key(good.key_pem)
    write_cert_dir(tmp_path, "web", good)
    s = AgentSettings(source="files", files_root=tmp_path, certificates=["web"])
    cache = SecretCache()
    spec = SecretSpec("web", material.TLS_CERTIFICATE)
    r = Renewer(s, cache, [spec], {"web": FilesSource(s)})

    async def body():
        assert await r.refresh(spec)
        (tmp_path / "web" / "tls.crt").unlink()
        (tmp_path / "web" / "tls.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\nZm9v\n-----END CERTIFICATE-----\n")
        assert not await r.refresh(spec)

    asyncio.run(body())
    assert cache.get("web").material.serial == serial_hex(good.certificate.serial_number)
    assert r.status()["failing"] == {"web": "bad_pem"} and r.status()["ready"]
    rejected = [rec for rec in caplog.records if rec.getMessage().startswith("secret rejected")]
    assert rejected and rejected[0].fields["name"] == "web" and rejected[0].fields["reason"] == "bad_pem"


def test_settings_from_env_and_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("SDS_CERTIFICATES", "a, b")
    monkeypatch.setenv("SDS_TRUST_BUNDLES", '["t"]')
    s = AgentSettings.load(["--socket-mode", "0600", "--source", "files"])
    assert s.certificates == ["a", "b"] and s.trust_bundles == ["t"]
    assert s.socket_mode_int == 0o600 and s.source == "files"
    with pytest.raises(Exception, match="both certificate and trust bundle"):
        AgentSettings(certificates=["x"], trust_bundles=["x"])
    with pytest.raises(ValueError):  # SettingsError is one
        AgentSettings(source="nope")


def test_files_source_sees_kubernetes_symlink_swap(tmp_path, ca):
    first, second = issue(ca), issue(ca)
    write_cert_dir(tmp_path, "web", first)
    s = AgentSettings(source="files", files_root=tmp_path, files_poll_seconds=0.01)
    src = FilesSource(s)
    spec = SecretSpec("web", material.TLS_CERTIFICATE)

    async def body():
        changes = src.changes([spec])
        nxt = asyncio.ensure_future(changes.__anext__())
        await asyncio.sleep(0.05)
        assert not nxt.done()
        write_cert_dir(tmp_path, "web", second)
        assert await asyncio.wait_for(nxt, 1) == "web"
        m = await src.fetch(spec)
        assert m.serial == serial_hex(second.certificate.serial_number)
        await changes.aclose()

    asyncio.run(body())


def test_certificate_names_from_a_file(tmp_path):
    f = tmp_path / "names.txt"
    f.write_text("# tenants\ntenant-a-cert\n\ntenant-b-cert\ntenant-a-cert\n")
    s = AgentSettings(certificates=["main-cert"], certificates_file=f)
    assert s.certificates == ["main-cert", "tenant-a-cert", "tenant-b-cert"]
    with pytest.raises(Exception, match="certificates_file"):
        AgentSettings(certificates_file=tmp_path / "missing.txt")


def test_dns_names_end_in_the_cluster_domain_not_the_trust_domain():
    """Vault and local-CA certificates got svc.<trust domain>: wrong wherever the trust domain is
    not the cluster's DNS suffix. One function (sds_core/names.py) now names them everywhere."""
    s = AgentSettings(trust_domain="bank.example", cluster_domain="cluster.local", service="web", namespace="shop")
    assert s.dns_sans() == ["web.shop.svc", "web.shop.svc.cluster.local"]
    assert s.spiffe_id == "spiffe://bank.example/ns/shop/sa/default"


def test_one_serial_format_keeps_the_leading_zero():
    """Audit serials dropped leading zeros (`486afca...` where openssl and Envoy print
    `0486afca...`): records could not be matched with what the tools show."""
    assert serial_hex(0x486AFCA) == "0486afca" and serial_hex(0xABCD) == "abcd" and serial_hex(1) == "01"


def test_expiry_metrics_count_down_and_give_the_timestamp():
    """sds_secret_expiry_seconds was set when a certificate was stored and never moved (read
    3,599 when 3,408 s were left); now it is computed at each scrape, beside the Prometheus-style
    not-after timestamp."""
    import datetime as dt
    import time as _time

    from prometheus_client import REGISTRY

    from sds_core.sds import metrics

    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=100)
    metrics.report_deadline(metrics.EXPIRY, metrics.NOT_AFTER, "unit-test-name", at)
    first = REGISTRY.get_sample_value("sds_secret_expiry_seconds", {"name": "unit-test-name"})
    _time.sleep(0.05)
    second = REGISTRY.get_sample_value("sds_secret_expiry_seconds", {"name": "unit-test-name"})
    assert 90 < first <= 100 and second < first
    assert REGISTRY.get_sample_value("sds_secret_not_after_timestamp_seconds",
                                     {"name": "unit-test-name"}) == at.timestamp()
    metrics.clear_deadline(metrics.EXPIRY, metrics.NOT_AFTER, "unit-test-name")
    assert REGISTRY.get_sample_value("sds_secret_expiry_seconds", {"name": "unit-test-name"}) is None


AGENT_RUN = """
import asyncio, sys, tempfile
import sds_sidecar.__main__, sds_core.sds.run
from sds_core.sds.agent import Agent
from sds_core.sds.settings import AgentSettings
from sds_core.sds.sources import files, issuer, local_ca  # every source but Vault's (hvac, lazily)
from sds_core.sds import stapling
d = tempfile.mkdtemp()
s = AgentSettings.load(["--socket-path", d + "/sds.sock", "--certificates", "web", "--trust-bundles", "ca",
                        "--http-port", "0", "--http-host", "127.0.0.1"], environ={})
async def main():
    agent = Agent(s)
    await agent.start()
    await asyncio.sleep(0.3)
    await agent.stop()
asyncio.run(main())
print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))
"""
EXCLUDED = {"pydantic", "pydantic_settings", "pydantic_core", "fastapi", "starlette", "uvicorn", "hvac",
            "kubernetes", "yaml", "httpx", "requests", "orjson", "uvloop", "jwt", "boto3", "botocore"}


def test_the_agent_imports_no_web_or_settings_framework():
    """The agent is a per-pod program: 5,000 pods pay for every import. Started (local CA) with every
    source module but Vault's loaded, it holds none of the frameworks the webhook uses."""
    out = subprocess.run([sys.executable, "-c", AGENT_RUN], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    assert "grpc" in loaded and "cryptography" in loaded, "the check ran an agent"
    assert not loaded & EXCLUDED, sorted(loaded & EXCLUDED)
