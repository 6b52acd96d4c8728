"""CRLs from real OpenBao reaching a real Envoy: during a CA rollover (two issuers on one
mount) and with a root + intermediate layout. Envoy must refuse the revoked peer and only it."""
from __future__ import annotations

import pytest

from devkit.openbao import OpenBao
from devkit import envoy_configs as cfg
from tests.conftest import remember_key
from devkit.harness import free_port, tls_get, wait_for

pytestmark = pytest.mark.vault_real


def client_pair(b: OpenBao, mount: str, tmp_path, stem: str) -> tuple[tuple, str]:
    files, serial = b.peer(mount, "prod", stem, f"spiffe://cluster.local/ns/shop/sa/{stem}", tmp_path)
    remember_key(files[1].read_bytes())
    return files, serial


def agent_and_envoy(procs, b: OpenBao, mount: str):
    token = b.token([f"{mount}/sign/prod"])
    agent = procs.agent(source="vault", certificates="server-cert", trust_bundles="trust", vault_addresses=b.addr,
                        vault_allow_http="true", vault_auth="token", vault_token=token, namespace="shop",
                        service_account="web", service="web", env="prod", business_line="x", dns_names="localhost",
                        vault_pki_path=f"{mount}/sign/prod", vault_crl="true", vault_poll_seconds=0.3)
    port = free_port()
    procs.envoy(cfg.tls_server(agent.socket, port, "server-cert", "trust")).wait_live()
    return agent, port


def answers(port: int, ca_pem: bytes, client) -> bool:
    try:
        return " 200 " in tls_get(port, ca_pem, client=client)[1].splitlines()[0]
    except OSError:
        return False


def test_crl_during_ca_rollover_refuses_only_the_revoked_peer(procs, openbao, tmp_path):
    old_ca = openbao.pki("pki_roll").encode()
    old_peer, old_serial = client_pair(openbao, "pki_roll", tmp_path, "old")
    agent, port = agent_and_envoy(procs, openbao, "pki_roll")
    assert wait_for(lambda: answers(port, old_ca, old_peer), what="old peer accepted")
    # Rollover: a second issuer becomes the default; the old one stays trusted for the overlap.
    admin = openbao.client()
    new = admin.write("pki_roll/root/rotate/internal", common_name="rolled CA", key_type="ec", ttl="8760h")["data"]
    admin.write("pki_roll/root/replace", default=new["issuer_id"])
    new_peer, _ = client_pair(openbao, "pki_roll", tmp_path, "new")
    both = old_ca + b"\n" + new["certificate"].encode()
    assert wait_for(lambda: answers(port, both, new_peer), what="new peer accepted after the rollover")
    assert answers(port, both, old_peer), "a good peer of the old issuer is refused during the overlap"
    admin.secrets.pki.revoke_certificate(old_serial, mount_point="pki_roll")
    wait_for(lambda: not answers(port, both, old_peer), what="revoked old peer refused")
    assert answers(port, both, new_peer)


def test_crl_with_root_and_intermediate_refuses_only_the_revoked_peer(procs, openbao, tmp_path):
    root_pem = openbao.pki("pki_root", "offline root", role=None).encode()
    admin = openbao.client()
    admin.sys.enable_secrets_engine("pki", path="pki_int", config={"max_lease_ttl": "87600h"})
    csr = admin.write("pki_int/intermediate/generate/internal", common_name="prod intermediate",
                      key_type="ec")["data"]["csr"]
    signed = admin.write("pki_root/root/sign-intermediate", csr=csr, format="pem_bundle", ttl="8760h")["data"]
    admin.write("pki_int/intermediate/set-signed", certificate=signed["certificate"] + "\n" + root_pem.decode())
    openbao.role("pki_int", "prod")
    good, _ = client_pair(openbao, "pki_int", tmp_path, "good")
    bad, bad_serial = client_pair(openbao, "pki_int", tmp_path, "bad")
    agent, port = agent_and_envoy(procs, openbao, "pki_int")
    assert wait_for(lambda: answers(port, root_pem, good), what="unrevoked peer accepted")
    assert answers(port, root_pem, bad)
    admin.secrets.pki.revoke_certificate(bad_serial, mount_point="pki_int")
    wait_for(lambda: not answers(port, root_pem, bad), what="revoked peer refused")
    assert answers(port, root_pem, good)
