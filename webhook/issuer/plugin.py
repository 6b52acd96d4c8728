"""Plug-in CAs: the operator provides, per signing CA the layout needs (`<env>`, `<env>-edge`,
`<env>--<line>`), an intermediate certificate and key, optionally the chain from it up to the
root (`<name>.chain.crt`), and the root certificate alone (`root.crt`), in a Secret made by hand,
by cert-manager or from an offline root. The issuer never holds the root key (a Secret carrying
`root.key` is refused), never rotates these CAs (the operator replaces the Secret; the issuer
re-reads it every `ca_refresh_seconds`), and refuses to start on a missing, mismatched,
expired or unchained piece, naming it. A workload's trust bundle is its intermediate (and
`<name>.bundle.crt` when given: the old and new intermediates during the operator's rotation),
so environments stay apart whatever root they share."""
from __future__ import annotations

import base64
import datetime as dt
import json

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from sds_core.pki.ca import LocalCA
from sds_core.pki.validation import parse_certificates, parse_private_key

from .authority import Authority, Layout


class PluginCAError(ValueError):
    pass


class PluggedCA(LocalCA):
    """An operator's intermediate: its served chain carries the intermediates up to the root."""

    def __init__(self, cert: x509.Certificate, key, chain: list[x509.Certificate], bundle: list[x509.Certificate]):
        super().__init__(cert, key)
        self.chain, self.bundle_certs = chain, bundle

    @property
    def cert_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [self.cert, *self.chain])


class PluginAuthority(Authority):
    def bundle(self, env: str, overlap: float = 0, at: dt.datetime | None = None) -> bytes:
        ca = self.ca(env)
        certs = ca.bundle_certs if isinstance(ca, PluggedCA) and ca.bundle_certs else [ca.cert]
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)

    def rotate(self, layout: Layout, r, at: dt.datetime | None = None) -> list[str]:
        return []  # the operator rotates: a new Secret, re-read on the next refresh


def load_plugin(core, namespace: str, secret_name: str, layout: Layout, at: dt.datetime | None = None) -> Authority:
    resp = core.read_namespaced_secret(secret_name, namespace, _preload_content=False, _request_timeout=10)
    data = json.loads(resp.data).get("data") or {}
    return from_secret_data(data, layout, f"Secret {namespace}/{secret_name}", at)


def from_secret_data(data: dict[str, str], layout: Layout, where: str, at: dt.datetime | None = None) -> Authority:
    at = at or dt.datetime.now(dt.UTC)
    raw = {k: base64.b64decode(v) for k, v in data.items()}
    if "root.key" in raw:
        raise PluginCAError(f"{where} holds root.key: a plug-in Secret carries the root certificate only (keep the "
                            "root key offline)")
    if "root.crt" not in raw:
        raise PluginCAError(f"{where} has no root.crt (the root certificate the intermediates chain to)")
    root = _certs(raw, "root.crt", where)[0]
    _valid(root, "root.crt", where, at)
    envs: dict[str, LocalCA] = {name: _load(raw, name, root, where, at) for name in layout.ca_names()}
    return PluginAuthority(LocalCA(root, None), envs)


def _load(raw: dict[str, bytes], name: str, root: x509.Certificate, where: str, at: dt.datetime) -> PluggedCA:
    for part in (f"{name}.crt", f"{name}.key"):
        if part not in raw:
            raise PluginCAError(f"{where} has no {part}: every signing CA of the configuration needs a certificate "
                                "and key (environments, their -edge CAs, business-line CAs)")
    cert = _certs(raw, f"{name}.crt", where)[0]
    try:
        key = parse_private_key(raw[f"{name}.key"])
    except ValueError:
        raise PluginCAError(f"{where}: {name}.key is not a PEM private key") from None
    if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise PluginCAError(f"{where}: {name}.key does not belong to {name}.crt")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise PluginCAError(f"{where}: {name}.crt is not a CA certificate (basicConstraints CA:TRUE)")
    _valid(cert, f"{name}.crt", where, at)
    chain = _certs(raw, f"{name}.chain.crt", where) if f"{name}.chain.crt" in raw else []
    for child, parent in zip([cert, *chain], [*chain, root], strict=True):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as e:
            raise PluginCAError(f"{where}: {name}.crt does not chain to root.crt ({child.subject.rfc4514_string()} "
                                f"is not issued by {parent.subject.rfc4514_string()}: {type(e).__name__})") from None
    bundle = _certs(raw, f"{name}.bundle.crt", where) if f"{name}.bundle.crt" in raw else []
    return PluggedCA(cert, key, chain, bundle)


def _certs(raw: dict[str, bytes], part: str, where: str) -> list[x509.Certificate]:
    try:
        return parse_certificates(raw[part], part)
    except ValueError:
        raise PluginCAError(f"{where}: {part} is not PEM certificates") from None


def _valid(cert: x509.Certificate, part: str, where: str, at: dt.datetime) -> None:
    if cert.not_valid_after_utc <= at:
        raise PluginCAError(f"{where}: {part} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if cert.not_valid_before_utc > at:
        raise PluginCAError(f"{where}: {part} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
