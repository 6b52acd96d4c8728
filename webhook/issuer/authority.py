"""The signing CAs: one root, and under it one intermediate per environment (URI name
constraints keep each to the trust domain). A trust bundle holds only its environment's
intermediate, so a certificate of another environment fails the handshake.

The keys live only in one Secret of the release namespace, created at run time by the first
replica to start (create-if-absent; a replica that loses the race reads the winner's Secret),
never rendered by Helm and never mounted into a tenant pod."""
from __future__ import annotations

import base64
import json
import logging
import re

from cryptography.hazmat.primitives import serialization

from sds_sidecar.ca import LocalCA
from sds_sidecar.validation import parse_certificates, parse_private_key

log = logging.getLogger("issuer.authority")
_KEY_SAFE = re.compile(r"^[-._a-zA-Z0-9]+$")


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Authority:
    def __init__(self, root: LocalCA, envs: dict[str, LocalCA]):
        self.root = root
        self.envs = envs

    def __repr__(self) -> str:  # never show a key
        return f"Authority(envs={sorted(self.envs)})"

    @classmethod
    def generate(cls, environments: list[str], trust_domain: str, days: float = 3650) -> "Authority":
        root = LocalCA.generate("sds-injector root CA", days=days)
        return cls(root, {e: cls._intermediate(root, e, trust_domain) for e in environments})

    @staticmethod
    def _intermediate(root: LocalCA, env: str, trust_domain: str) -> LocalCA:
        return root.intermediate(f"sds-injector {env} CA", days=365 * 5, permitted_uri_domains=[trust_domain])

    def ca(self, env: str) -> LocalCA:
        try:
            return self.envs[env]
        except KeyError:
            raise KeyError(f"no signing CA for environment {env!r}") from None

    def bundle(self, env: str) -> bytes:
        """What a pod of `env` trusts: its environment's CA, never the root or another env's."""
        return self.ca(env).cert_pem

    # --- Secret form: data keys root.crt/root.key and <env>.crt/<env>.key (base64 as in the API).
    def to_secret_data(self) -> dict[str, str]:
        out = {"root.crt": self.root.cert_pem, "root.key": _pem_key(self.root.key)}
        for env, ca in self.envs.items():
            out[f"{env}.crt"], out[f"{env}.key"] = ca.cert_pem, _pem_key(ca.key)
        return {k: base64.b64encode(v).decode() for k, v in out.items()}

    @classmethod
    def from_secret_data(cls, data: dict[str, str]) -> "Authority":
        raw = {k: base64.b64decode(v) for k, v in (data or {}).items()}

        def load(stem: str) -> LocalCA:
            cert = parse_certificates(raw[f"{stem}.crt"], f"CA Secret entry {stem}.crt")[0]
            return LocalCA(cert, parse_private_key(raw[f"{stem}.key"]))

        envs = {k[:-4]: load(k[:-4]) for k in raw if k.endswith(".crt") and k != "root.crt"}
        return cls(load("root"), envs)


def load_or_create(core, namespace: str, secret_name: str, environments: list[str], trust_domain: str,
                   attempts: int = 5) -> Authority:
    """The cluster's Authority, creating the Secret (or the missing environments' CAs) if needed.
    Safe with any number of replicas starting at once: the API server's create and
    resourceVersion-checked replace decide, the losers re-read."""
    from kubernetes.client.exceptions import ApiException

    for env in environments:
        if not _KEY_SAFE.match(env) or env == "root":
            raise ValueError(f"environment name {env!r} cannot name a CA (letters, digits, '-', '_', '.'; not 'root')")
    for _ in range(attempts):
        try:
            resp = core.read_namespaced_secret(secret_name, namespace, _preload_content=False, _request_timeout=10)
            secret = json.loads(resp.data)
        except ApiException as e:
            if e.status != 404:
                raise
            auth = Authority.generate(environments, trust_domain)
            body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": secret_name, "namespace": namespace,
                                 "labels": {"app.kubernetes.io/name": "sds-injector",
                                            "sds-injector.io/component": "ca"}},
                    "data": auth.to_secret_data()}
            try:
                core.create_namespaced_secret(namespace, body, _request_timeout=10)
                log.info("created the signing CAs", extra={"fields": {"secret": secret_name, "envs": environments}})
                return auth
            except ApiException as e2:
                if e2.status != 409:
                    raise
                continue  # another replica won: read its Secret
        auth = Authority.from_secret_data(secret.get("data") or {})
        missing = [e for e in environments if e not in auth.envs]
        if not missing:
            return auth
        for env in missing:
            auth.envs[env] = Authority._intermediate(auth.root, env, trust_domain)
        secret["data"] = auth.to_secret_data()  # carries metadata.resourceVersion: a stale replace fails
        try:
            core.replace_namespaced_secret(secret_name, namespace, secret, _request_timeout=10)
            log.info("added signing CAs", extra={"fields": {"secret": secret_name, "envs": missing}})
            return auth
        except ApiException as e:
            if e.status != 409:
                raise
    raise RuntimeError(f"could not settle the CA Secret {namespace}/{secret_name} after {attempts} attempts")
