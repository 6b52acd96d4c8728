"""The webhook as users run it (`python -m webhook serve`, uvicorn over HTTPS), and the
`inject` CLI."""
from __future__ import annotations

import json
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import remember_key
from devkit.harness import Proc, free_port, issue, wait_for
from tests.webhook_util import decode_patch, pod, review

ROOT = Path(__file__).parent.parent
CONFIG = ROOT / "examples" / "config.yaml"


def start_webhook(procs, tmp_path, ca, kubeconfig, name="webhook-svc"):
    served = issue(ca, name)
    remember_key(served.key_pem)
    crt, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    crt.write_bytes(served.chain_pem)
    key.write_bytes(served.key_pem)
    port = free_port()
    p = procs.add(Proc([sys.executable, "-m", "webhook", "serve", "--port", str(port), "--cert-file", str(crt),
                        "--key-file", str(key), "--config", str(CONFIG),
                        "--kubeconfig", str(kubeconfig)],
                       tmp_path / "webhook.log").start())
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    # Loopback address, but the service name as SNI and for the hostname check.
    client = httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ctx, timeout=5, headers={"Host": name})
    wait_for(lambda: client.get("/healthz", extensions={"sni_hostname": name}).status_code == 200,
             what="webhook up")
    return p, client, port, crt, key, served


def post(client, body, name="webhook-svc"):
    return client.post("/mutate", content=body if isinstance(body, bytes) else json.dumps(body),
                       headers={"content-type": "application/json"}, extensions={"sni_hostname": name})


def peer_serial(port, ca_pem, name="webhook-svc"):
    import socket

    from cryptography import x509

    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw, server_hostname=name) as s:
        return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number


def test_admission_round_trip_over_https_and_certificate_reload(procs, tmp_path, ca, kubeconfig):
    p, client, port, crt, key, served = start_webhook(procs, tmp_path, ca, kubeconfig)
    r = review(pod({"sds-injector.io/env": "dev", "sds-injector.io/inbound": "8443:8080"}))
    resp = post(client, r)
    assert resp.status_code == 200
    out = resp.json()["response"]
    assert out["uid"] == r["request"]["uid"] and out["allowed"]
    assert any(op["path"] == "/spec/initContainers" for op in decode_patch(resp.json()))

    # TLS 1.1 is refused.
    import socket

    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with pytest.raises(ssl.SSLError):
        with socket.create_connection(("127.0.0.1", port)) as raw, old.wrap_socket(raw):
            pass

    # An in-flight keep-alive connection survives the certificate swap; new handshakes get the new one.
    assert peer_serial(port, ca.cert_pem) == served.certificate.serial_number
    rotated = issue(ca, "webhook-svc")
    remember_key(rotated.key_pem)
    (tmp_path / "key.new").write_bytes(rotated.key_pem)
    (tmp_path / "crt.new").write_bytes(rotated.chain_pem)
    (tmp_path / "key.new").replace(key)
    (tmp_path / "crt.new").replace(crt)
    wait_for(lambda: peer_serial(port, ca.cert_pem) == rotated.certificate.serial_number, timeout=10,
             what="rotated webhook certificate")
    assert post(client, r).status_code == 200  # the old pooled connection still works
    assert p.p.poll() is None

    metrics = client.get("/metrics", extensions={"sni_hostname": "webhook-svc"}).text
    assert "sds_webhook_injections_total 2.0" in metrics
    assert "sds_webhook_latency_seconds_bucket" in metrics


def test_bad_input_over_https_never_500(procs, tmp_path, ca, kubeconfig):
    _, client, *_ = start_webhook(procs, tmp_path, ca, kubeconfig)
    bodies = [b"", b"{", b"[1]", json.dumps({"apiVersion": "v1", "kind": "Pod"}).encode(),
              json.dumps(review(None)).encode(), json.dumps(review({"spec": "x"})).encode(),
              json.dumps(review(pod({"sds-injector.io/nope": "1"}))).encode(), b"\x00" * 10,
              json.dumps(review(pod({"sds-injector.io/env": "dev"}), kind="Secret")).encode()]
    for body in bodies:
        r = post(client, body)
        assert r.status_code in (200, 400), (body[:40], r.status_code, r.text)
        assert r.json()
    big = b"{" + b" " * (4 * 1024 * 1024) + b"}"
    assert post(client, big).status_code == 413
    assert client.get("/readyz", extensions={"sni_hostname": "webhook-svc"}).status_code == 200


