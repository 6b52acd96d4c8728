"""Certificates we sign chain under CAs made elsewhere: by Go (Helm's genCA, whose subject key
identifier is not SHA-1 of the key), by openssl and by `cryptography`. Checked with
`openssl verify` and with a real Envoy mTLS handshake through the agent."""
from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from sds_core.pki.ca import LocalCA
from sds_core.pki.validation import parse_private_key
from devkit import envoy_configs
from tests.conftest import remember_key
from devkit.harness import free_port, save_pair, tls_get

HELM = shutil.which("helm", path=f"{Path(sys.executable).parent}:{shutil.os.environ.get('PATH', '')}")
OPENSSL = shutil.which("openssl")


def go_ca(tmp: Path) -> tuple[bytes, bytes]:
    if HELM is None:
        pytest.skip("no helm: scripts/get_helm.py installs one on x86_64 Linux")
    chart = tmp / "goca"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: goca\nversion: 0.1.0\n")
    (chart / "templates" / "ca.yaml").write_text(
        '{{- $ca := genCA "go-made CA" 30 }}\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: ca}\n'
        'data:\n  crt: {{ $ca.Cert | quote }}\n  key: {{ $ca.Key | quote }}\n')
    data = yaml.safe_load(subprocess.run([HELM, "template", "x", str(chart)], capture_output=True, text=True,
                                         check=True).stdout)["data"]
    return data["crt"].encode(), data["key"].encode()


def openssl_ca(tmp: Path) -> tuple[bytes, bytes]:
    if OPENSSL is None:
        pytest.skip("no openssl")
    crt, key = tmp / "ossl.crt", tmp / "ossl.key"
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(crt), "-days", "30", "-subj", "/CN=openssl-made CA",
                    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
                   check=True, capture_output=True)
    return crt.read_bytes(), key.read_bytes()


def cryptography_ca(tmp: Path) -> tuple[bytes, bytes]:
    ca = LocalCA.generate("cryptography-made CA")
    return ca.cert_pem, ca._key_pem()


MAKERS = {"go-helm-genCA": go_ca, "openssl": openssl_ca, "cryptography": cryptography_ca}


def openssl_verify(tmp: Path, ca_pem: bytes, chain_pem: bytes) -> subprocess.CompletedProcess:
    certs = x509.load_pem_x509_certificates(chain_pem)
    (tmp / "anchor.pem").write_bytes(ca_pem)
    (tmp / "leaf.pem").write_bytes(chain_pem.split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n")
    args = [OPENSSL, "verify", "-CAfile", str(tmp / "anchor.pem")]
    if len(certs) > 1:
        (tmp / "untrusted.pem").write_bytes(chain_pem[len((tmp / "leaf.pem").read_bytes()):])
        args += ["-untrusted", str(tmp / "untrusted.pem")]
    return subprocess.run([*args, str(tmp / "leaf.pem")], capture_output=True, text=True)


@pytest.mark.parametrize("maker", list(MAKERS))
def test_leaves_and_intermediates_chain_under_foreign_cas(maker, tmp_path):
    crt, key = MAKERS[maker](tmp_path)
    remember_key(key)
    ca = LocalCA(x509.load_pem_x509_certificate(crt), parse_private_key(key))
    leaf = ca.issue("svc", dns_names=["svc"], uris=["spiffe://cluster.local/ns/a/sa/b"])
    r = openssl_verify(tmp_path, crt, leaf.chain_pem)
    assert r.returncode == 0, r.stdout + r.stderr
    # The issuer's layout: an environment CA under that root, a leaf under it.
    env = ca.intermediate("env CA", permitted_uri_domains=["cluster.local"])
    leaf2 = env.issue("svc", dns_names=["svc"], uris=["spiffe://cluster.local/ns/a/sa/b"])
    r = openssl_verify(tmp_path, crt, leaf2.chain_pem + env.cert_pem)
    assert r.returncode == 0, r.stdout + r.stderr
    aki = leaf.certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki == ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


@pytest.mark.parametrize("maker", list(MAKERS))
def test_envoy_accepts_what_the_agent_issues_under_foreign_cas(maker, tmp_path, procs):
    crt, key = MAKERS[maker](tmp_path)
    remember_key(key)
    (tmp_path / "ca.crt").write_bytes(crt)
    (tmp_path / "ca.key").write_bytes(key)
    agent = procs.agent(source="local-ca", local_ca_cert_file=str(tmp_path / "ca.crt"),
                        local_ca_key_file=str(tmp_path / "ca.key"), certificates="server", trust_bundles="ca",
                        service="localhost")
    port = free_port()
    procs.envoy(envoy_configs.tls_server(agent.socket, port, "server", "ca")).wait_live()
    ca = LocalCA(x509.load_pem_x509_certificate(crt), parse_private_key(key))
    client = ca.issue("client", uris=["spiffe://cluster.local/ns/a/sa/client"], ttl=dt.timedelta(hours=1))
    remember_key(client.key_pem)
    cert, body = tls_get(port, crt, client=save_pair(tmp_path, client, "client"))
    assert " 200 " in body.splitlines()[0] and envoy_configs.HELLO in body
    assert cert.issuer == ca.cert.subject
