"""The webhook as users run it (`python -m webhook serve`: uvicorn, TLS) against the Kubernetes
API double, for the benchmarks: a throwaway serving CA, the example configuration (its label
rule needs the namespace watch), the issuer's CA given as agents would get it."""
from __future__ import annotations

import datetime as dt
import http.client
import os
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

from sds_core.pki.ca import LocalCA

from .harness import free_port, wait_for
from .kube_api import KubeAPI

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "config.yaml"


class WebhookRun:
    def __init__(self, namespaces: tuple[str, ...] = ("shop", "shop-prod"), baseline: bool = False):
        self.namespaces, self.baseline = namespaces, baseline
        self.port = free_port()

    def __enter__(self) -> WebhookRun:
        self._tmp = tempfile.TemporaryDirectory()
        tmp = Path(self._tmp.name)
        self.kube = KubeAPI().start()
        for ns in self.namespaces:
            self.kube.add_namespace(ns)
        (tmp / "kubeconfig.json").write_text(self.kube.kubeconfig())
        self.ca = LocalCA.generate("bench CA")
        served = self.ca.issue("webhook", dns_names=["webhook"], ttl=dt.timedelta(hours=1))
        (tmp / "tls.crt").write_bytes(served.chain_pem)
        (tmp / "tls.key").write_bytes(served.key_pem)
        (tmp / "ca.crt").write_bytes(self.ca.cert_pem)  # what injected agents trust the issuer with
        env = {**os.environ, "WEBHOOK_LOG_LEVEL": "WARNING",
               **({"WEBHOOK_BENCHMARK_BASELINE": "true"} if self.baseline else {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "webhook", "serve", "--port", str(self.port), "--cert-file", str(tmp / "tls.crt"),
             "--key-file", str(tmp / "tls.key"), "--config", str(CONFIG),
             "--kubeconfig", str(tmp / "kubeconfig.json")], env=env, stderr=open(tmp / "stderr", "wb"))
        self.ssl = ssl.create_default_context(cadata=self.ca.cert_pem.decode())
        self.ssl.check_hostname = False

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError((tmp / "stderr").read_text()[-2000:])
            c = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ssl, timeout=1)
            c.request("GET", "/healthz")
            return c.getresponse().status == 200
        try:
            wait_for(up, 30, what="webhook")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.kube.stop()
        self._tmp.cleanup()
