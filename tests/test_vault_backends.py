"""The same Vault scenarios against two backends: the Vault API test double (always), and a real
Vault server when VAULT_ADDR and VAULT_TOKEN (a root or admin token, e.g. `vault server -dev`)
are set — marker vault_real, skipped otherwise. Only the real backend proves real Vault."""
from __future__ import annotations

import asyncio
import os
import uuid

import hvac
import pytest

from sds_sidecar import material
from sds_sidecar.settings import AgentSettings
from sds_sidecar.sources.base import SecretSpec, SourceError
from sds_sidecar.sources.vault import VaultSource
from tests.conftest import remember_key
from tests.harness import issue
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
    """Sets up fresh mounts on a real Vault through hvac (as an operator would with the CLI)."""

    name = "real"

    def __init__(self):
        self.addr = os.environ["VAULT_ADDR"]
        self.admin = hvac.Client(self.addr, token=os.environ["VAULT_TOKEN"])
        self.mounts = []

    def kv(self, mount, path, data):
        if mount not in self.mounts:
            self.admin.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
            self.mounts.append(mount)
        self.admin.secrets.kv.v2.create_or_update_secret(path, data, mount_point=mount)

    def pki(self, mount, role):
        self.admin.sys.enable_secrets_engine("pki", path=mount, config={"max_lease_ttl": "87600h"})
        self.mounts.append(mount)
        root = self.admin.secrets.pki.generate_root("internal", "sds-injector test root", mount_point=mount)
        self.admin.secrets.pki.create_or_update_role(role, {"allow_any_name": True, "allowed_uri_sans": "spiffe://*",
                                                            "max_ttl": "2h"}, mount_point=mount)
        return root["data"]["certificate"]

    def token(self, paths):
        name = f"sds-test-{uuid.uuid4().hex[:8]}"
        rules = "\n".join(f'path "{p}" {{ capabilities = ["read", "create", "update"] }}' for p in paths)
        self.admin.sys.create_or_update_acl_policy(name, rules)
        return self.admin.auth.token.create(policies=[name], ttl="1h")["auth"]["client_token"]

    def revoke(self, mount, serial):
        self.admin.secrets.pki.revoke_certificate(serial, mount_point=mount)

    def close(self):
        for m in self.mounts:
            self.admin.sys.disable_secrets_engine(m)


BACKENDS = [pytest.param(DoubleBackend, id="double"),
            pytest.param(RealBackend, id="real-vault", marks=[pytest.mark.vault_real, pytest.mark.skipif(
                not (os.environ.get("VAULT_ADDR") and os.environ.get("VAULT_TOKEN")),
                reason="real Vault: set VAULT_ADDR and VAULT_TOKEN (e.g. vault server -dev) to run")])]


@pytest.fixture(params=BACKENDS)
def backend(request):
    b = request.param()
    yield b
    b.close()


def source(backend, token, **kw) -> VaultSource:
    s = AgentSettings(source="vault", vault_addresses=[backend.addr], vault_auth="token", vault_token=token,
                      namespace="shop", service_account="web", service="web", env="prod",
                      business_line=kw.pop("business_line", "retail"), vault_timeout_seconds=2, **kw)
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
    assert asyncio.run(ok.fetch(spec)).serial == format(good.certificate.serial_number, "x")
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
