"""A gateway as users run it (the gateway agent, `python -m gateway serve`, and a real Envoy with
the bootstrap `python -m gateway bootstrap` prints), plus a TCP echo backend: for the tests and
the gateway benchmark."""
from __future__ import annotations

import json
import os
import socket
import socketserver
import ssl
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

from cryptography import x509

from gateway.envoy import bootstrap
from sds_core.policy.claim_crd import from_configmaps

from .harness import ENVOY, EnvoyAdmin, Proc, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent


class EchoBackend:
    """Every tenant's Service, on one loopback port: echoes what it gets, after `greeting` (to
    tell backends apart)."""

    def __init__(self, greeting: bytes = b""):
        self.accepted = 0
        backend = self

        class Echo(socketserver.BaseRequestHandler):
            def handle(self):
                backend.accepted += 1
                try:
                    if greeting:
                        self.request.sendall(greeting)
                    while data := self.request.recv(65536):
                        self.request.sendall(data)
                except ConnectionError:  # the client left mid-stream: nothing to echo to
                    pass

        class Server(socketserver.ThreadingTCPServer):
            # socketserver's default backlog is 5: a burst of gateway connections overflows it,
            # the upstream connect fails and Envoy closes the client mid-handshake.
            request_queue_size = 1024
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Echo)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


# What the operator grants in the tests, benchmarks and demos: the default policy's environments,
# every namespace may claim names under example.com (the product's default grants nothing).
EXAMPLE_GRANTS = {"namespacePolicy": {"rules": [
    {"namespaces": ["*"], "environments": ["dev", "staging"], "gatewayHostnames": ["*.example.com"]}]}}


def example_grants(workdir: Path) -> Path:
    """An injector configuration file with EXAMPLE_GRANTS, for the gateway and the issuer."""
    path = workdir / "injector-config.json"
    path.write_text(json.dumps(EXAMPLE_GRANTS))
    return path


class GatewayRun(EnvoyAdmin):
    admin_timeout = 5  # 10,000 tenants' stats take a while

    def __init__(self, workdir: Path, backend_port: int, concurrency: int = 1, **settings):
        self.workdir = workdir
        self.port, self.http_port, self.admin_port = free_port(), free_port(), free_port()
        self.socket = workdir / "gateway.sock"
        settings.setdefault("injector_config_file", str(example_grants(workdir)))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SDS_")}
        env.update({"SDS_SOCKET_PATH": str(self.socket), "SDS_HTTP_PORT": str(self.http_port),
                    "SDS_GATEWAY_ADDRESS": "127.0.0.1", "SDS_GATEWAY_PORT": str(self.port),
                    "SDS_GATEWAY_BACKEND": "127.0.0.1", "SDS_LOG_LEVEL": settings.pop("log_level", "WARNING"),
                    **{f"SDS_{k.upper()}": v if isinstance(v, str) else json.dumps(v) for k, v in settings.items()}})
        self.backend_port = backend_port
        self.agent = Proc([sys.executable, "-m", "gateway", "serve"], workdir / "gateway-agent.log", env)
        config = workdir / "gateway-envoy.json"
        config.write_text(json.dumps(bootstrap(str(self.socket), admin_port=self.admin_port)))
        self.envoy = Proc([ENVOY, "-c", str(config), "--disable-hot-restart", "--concurrency", str(concurrency),
                           "-l", "warning"], workdir / "gateway-envoy.log")

    def start(self) -> GatewayRun:
        self.agent.start()
        self.envoy.start()
        return self

    def stop(self) -> None:
        self.envoy.stop()
        self.agent.stop()

    # -- what Envoy does -------------------------------------------------------------------------
    def stat_matching(self, suffix: str) -> int:
        """Sum of the counters whose name ends with `suffix` (listener stats carry the port)."""
        total = 0
        for line in self.admin(f"/stats?filter={suffix}$").splitlines():
            key, _, value = line.partition(": ")
            if key.endswith(suffix) and value.strip().isdigit():
                total += int(value)
        return total

    def handshake(self, sni: str, timeout: float = 3) -> x509.Certificate:
        """The certificate Envoy presents for `sni` (raises when the handshake is refused)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # what is presented is the question here, not trust
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=sni) as s:
                return x509.load_der_x509_certificate(s.getpeercert(binary_form=True))

    def served(self, sni: str) -> x509.Certificate | None:
        try:
            return self.handshake(sni)
        except (OSError, ssl.SSLError):
            return None

    def connect(self, sni: str) -> ssl.SSLSocket:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return ctx.wrap_socket(raw, server_hostname=sni)

    # -- what the agent says ---------------------------------------------------------------------
    def status(self) -> dict:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=2) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            return json.loads(e.read())

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=2) as r:
            return r.read().decode()

    def wait_served(self, sni: str, timeout: float = 60) -> x509.Certificate:
        return wait_for(lambda: self.served(sni), timeout, 0.05, what=f"gateway serving {sni}")


def sans(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def claim(hostnames: list[str], backend_port: int, env: str = "dev", service: str = "web",
          backend_tls: str = "none", **extra) -> dict:
    """A claim's data. `backend_tls` "none" by default here: the echo backends are plain TCP
    (the product's default is "mutual": tests of it say so)."""
    return {"hostnames": ",".join(hostnames), "service": service, "port": str(backend_port), "env": env,
            "backend-tls": backend_tls, **extra}


CLAIM_LABELS = {"sds-injector.io/gateway-claim": "true"}


def add_claim(kube, namespace: str, name: str, data: dict, created: str | None = None) -> dict:
    """A claim in the API double: the HostnameClaim the claim's data (`claim()`) converts to."""
    cm = claim_configmap(namespace, data, name)
    return kube.add_hostname_claim(namespace, name, from_configmaps([cm])[0]["spec"], created=created)


def claim_configmap(namespace: str, data: dict, name: str = "site", created: str = "2026-01-01T00:00:00Z") -> dict:
    """A claim as the API server holds it: an immutable, labelled ConfigMap."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "immutable": True, "metadata": {
        "name": name, "namespace": namespace, "creationTimestamp": created, "labels": CLAIM_LABELS}, "data": data}


def write_claims(path: Path, configmaps: list[dict]) -> str:
    """A claims file for the gateway agent (its claims_file setting, returned as such)."""
    path.write_text(json.dumps({"kind": "List", "items": configmaps}))
    return str(path)
