"""The signing CAs: one root, and under it per environment one workload intermediate (URI name
constraints keep it to the trust domain) and one edge intermediate for gateway certificates
(`<env>-edge`: no SPIFFE ID of the trust domain, no cluster-domain name). A workload trust
bundle holds only its environment's workload intermediate, so a certificate of another
environment, or any edge certificate, fails a workload handshake.

The keys live only in one Secret of the release namespace, created at run time by the first
replica to start (create-if-absent; a replica that loses the race reads the winner's Secret),
never rendered by Helm and never mounted into a tenant pod."""
from __future__ import annotations

import base64
import ipaddress
import datetime as dt
import json
import logging
import re
from dataclasses import dataclass

from cryptography import x509

from cryptography.hazmat.primitives import serialization

from sds_core import names
from sds_core.pki.ca import LocalCA
from sds_core.pki.validation import parse_certificates, parse_private_key
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("issuer.authority")
_KEY_SAFE = re.compile(r"^[-_a-zA-Z0-9]+$")
EDGE = "-edge"
LINE = "--"  # <env>--<business line>: a business line's CA under its environment's


def edge(env: str) -> str:
    """The name of `env`'s edge CA: it signs gateway certificates, which workloads never trust."""
    return env + EDGE


def line(env: str, business_line: str) -> str:
    """The name of a business line's workload CA in `env` (with businessLineCAs)."""
    return f"{env}{LINE}{business_line}"


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class Layout:
    """Which CAs the issuer keeps and what each may sign: per environment a workload CA (names
    constrained to the trust domain's URIs, DNS names under `svc` and the cluster domain, and the
    pod CIDRs' addresses when given) and an edge CA (excluded from both); with business lines,
    a workload CA per line in each environment."""

    environments: tuple[str, ...]
    trust_domain: str = "cluster.local"
    cluster_domain: str = "cluster.local"
    business_lines: tuple[str, ...] = ()
    pod_cidrs: tuple[str, ...] = ()

    def ca_names(self) -> list[str]:
        return [n for env in self.environments
                for n in (env, edge(env), *(line(env, bl) for bl in self.business_lines))]

    def check(self) -> None:
        for env in self.environments:
            if not _KEY_SAFE.match(env) or env == "root" or env.endswith(EDGE) or LINE in env:
                raise ValueError(f"environment name {env!r} cannot name a CA (letters, digits, '-', '_'; not 'root', "
                                 f"not ending in {EDGE!r}, no {LINE!r})")
        for bl in self.business_lines:
            if not _KEY_SAFE.match(bl) or bl.endswith(EDGE):
                raise ValueError(f"business line {bl!r} cannot name a CA (letters, digits, '-', '_'; "
                                 f"not ending in {EDGE!r})")
        for cidr in self.pod_cidrs:
            ipaddress.ip_network(cidr)  # a clear ValueError for a bad CIDR

    def intermediate(self, root: LocalCA, name: str, days: float = 365) -> LocalCA:
        if name.endswith(EDGE):
            return root.intermediate(f"sds-injector {name[:-len(EDGE)]} edge CA", days=days,
                                     excluded_uri_domains=[self.trust_domain],
                                     excluded_dns=list(dict.fromkeys([self.cluster_domain, "cluster.local"])))
        env, _, business_line = name.partition(LINE)
        title = f"{env} {business_line}" if business_line else env
        return root.intermediate(f"sds-injector {title} CA", days=days, permitted_uri_domains=[self.trust_domain],
                                 permitted_dns=names.workload_dns_subtrees(self.cluster_domain),
                                 permitted_ips=self.pod_cidrs)


@dataclass
class Rotation:
    """When an environment's CA is replaced: `before` its expiry a next CA joins the bundles;
    after `propagation` (every agent has re-read its bundle) it signs; the old one stays trusted
    for `overlap` (peers still hold certificates it signed)."""

    before: float = 30 * 86400
    propagation: float = 900
    overlap: float = 48 * 3600
    lifetime_days: float = 365


