"""The agent on the Vault source feeding a real Envoy. Vault is the API test double
(tests/vault_double.py), reached by hvac over real HTTP — not a Vault server."""
from __future__ import annotations

import time

import pytest

from sds_sidecar.ca import LocalCA
from tests import envoy_configs as cfg
from tests.conftest import remember_key
from tests.harness import free_port, issue, save_pair, tls_get, wait_for
from tests.test_sds_envoy import refused
from tests.vault_double import VaultDouble, colon_hex
from webhook import bootstrap as b

CLIENT_ID = "spiffe://cluster.local/ns/shop/sa/client"


@pytest.fixture
def vault():
    d = VaultDouble().start()
    yield d
    d.stop()


def vault_agent(procs, d: VaultDouble, token: str, certificates="server-cert", trust_bundles="", name="agent",
                **extra):
    env = dict(source="vault", certificates=certificates, trust_bundles=trust_bundles, vault_addresses=d.addr,
               vault_auth="token", vault_token=token, namespace="shop", service_account="web", service="web",
               env="prod", business_line="retail", dns_names="localhost", vault_poll_seconds=0.3,
               retry_initial_seconds=0.2, retry_max_seconds=1, rotation_floor_seconds=0, vault_allow_http="true")
    env.update(extra)
    return procs.agent(name, **env)


def serial_at(port, ca_pem, client=None) -> int:
    return tls_get(port, ca_pem, client=client)[0].serial_number


def test_pki_certificate_served_and_renewed_ahead_of_expiry(procs, vault):
    pki = vault.add_pki("pki_retail", {"prod": {"not_before_duration": "1s"}})
    agent = vault_agent(procs, vault, vault.add_token(["pki_retail/sign/prod"]), vault_pki_ttl="6s")
    port = free_port()
    procs.envoy(cfg.tls_server(agent.socket, port, "server-cert")).wait_live()
    first = serial_at(port, pki.ca.cert_pem)
    assert colon_hex(first) in pki.issued, "Envoy serves the certificate Vault issued"
    # Half of a 6 s lifetime (±10 %): a new certificate before the old one expires.
    t0 = time.monotonic()
    second = wait_for(lambda: (s := serial_at(port, pki.ca.cert_pem)) != first and s, timeout=8, interval=0.1,
                      what="renewed certificate")
    print(f"renewed after {time.monotonic() - t0:.1f} s of a 6 s lifetime")
    assert colon_hex(second) in pki.issued


def test_kv_certificate_served_and_updated_without_restart(procs, vault, ca):
    first, second = issue(ca), issue(ca)
    for k in (first, second):
        remember_key(k.key_pem)
    vault.kv_put("secret", "shop/server-cert", {"certificate": first.chain_pem.decode(),
                                                "private_key": first.key_pem.decode()})
    tok = vault.add_token(["secret/data/shop/*", "secret/metadata/shop/*"])
    agent = vault_agent(procs, vault, tok, vault_mode="kv")
    port = free_port()
    envoy = procs.envoy(cfg.tls_server(agent.socket, port, "server-cert"))
    envoy.wait_live()
    assert serial_at(port, ca.cert_pem) == first.certificate.serial_number
    vault.kv_put("secret", "shop/server-cert", {"certificate": second.chain_pem.decode(),
                                                "private_key": second.key_pem.decode()})
    wait_for(lambda: serial_at(port, ca.cert_pem) == second.certificate.serial_number, timeout=5,
             what="KV v2 update at Envoy")
    assert envoy.p.poll() is None and envoy.stat("server.hot_restart_epoch") == 0


def test_vault_outage_longer_than_a_renewal_period_keeps_serving_then_renewal_resumes(procs, vault):
    pki = vault.add_pki("pki_retail", {"prod": {"not_before_duration": "1s"}})
    agent = vault_agent(procs, vault, vault.add_token(["pki_retail/*"]), vault_pki_ttl="12s",
                        vault_down_seconds=1)
    port = free_port()
    procs.envoy(cfg.tls_server(agent.socket, port, "server-cert")).wait_live()
    first = serial_at(port, pki.ca.cert_pem)
    vault.stop()  # every address down (there is one)
    deadline = time.monotonic() + 7.5  # past the renewal point (~6 s) of the 12 s certificate
    while time.monotonic() < deadline:
        assert serial_at(port, pki.ca.cert_pem) == first
        time.sleep(0.25)
    code, status = agent.status()
    assert code == 200 and status["degraded"] and status["failing"] == {"server-cert": "unavailable"}
    vault.start()
    wait_for(lambda: serial_at(port, pki.ca.cert_pem) != first, timeout=5, what="renewal after Vault returned")
    wait_for(lambda: not agent.status()[1]["degraded"], timeout=5, what="agent healthy again")


