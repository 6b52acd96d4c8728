"""CA rotation with pods running (self mode): `python -m webhook ca rotate` (an environment's
intermediates, or the root and every intermediate under a new one) while real Envoys keep
handshaking mTLS: a pod issued before, one issued after, both renewed during the overlap. No pod
is re-created and not one request fails, before, during or after (the times are the issuer's
settings, shortened: propagation 3 s, overlap 14 s, where production has 15 min and 48 h)."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from devkit import envoy_configs as cfg
from devkit.harness import free_port, wait_for
from devkit.issuer_run import IssuerRun
from devkit.kube_api import KubeAPI
from sds_core.envoy import bootstrap as b
from tests.test_istio_mode import served

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "config.yaml"
PROD = {"sds-injector.io/env": "prod", "sds-injector.io/business-line": "retail"}
PEERS = b.san_matchers(spiffe_prefixes=["spiffe://cluster.local/ns/shop-prod/"])


def one_request_per_connection(config: dict) -> dict:
    """Every request a new TLS handshake (the server closes each connection after one request):
    a pooled connection would hide a certificate the peer no longer accepts."""
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["common_http_protocol_options"] = {"max_requests_per_connection": 1}
    return config


def ca_of(port: int) -> bytes:
    """Which CA signed the certificate an Envoy serves (its authority key identifier: old and new CAs
    of an environment share a name)."""
    return served(port).extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier


class Traffic(threading.Thread):
    """A request through the client Envoy every 50 ms; every answer that is not 200 is kept."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port, self.ok, self.failed = port, 0, []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=3) as r:
                    self.ok += r.status == 200
            except (urllib.error.URLError, OSError) as e:
                self.failed.append(f"{time.monotonic():.2f} {e}")
            time.sleep(0.05)


@pytest.mark.parametrize("scope", ["--all", "--root"])
def test_rotation_with_pods_running_fails_no_handshake(procs, tmp_path, scope):
    kube = KubeAPI().start()
    issuer = IssuerRun(tmp_path, kube, CONFIG, verifier="jwks", ca_refresh_seconds=0.3, ca_propagation_seconds=3,
                       ca_overlap_seconds=14).start()
    try:
        def pod_agent(name: str):
            pod = kube.add_pod("shop-prod", name, name.split("-")[0], {"app": name}, PROD)
            token = tmp_path / f"{name}.token"
            token.write_text(kube.mint(pod))
            return procs.agent(name=name, source="issuer", certificates="retail-service-cert",
                               trust_bundles="retail-trust-bundle", issuer_address=issuer.address,
                               issuer_ca=issuer.ca_pem.decode(), issuer_token_file=str(token),
                               static_refresh_seconds=0.3, retry_initial_seconds=0.2, retry_max_seconds=0.5)

        old_server, client = pod_agent("web-1"), pod_agent("cli-1")
        sport, cport = free_port(), free_port()
        procs.envoy(one_request_per_connection(cfg.tls_server(old_server.socket, sport, "retail-service-cert",
                                                              "retail-trust-bundle", PEERS)), "server").wait_live()
        procs.envoy(cfg.mtls_client(client.socket, cport, sport, "retail-service-cert", "retail-trust-bundle", PEERS),
                    "client").wait_live()
        first_ca = ca_of(sport)
        traffic = Traffic(cport)
        traffic.start()
        wait_for(lambda: traffic.ok > 5, 10, what="traffic before the rotation")

        r = subprocess.run([sys.executable, "-m", "webhook", "ca", "rotate", scope, "--config", str(CONFIG),
                            "--kubeconfig", str(tmp_path / "kubeconfig.json")], capture_output=True, text=True,
                           cwd=ROOT, timeout=60)
        assert r.returncode == 0, r.stderr
        secret = ("sds-system", "sds-injector-ca")
        wait_for(lambda: "prod.next.crt" in kube.objects["secrets"][secret]["data"], 10, what="the next CA")
        # It joined the bundles; after the propagation delay it signs.
        wait_for(lambda: "prod.next.crt" not in kube.objects["secrets"][secret]["data"], 15, what="the next CA signing")
        # A pod started now gets a certificate of the new CA; the client still holds an old one.
        new_server = pod_agent("web-2")
        nport = free_port()
        procs.envoy(cfg.tls_server(new_server.socket, nport, "retail-service-cert", "retail-trust-bundle", PEERS),
                    "server2").wait_live()
        assert ca_of(nport) != first_ca, "issued by the next CA"
        # The old pods renew during the overlap, as they would at half their certificates' lives.
        for a in (old_server, client):
            a.p.send_signal(signal.SIGHUP)
        wait_for(lambda: ca_of(sport) == ca_of(nport), 10, what="the old server renewed under the new CA")
        token = kube.mint(kube.objects["pods"][("shop-prod", "web-2")])

        def trusted() -> list[bytes]:
            pem = issuer.post("/v1/trust-bundles", {"name": "retail-trust-bundle"}, token)[1]["trust_bundle"]
            return [c.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
                    for c in x509.load_pem_x509_certificates(pem.encode())]
        # Past the overlap only the new CA is trusted (the old one left every bundle).
        wait_for(lambda: trusted() == [ca_of(nport)], 25, what="the old CA retired")
        time.sleep(1)  # the agents re-read their bundles (0.3 s) and Envoy keeps handshaking
        traffic.stop.set()
        traffic.join()
        assert traffic.failed == [], traffic.failed[:5]
        assert traffic.ok > 100
    finally:
        issuer.stop()
        kube.stop()