class Authority:
    def __init__(self, root: LocalCA, envs: dict[str, LocalCA], nexts: dict | None = None,
                 retired: dict | None = None):
        self.root = root
        self.envs = envs  # env -> the CA that signs now
        self.nexts: dict[str, tuple[LocalCA, dt.datetime]] = nexts or {}  # env -> (next CA, introduced at)
        self.retired: dict[str, tuple[x509.Certificate, dt.datetime]] = retired or {}  # env -> (old CA, retired at)

    def __repr__(self) -> str:  # never show a key
        return f"Authority(envs={sorted(self.envs)})"

    @classmethod
    def generate(cls, layout: Layout, days: float = 3650, rotation: Rotation | None = None) -> Authority:
        root = LocalCA.generate("sds-injector root CA", days=days)
        life = (rotation or Rotation()).lifetime_days
        return cls(root, {name: layout.intermediate(root, name, life) for name in layout.ca_names()})

    def ca(self, env: str) -> LocalCA:
        try:
            return self.envs[env]
        except KeyError:
            raise KeyError(f"no signing CA for environment {env!r}") from None

    def bundle(self, env: str, overlap: float = Rotation.overlap, at: dt.datetime | None = None) -> bytes:
        """What a pod of `env` trusts: its environment's CAs (the one signing now, the next one,
        one retired within the overlap), never the root or another environment's."""
        at = at or dt.datetime.now(dt.UTC)
        certs = [self.ca(env).cert]
        if env in self.nexts:
            certs.append(self.nexts[env][0].cert)
        if env in self.retired:
            old, since = self.retired[env]
            if (at - since).total_seconds() < overlap and old.not_valid_after_utc > at:
                certs.append(old)
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)

    def rotate(self, layout: Layout, r: Rotation, at: dt.datetime | None = None) -> list[str]:
        """Advance every environment's rotation by the clock; returns what changed."""
        at = at or dt.datetime.now(dt.UTC)
        changed = []
        for env, ca in list(self.envs.items()):
            if env in self.retired and ((at - self.retired[env][1]).total_seconds() >= r.overlap
                                        or self.retired[env][0].not_valid_after_utc <= at):
                del self.retired[env]
                changed.append(f"{env}: retired CA dropped after the overlap")
            if env in self.nexts and (at - self.nexts[env][1]).total_seconds() >= r.propagation:
                self.retired[env] = (ca.cert, at)
                self.envs[env] = self.nexts.pop(env)[0]
                changed.append(f"{env}: next CA now signs")
            elif env not in self.nexts and (ca.cert.not_valid_after_utc - at).total_seconds() < r.before:
                self.nexts[env] = (layout.intermediate(self.root, env, r.lifetime_days), at)
                changed.append(f"{env}: next CA introduced into the trust bundle")
        return changed

    # --- Secret form (base64 as in the API): root.crt/.key; <env>.crt/.key (signing now);
    # <env>.next.crt/.key + <env>.next-at; <env>.retired.crt + <env>.retired-at.
    def to_secret_data(self) -> dict[str, str]:
        out = {"root.crt": self.root.cert_pem, "root.key": _pem_key(self.root.key)}
        for env, ca in self.envs.items():
            out[f"{env}.crt"], out[f"{env}.key"] = ca.cert_pem, _pem_key(ca.key)
        for env, (ca, since) in self.nexts.items():
            out[f"{env}.next.crt"], out[f"{env}.next.key"] = ca.cert_pem, _pem_key(ca.key)
            out[f"{env}.next-at"] = since.isoformat().encode()
        for env, (cert, since) in self.retired.items():
            out[f"{env}.retired.crt"] = cert.public_bytes(serialization.Encoding.PEM)
            out[f"{env}.retired-at"] = since.isoformat().encode()
        return {k: base64.b64encode(v).decode() for k, v in out.items()}

    @classmethod
    def from_secret_data(cls, data: dict[str, str]) -> Authority:
        raw = {k: base64.b64decode(v) for k, v in (data or {}).items()}

        def load(stem: str) -> LocalCA:
            cert = parse_certificates(raw[f"{stem}.crt"], f"CA Secret entry {stem}.crt")[0]
            return LocalCA(cert, parse_private_key(raw[f"{stem}.key"]))

        def when(key: str) -> dt.datetime:
            return dt.datetime.fromisoformat(raw[key].decode())

        stems = [k[:-4] for k in raw if k.endswith(".crt") and k != "root.crt" and "." not in k[:-4]]
        envs = {e: load(e) for e in stems}
        nexts = {e: (load(f"{e}.next"), when(f"{e}.next-at")) for e in stems if f"{e}.next.crt" in raw}
        retired = {e: (parse_certificates(raw[f"{e}.retired.crt"], "retired CA")[0], when(f"{e}.retired-at"))
                   for e in stems if f"{e}.retired.crt" in raw}
        return cls(load("root"), envs, nexts, retired)


def load_or_create(core, namespace: str, secret_name: str, layout: Layout, attempts: int = 5,
                   rotation: Rotation | None = None, at: dt.datetime | None = None) -> Authority:
    """The cluster's Authority: the Secret created if absent, missing environments' CAs added,
    rotations advanced by the clock. Safe with any number of replicas doing it at once: the API
    server's create and resourceVersion-checked replace decide, the losers re-read."""

    rotation = rotation or Rotation()
    layout.check()
    for _ in range(attempts):
        try:
            resp = core.read_namespaced_secret(secret_name, namespace, _preload_content=False, _request_timeout=10)
            secret = json.loads(resp.data)
        except ApiException as e:
            if e.status != 404:
                raise
            auth = Authority.generate(layout, rotation=rotation)
            body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": secret_name, "namespace": namespace,
                                 "labels": {"app.kubernetes.io/name": "sds-injector",
                                            "sds-injector.io/component": "ca"},
                                 # Deliberately outlives `helm uninstall` (running pods keep
                                 # verifying; a reinstall reuses the CAs). Helm does not own it; the
                                 # annotation says so to anyone adopting it. Destroy: docs/issuer.md.
                                 "annotations": {"helm.sh/resource-policy": "keep"}},
                    "data": auth.to_secret_data()}
            try:
                core.create_namespaced_secret(namespace, body, _request_timeout=10)
                log.info("created the signing CAs", extra={"fields": {"secret": secret_name, "cas": layout.ca_names()}})
                return auth
            except ApiException as e2:
                if e2.status != 409:
                    raise
                continue  # another replica won: read its Secret
        auth = Authority.from_secret_data(secret.get("data") or {})
        wanted = layout.ca_names()
        changes = [f"{name}: CA created" for name in wanted if name not in auth.envs]
        for name in wanted:
            auth.envs.setdefault(name, layout.intermediate(auth.root, name, rotation.lifetime_days))
        changes += auth.rotate(layout, rotation, at)
        if not changes:
            return auth
        secret["data"] = auth.to_secret_data()  # carries metadata.resourceVersion: a stale replace fails
        try:
            core.replace_namespaced_secret(secret_name, namespace, secret, _request_timeout=10)
            log.info("signing CAs updated", extra={"fields": {"secret": secret_name, "changes": changes}})
            return auth
        except ApiException as e:
            if e.status != 409:
                raise
    raise RuntimeError(f"could not settle the CA Secret {namespace}/{secret_name} after {attempts} attempts")