def test_revocation_pushes_replacement_and_crl_makes_envoy_refuse_the_revoked_client(procs, vault, tmp_path):
    pki = vault.add_pki("pki_retail", {"prod": {"not_before_duration": "1s"}})
    agent = vault_agent(procs, vault, vault.add_token(["pki_retail/*"]), trust_bundles="trust", vault_crl="true",
                        vault_pki_ttl="1h")
    port = free_port()
    sans = b.san_matchers(spiffe_ids=[CLIENT_ID])
    procs.envoy(cfg.tls_server(agent.socket, port, "server-cert", "trust", sans)).wait_live()
    client = vault.issue_direct("pki_retail", "client", [CLIENT_ID])
    remember_key(client.key_pem)
    files = save_pair(tmp_path, client, "client")
    served = serial_at(port, pki.ca.cert_pem, files)

    # Emergency revocation of the agent's own certificate: a replacement is issued and pushed.
    import hvac

    admin = hvac.Client(vault.addr, token=vault.root_token())
    admin.secrets.pki.revoke_certificate(colon_hex(served), mount_point="pki_retail")
    replacement = wait_for(lambda: (s := serial_at(port, pki.ca.cert_pem, files)) != served and s, timeout=5,
                           what="replacement of the revoked certificate")
    assert colon_hex(replacement) in pki.issued

    # Revoking the client's certificate: the CRL reaches Envoy, which then refuses that client.
    admin.secrets.pki.revoke_certificate(colon_hex(client.certificate.serial_number), mount_point="pki_retail")
    wait_for(lambda: refused(port, pki.ca.cert_pem, files), timeout=5, what="revoked client refused")
    fresh = vault.issue_direct("pki_retail", "client", [CLIENT_ID])
    remember_key(fresh.key_pem)
    assert not refused(port, pki.ca.cert_pem, save_pair(tmp_path, fresh, "fresh")), "other clients still pass"


def test_ca_rollover_accepts_old_and_new_ca_clients_during_the_overlap_only(procs, vault, tmp_path):
    pki = vault.add_pki("pki_retail", {"prod": {"not_before_duration": "1s"}})
    old_ca = pki.ca
    agent = vault_agent(procs, vault, vault.add_token(["pki_retail/*"]), trust_bundles="trust",
                        vault_ca_overlap_seconds=4, vault_pki_ttl="1h")
    port = free_port()
    sans = b.san_matchers(spiffe_ids=[CLIENT_ID])
    procs.envoy(cfg.tls_server(agent.socket, port, "server-cert", "trust", sans)).wait_live()
    old_client = vault.issue_direct("pki_retail", "client", [CLIENT_ID])
    new_ca = LocalCA.generate("pki_retail CA 2")
    new_client = vault.issue_direct("pki_retail", "client", [CLIENT_ID], ca=new_ca)
    for k in (old_client, new_client):
        remember_key(k.key_pem)
    old_files, new_files = save_pair(tmp_path, old_client, "old"), save_pair(tmp_path, new_client, "new")
    both = old_ca.cert_pem + new_ca.cert_pem  # to verify Envoy's own certificate, whichever CA issued it
    assert not refused(port, both, old_files) and refused(port, both, new_files)

    pki.ca = new_ca  # the rollover in Vault
    rolled = time.monotonic()
    wait_for(lambda: not refused(port, both, new_files), timeout=4, what="new-CA client accepted")
    assert not refused(port, both, old_files), "old-CA clients must still pass during the overlap"
    wait_for(lambda: refused(port, both, old_files), timeout=8, what="old CA dropped after the overlap")
    print(f"old CA dropped {time.monotonic() - rolled:.1f} s after the rollover (overlap 4 s)")
    assert time.monotonic() - rolled >= 3.5
    assert not refused(port, both, new_files)