def test_inject_cli_on_multi_document_file(tmp_path):
    manifest = tmp_path / "app.yaml"
    manifest.write_text("""\
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: shop}
data: {key: "value  # kept exactly"}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations: {sds-injector.io/env: dev, sds-injector.io/inbound: "8443:8080"}
    spec:
      containers: [{name: app, image: web:1}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: report, namespace: shop}
spec:
  schedule: "0 * * * *"
  jobTemplate:
    spec:
      template:
        metadata:
          annotations: {sds-injector.io/env: staging, sds-injector.io/business-line: corporate}
        spec:
          restartPolicy: OnFailure
          containers: [{name: report, image: report:1}]
""")
    # No CA to give: the pods mount the issuer's CA from a ConfigMap the issuer keeps in the namespace.
    inject = [sys.executable, "-m", "webhook", "inject", "--config", str(CONFIG), "-f"]
    run = subprocess.run([*inject, str(manifest)], capture_output=True, text=True, check=True)
    docs = list(yaml.safe_load_all(run.stdout))
    assert [d["kind"] for d in docs] == ["ConfigMap", "Deployment", "CronJob"]
    assert 'data: {key: "value  # kept exactly"}' in run.stdout, "unchanged documents pass through untouched"
    dep = docs[1]["spec"]["template"]["spec"]["initContainers"]
    cron = docs[2]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"]
    assert [c["name"] for c in dep] == [c["name"] for c in cron] == ["sds-agent", "sds-envoy"]
    cron_env = {e["name"]: e.get("value") for e in cron[0]["env"]}
    assert cron_env["SDS_CERTIFICATES"] == "corporate-service-cert"
    assert "SDS_ISSUER_CA" not in cron_env and cron_env["SDS_ISSUER_CA_FILE"] == "/etc/sds/issuer-ca/ca.crt"
    # Injecting the output again changes nothing (idempotent).
    again = subprocess.run([*inject, "-"], input=run.stdout, capture_output=True, text=True, check=True)
    assert list(yaml.safe_load_all(again.stdout)) == docs

    # --namespace decides for documents that declare none (a document's own namespace wins).
    undeclared = tmp_path / "undeclared.yaml"
    undeclared.write_text(manifest.read_text().replace(", namespace: shop}", "}"))
    denied = subprocess.run([*inject, str(undeclared), "--namespace", "default"], capture_output=True, text=True)
    assert denied.returncode == 1 and "namespace 'default' may not use" in denied.stderr


def test_tls12_cbc_suites_are_refused_and_a_busy_port_is_a_clear_error(procs, tmp_path, ca, kubeconfig):
    import socket

    _, client, port, crt, key, served = start_webhook(procs, tmp_path, ca, kubeconfig)

    def handshake(ciphers: str) -> bool:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(ciphers)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as raw, ctx.wrap_socket(raw):
                return True
        except ssl.SSLError:
            return False
    assert handshake("ECDHE-ECDSA-AES128-GCM-SHA256")
    assert not handshake("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA")
    r = subprocess.run([sys.executable, "-m", "webhook", "serve", "--port", str(port), "--cert-file", str(crt),
                        "--key-file", str(key), "--config", str(CONFIG),
                        "--kubeconfig", str(kubeconfig)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and f"webhook port 0.0.0.0:{port}" in r.stderr and "serving" not in r.stderr, (
        r.returncode, r.stderr)
    assert "Traceback" not in r.stderr


def test_idle_and_trickling_clients_are_cut_off_and_memory_returns(procs, tmp_path, ca, kubeconfig):
    import os
    import socket
    import time

    os.environ["WEBHOOK_READ_TIMEOUT_SECONDS"] = "1"
    try:
        p, client, port, *_ = start_webhook(procs, tmp_path, ca, kubeconfig)
    finally:
        del os.environ["WEBHOOK_READ_TIMEOUT_SECONDS"]

    def rss() -> float:
        return int(next(ln for ln in open(f"/proc/{p.p.pid}/status") if ln.startswith("VmRSS:")).split()[1]) / 1024

    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    ctx.check_hostname = False

    def connect(first: bytes):
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="webhook-svc")
        if first:
            s.sendall(first)
        return s
    kinds = [b"", b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Ty",
             b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{\"apiVersion\":"]
    base = rss()
    held = [connect(kinds[i % 3]) for i in range(300)]
    peak = rss()
    t0 = time.monotonic()
    for s in held:
        s.settimeout(5)
        try:
            assert s.recv(1) == b""
        except (ssl.SSLError, ConnectionResetError):
            pass
        s.close()
    assert time.monotonic() - t0 < 4, "idle and partial connections must be closed by the server within its timeout"
    time.sleep(0.5)
    assert client.get("/healthz", extensions={"sni_hostname": "webhook-svc"}).status_code == 200
    print(f"RSS {base:.0f} -> {peak:.0f} MB with 300 slow connections -> {rss():.0f} MB after")
    assert rss() - base < 25, "memory must return near its baseline"


def test_a_client_that_never_starts_the_tls_handshake_is_cut_off(procs, tmp_path, ca, kubeconfig):
    """TCP connected, no ClientHello: closed by the server at its read timeout (1 s here), not
    held for asyncio's default 60 s handshake timeout as uvicorn left it."""
    import os
    import socket
    import time

    os.environ["WEBHOOK_READ_TIMEOUT_SECONDS"] = "1"
    try:
        p, client, port, *_ = start_webhook(procs, tmp_path, ca, kubeconfig)
    finally:
        del os.environ["WEBHOOK_READ_TIMEOUT_SECONDS"]
    silent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
    t0 = time.monotonic()
    for s in silent:
        assert s.recv(1) == b"", "the server closes the connection"
        s.close()
    assert time.monotonic() - t0 < 5, "closed at the handshake deadline, not after 60 s"
    assert client.get("/healthz", extensions={"sni_hostname": "webhook-svc"}).status_code == 200
