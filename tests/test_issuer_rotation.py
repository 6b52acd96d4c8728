"""Rotation of the issuer's environment CAs, stored in the CA Secret through the kubernetes
client (API double): a next CA joins the bundle before it signs, the retired one stays trusted
for the overlap, then goes; replicas racing on a rotation agree; a running issuer picks up a
rotation another replica made."""
from __future__ import annotations

import datetime as dt
import json
import threading

import pytest
from cryptography import x509

from devkit.issuer_run import IssuerRun
from devkit.kube_api import KubeAPI
from sds_core.sds.sources.issuer import csr_pem, new_key
from devkit.harness import wait_for
from tests.test_issuer import CONFIG, PROD
from webhook.issuer.authority import Layout, Rotation, load_or_create
from sds_core.kube.client import api_client

ENVS, TD = ["prod", "dev"], "cluster.local"
R = Rotation(before=30 * 86400, propagation=900, overlap=48 * 3600, lifetime_days=365)


@pytest.fixture
def core(tmp_path):
    from kubernetes import client

    kube = KubeAPI().start()
    (tmp_path / "kubeconfig").write_text(kube.kubeconfig())
    yield client.CoreV1Api(api_client(tmp_path / "kubeconfig")), kube
    kube.stop()


def certs(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def settle(core, at):
    return load_or_create(core, "sds-system", "ca", Layout(tuple(ENVS), TD), rotation=R, at=at)


def test_a_rotation_introduces_then_promotes_then_retires(core):
    core, _ = core
    a = settle(core, None)
    first = a.ca("prod")
    expiry = first.cert.not_valid_after_utc
    leaf = first.issue("svc", uris=["spiffe://cluster.local/ns/a/sa/b"]).certificate
    # Far from expiry: nothing changes.
    assert settle(core, expiry - dt.timedelta(days=60)).ca("prod").cert == first.cert
    # 30 days before: a next CA joins the bundle, the current one still signs.
    t1 = expiry - dt.timedelta(days=29)
    b = settle(core, t1)
    assert b.ca("prod").cert == first.cert and len(certs(b.bundle("prod", at=t1))) == 2
    # After the propagation delay it signs; the old one stays trusted for the overlap.
    t2 = t1 + dt.timedelta(seconds=901)
    c = settle(core, t2)
    assert c.ca("prod").cert != first.cert
    bundle = certs(c.bundle("prod", R.overlap, at=t2))
    assert first.cert in bundle and c.ca("prod").cert in bundle and len(bundle) == 2
    leaf.verify_directly_issued_by(first.cert)  # a peer's old certificate still chains to the bundle
    # After the overlap: the retired CA is gone. (The clock here is simulated while the new CA's
    # validity is real, so by t3 a further next CA may already have joined: that is not checked.)
    t3 = t2 + dt.timedelta(hours=49)
    d = settle(core, t3)
    after = certs(d.bundle("prod", R.overlap, at=t3))
    assert first.cert not in after and d.ca("prod").cert == c.ca("prod").cert and c.ca("prod").cert in after
    # Other environments rotate on their own clock, and never share a CA.
    assert not set(certs(d.bundle("dev", at=t3))) & set(certs(d.bundle("prod", at=t3)))


def test_replicas_racing_on_a_rotation_agree(core):
    core, kube = core
    expiry = settle(core, None).ca("prod").cert.not_valid_after_utc
    at = expiry - dt.timedelta(days=29)
    results = []
    threads = [threading.Thread(target=lambda: results.append(settle(core, at))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    nexts = {r.nexts["prod"][0].cert.serial_number for r in results}
    stored = settle(core, at)
    assert nexts == {stored.nexts["prod"][0].cert.serial_number}, "one next CA, whoever won"
    assert sum(1 for m, p in kube.requests if m == "PUT") >= 1


def test_a_running_issuer_picks_up_a_rotation_made_by_another_replica(tmp_path):
    kube = KubeAPI().start()
    issuer = IssuerRun(tmp_path, kube, CONFIG, ca_refresh_seconds="0.3").start()
    try:
        pod = kube.add_pod("shop-prod", "cart-rot", "cart", {"app": "cart"}, PROD)
        bundle = lambda: issuer.post("/v1/trust-bundles", {"name": "retail-trust-bundle"}, kube.mint(pod))[1][  # noqa: E731
            "trust_bundle"]
        assert len(certs(bundle().encode())) == 1
        (tmp_path / "kc").write_text(kube.kubeconfig())
        from kubernetes import client

        other = client.CoreV1Api(api_client(tmp_path / "kc"))
        secret = json.loads(other.read_namespaced_secret("sds-injector-ca", "sds-system",
                                                         _preload_content=False).data)
        assert secret["metadata"]["namespace"] == "sds-system"
        current = load_or_create(other, "sds-system", "sds-injector-ca", Layout(("prod", "staging", "dev"), TD))
        soon = current.ca("prod").cert.not_valid_after_utc - dt.timedelta(days=29)
        load_or_create(other, "sds-system", "sds-injector-ca", Layout(("prod", "staging", "dev"), TD), at=soon)
        wait_for(lambda: len(certs(bundle().encode())) == 2, timeout=5, what="the next CA in the issuer's bundle")
        status, out = issuer.post("/v1/certificates", {"name": "retail-service-cert",
                                                       "csr": csr_pem(new_key("ec"), "x")}, kube.mint(pod))
        assert status == 200 and len(certs(out["trust_bundle"].encode())) == 2
    finally:
        issuer.stop()
        kube.stop()


def test_the_ca_secret_is_kept_across_a_reinstall_and_renewed_only_when_deleted(core):
    """`helm uninstall` leaves the CA Secret (the issuer made it; it says keep): a reinstall's
    issuer settles on the same CAs. Deleting it (the documented way to start over) gives new
    ones. Modelled with the API double: the release's own objects are not in it."""
    api, kube = core
    first = load_or_create(api, "sds-system", "sds-injector-ca", Layout(tuple(ENVS), TD))
    stored = kube.objects["secrets"][("sds-system", "sds-injector-ca")]
    assert stored["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert stored["metadata"]["labels"]["sds-injector.io/component"] == "ca"
    again = load_or_create(api, "sds-system", "sds-injector-ca", Layout(tuple(ENVS), TD))  # the reinstall
    assert again.root.cert == first.root.cert and again.ca("prod").cert == first.ca("prod").cert
    kube.delete("secrets", "sds-system", "sds-injector-ca")  # kubectl delete secret ...
    fresh = load_or_create(api, "sds-system", "sds-injector-ca", Layout(tuple(ENVS), TD))
    assert fresh.root.cert != first.root.cert and fresh.ca("prod").cert != first.ca("prod").cert

