"""A real AWS API emulator for tests and demos: moto's server mode (PyPI moto[server]), a separate
process speaking the AWS wire protocol on loopback (Secrets Manager, KMS, ACM PCA, IAM), plus the
one double moto cannot replace: a throttling front (moto never throttles)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from . import process
from .harness import free_port

MOTO = shutil.which("moto_server", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
# Credentials moto accepts (any value while IAM is not enforced); never real ones.
TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_SESSION_TOKEN": "testing"}


class MotoServer:
    def __init__(self, workdir: Path, name: str = "moto", enforce_iam_after: int | None = None):
        """`enforce_iam_after`: moto evaluates IAM policies for every request after this many
        (the set-up's own), as AWS would (moto's INITIAL_NO_AUTH_ACTION_COUNT)."""
        if MOTO is None:
            raise RuntimeError("moto_server not found: pip install 'moto[server]'")
        self.port = free_port()
        self.log = workdir / f"{name}.log"
        self.enforce_iam_after = enforce_iam_after
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> MotoServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        if self.enforce_iam_after is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(self.enforce_iam_after)
        self._fh = open(self.log, "ab")
        self.proc = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(self.port)], stdout=self._fh,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                    return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        raise TimeoutError(f"moto_server not up after {timeout}s")

    def client(self, service: str, region: str = "us-east-1", **credentials):
        import boto3

        creds = {k.lower(): v for k, v in (credentials or TEST_CREDENTIALS).items()}
        return boto3.client(service, region_name=region, endpoint_url=self.url, **creds)

    def pause(self) -> None:  # an unresponsive endpoint: connections hang, as in an outage
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)
        process.stop(self.proc, self._fh)


class Throttler:
    """In front of an endpoint: answers the next `count` requests with AWS's ThrottlingException
    (HTTP 400, the JSON protocol's error shape), then forwards everything."""

    def __init__(self, target: str):
        self.count, self.throttled, self.forwarded = 0, 0, 0
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if front.count > 0:
                    front.count -= 1
                    front.throttled += 1
                    out = b'{"__type":"ThrottlingException","message":"Rate exceeded"}'
                    self.send_response(400)
                    self.send_header("content-type", "application/x-amz-json-1.1")
                    self.send_header("x-amzn-errortype", "ThrottlingException")
                    self.send_header("content-length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                    return
                front.forwarded += 1
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                req = urllib.request.Request(target + self.path, data=body, headers=headers, method="POST")
                try:
                    with urllib.request.urlopen(req, timeout=10) as r:
                        status, data, rheaders = r.status, r.read(), r.headers
                except urllib.error.HTTPError as e:
                    status, data, rheaders = e.code, e.read(), e.headers
                self.send_response(status)
                for k, v in rheaders.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
