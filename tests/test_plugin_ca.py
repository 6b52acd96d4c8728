"""Plug-in CAs: the operator's intermediates under a root whose key never reaches the cluster
(made here with the openssl CLI, as an offline root ceremony would). The issuer signs with them,
workloads' chains verify under `openssl verify` and through a real Envoy against the offline root,
name constraints stay what the operator put in; a missing, mismatched, expired or unchained piece
is a clear start-up error, and a Secret carrying the root key is refused."""
from __future__ import annotations

import datetime as dt
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from devkit import envoy_configs as cfg
from devkit.harness import free_port, wait_for
from devkit.issuer_run import IssuerRun
from devkit.kube_api import KubeAPI
from webhook.issuer.authority import Layout
from webhook.issuer.plugin import PluginCAError, from_secret_data

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not found")
ROOT_DIR = Path(__file__).resolve().parent.parent
CONFIG = ROOT_DIR / "examples" / "config.yaml"
NAMES = [f"{e}{s}" for e in ("prod", "staging", "dev") for s in ("", "-edge")]
WORKLOAD_CONSTRAINTS = "critical,permitted;URI:cluster.local,permitted;DNS:svc,permitted;DNS:cluster.local"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def ceremony(d: Path, days: int = 365) -> dict[str, bytes]:
    """An offline root and one intermediate per signing CA of the example configuration."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj",
            "/CN=offline root", "-days", "3650", "-keyout", "root.key", "-out", "root.crt",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    out = {"root.crt": (d / "root.crt").read_bytes()}
    for name in NAMES:
        ext = d / f"{name}.ext"
        constraints = "" if name.endswith("-edge") else f"nameConstraints={WORKLOAD_CONSTRAINTS}\n"
        ext.write_text("basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n"
                       f"subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n{constraints}")
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj",
                f"/CN={name} intermediate", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "root.crt", "-CAkey", "root.key", "-CAcreateserial",
                "-days", str(days), "-extfile", str(ext), "-out", f"{name}.crt", cwd=d)
        out[f"{name}.crt"], out[f"{name}.key"] = (d / f"{name}.crt").read_bytes(), (d / f"{name}.key").read_bytes()
    return out


@pytest.fixture(scope="module")
def material(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    d = tmp_path_factory.mktemp("ceremony")
    return d, ceremony(d)


def layout() -> Layout:
    return Layout(("prod", "staging", "dev"))


def b64(data: dict[str, bytes]) -> dict[str, str]:
    import base64

    return {k: base64.b64encode(v).decode() for k, v in data.items()}


def test_the_issuer_signs_with_the_operators_intermediates_and_chains_verify(material, procs, tmp_path):
    d, data = material
    kube = KubeAPI().start()
    kube.add_secret("sds-system", "plugin-ca", data)
    issuer = IssuerRun(tmp_path, kube, CONFIG, verifier="jwks", ca_mode="plugin", ca_plugin_secret="plugin-ca").start()
    try:
        assert not any(s["metadata"]["name"] == "sds-injector-ca" for s in kube.objects["secrets"].values()), \
            "plug-in mode makes no CA of its own"
        pod = kube.add_pod("shop-prod", "web-1", "web", {"app": "web"},
                           {"sds-injector.io/env": "prod", "sds-injector.io/business-line": "retail"})
        token = tmp_path / "token"
        token.write_text(kube.mint(pod))
        agent = procs.agent(source="issuer", certificates="retail-service-cert", trust_bundles="retail-trust-bundle",
                            issuer_address=issuer.address, issuer_ca=issuer.ca_pem.decode(),
                            issuer_token_file=str(token))
        port = free_port()
        procs.envoy(cfg.tls_server(agent.socket, port, "retail-service-cert")).wait_live()
        # A client that trusts only the offline root: the served chain (leaf + prod intermediate) verifies.
        ctx = ssl.create_default_context(cadata=data["root.crt"].decode())
        ctx.check_hostname = False
        der = wait_for(lambda: _served(port, ctx), 15, what="Envoy serving the plug-in chain")
        leaf = x509.load_der_x509_certificate(der)
        assert leaf.issuer.rfc4514_string() == "CN=prod intermediate"
        (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        r = subprocess.run(["openssl", "verify", "-CAfile", str(d / "root.crt"), "-untrusted", str(d / "prod.crt"),
                            str(tmp_path / "leaf.pem")], capture_output=True, text=True, timeout=10)
        assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
        nc = x509.load_pem_x509_certificate(data["prod.crt"]).extensions.get_extension_for_class(x509.NameConstraints)
        assert x509.UniformResourceIdentifier("cluster.local") in nc.value.permitted_subtrees
    finally:
        issuer.stop()
        kube.stop()


def _served(port: int, ctx: ssl.SSLContext) -> bytes | None:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return s.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None


@pytest.mark.parametrize("break_it, message", [
    (lambda d: d.pop("dev-edge.key"), "has no dev-edge.key"),
    (lambda d: d.pop("root.crt"), "has no root.crt"),
    (lambda d: d.update({"prod.key": d["dev.key"]}), "prod.key does not belong to prod.crt"),
    (lambda d: d.update({"root.key": b"-----BEGIN PRIVATE KEY-----\n"}), "holds root.key"),
    (lambda d: d.update({"root.crt": d["dev.crt"]}), "does not chain to root.crt"),
])
def test_a_broken_plug_in_secret_is_a_clear_error(material, break_it, message):
    _, data = material
    broken = dict(data)
    break_it(broken)
    with pytest.raises(PluginCAError, match=message):
        from_secret_data(b64(broken), layout(), "Secret sds-system/plugin-ca")


def test_an_expired_intermediate_is_refused(tmp_path):
    data = ceremony(tmp_path, days=1)
    at = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    with pytest.raises(PluginCAError, match="prod.crt expired on"):
        from_secret_data(b64(data), layout(), "Secret sds-system/plugin-ca", at=at)


def test_the_issuer_refuses_to_start_on_a_broken_secret(material, tmp_path):
    _, data = material
    kube = KubeAPI().start()
    kube.add_secret("sds-system", "plugin-ca", {k: v for k, v in data.items() if k != "staging.crt"})
    run = IssuerRun(tmp_path, kube, CONFIG, verifier="jwks", ca_mode="plugin", ca_plugin_secret="plugin-ca")
    try:
        run.launch()
        assert run.proc.wait(timeout=60) == 2
        log = run.log.read_text()
        assert "issuer: cannot start: Secret sds-system/plugin-ca has no staging.crt" in log and "Traceback" not in log
    finally:
        run.stop()
        kube.stop()
