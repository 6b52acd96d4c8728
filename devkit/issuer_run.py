"""The issuer as users run it (`python -m webhook issuer`), against the Kubernetes API double,
with a serving certificate from a throwaway CA: for the tests, the demo and the benchmarks."""
from __future__ import annotations

import datetime as dt
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from sds_core.pki.ca import LocalCA

from . import process
from .harness import free_port
from .kube_api import KubeAPI

ROOT = Path(__file__).resolve().parent.parent


class IssuerRun:
    def __init__(self, workdir: Path, kube: KubeAPI, config: Path | None = None, verifier: str = "tokenreview",
                 **settings):
        self.workdir, self.kube = workdir, kube
        self.port, self.ops_port = free_port(), free_port()
        self.serving_ca = LocalCA.generate("issuer serving CA (test)")
        served = self.serving_ca.issue("localhost", dns_names=["localhost"], ttl=dt.timedelta(days=1))
        (workdir / "issuer.crt").write_bytes(served.chain_pem)
        (workdir / "serving-ca.crt").write_bytes(self.serving_ca.cert_pem)  # what the issuer publishes
        key = workdir / "issuer.key"
        key.touch(mode=0o600)
        key.write_bytes(served.key_pem)
        (workdir / "kubeconfig.json").write_text(kube.kubeconfig())
        self.audit_file = workdir / "audit.jsonl"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ISSUER_")}
        env.update({
            "ISSUER_PORT": str(self.port), "ISSUER_OPS_PORT": str(self.ops_port), "ISSUER_HOST": "127.0.0.1",
            "ISSUER_CERT_FILE": str(workdir / "issuer.crt"), "ISSUER_KEY_FILE": str(key),
            "ISSUER_SERVING_CA_FILE": str(workdir / "serving-ca.crt"),
            "ISSUER_KUBECONFIG": str(workdir / "kubeconfig.json"), "ISSUER_TOKEN_VERIFIER": verifier,
            "ISSUER_AUDIT_FILE": str(self.audit_file), "ISSUER_NAMESPACE": "sds-system",
            "ISSUER_REPLICA": settings.pop("replica", "issuer-0"),
            **({"ISSUER_CONFIG": str(config)} if config else {}),
            **{f"ISSUER_{k.upper()}": str(v) for k, v in settings.items()},
        })
        self.log = workdir / f"issuer-{self.port}.log"
        self.env = env
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        return self.serving_ca.cert_pem

    def start(self, timeout: float = 30) -> IssuerRun:
        return self.launch().wait_ready(timeout)

    def launch(self) -> IssuerRun:
        self._fh = open(self.log, "ab")
        # stdout carries the audit stream; both go to the log file here.
        self.proc = subprocess.Popen([sys.executable, "-m", "webhook", "issuer"], stdout=self._fh,
                                     stderr=subprocess.STDOUT, env=self.env, cwd=ROOT, start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 30) -> IssuerRun:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"issuer exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                if self.get("/readyz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"issuer not ready after {timeout}s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            process.stop(self.proc, self._fh)

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem.decode())

    def get(self, path: str, ops: bool = False) -> tuple[int, bytes]:
        """GET on the issuer port, or with `ops` on the operations port (/inventory, /metrics)."""
        address = f"https://localhost:{self.ops_port}" if ops else self.address
        try:
            with urllib.request.urlopen(address + path, timeout=5, context=self._context()) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:  # an answer too (503 from /readyz)
            return e.code, e.read()

    def post(self, path: str, body: dict | bytes, token: str | None) -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"content-type": "application/json", **({"authorization": f"Bearer {token}"} if token else {})}
        req = urllib.request.Request(self.address + path, data=data, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10, context=self._context()) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
