"""hvac clients over an ordered list of Vault addresses: failover on timeout, connection error,
5xx or sealed; return to the primary once its /sys/health says it is active again; Kubernetes
(or token) auth with the token renewed before its TTL runs out and a fresh login when renewal
fails. Calls are blocking (requests): the source runs them in a thread."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import hvac
import requests
from hvac import exceptions as vexc

from sds_core import logs
from .settings import AgentSettings
from .sources.base import SourceError
import ssl
from requests.adapters import HTTPAdapter
from sds_core.sds import metrics

log = logging.getLogger("sds.vault")
T = TypeVar("T")
_UNAVAILABLE = (requests.exceptions.Timeout, requests.exceptions.ConnectionError, vexc.VaultDown,
                vexc.InternalServerError, vexc.BadGateway, vexc.RateLimitExceeded)


def _session(ca_cert: str) -> requests.Session:
    """One HTTP session for hvac and the health probe alike, trusting `ca_cert` (a file or the
    PEM itself: a pod gets it inline, with no file to mount) on top of nothing else."""
    session = requests.Session()
    if not ca_cert:
        return session


    pem = ca_cert if ca_cert.lstrip().startswith("-----BEGIN") else None
    try:
        ctx = ssl.create_default_context(cadata=pem) if pem else ssl.create_default_context(cafile=ca_cert)
    except (ssl.SSLError, OSError, ValueError) as e:
        raise ValueError(f"vault_ca_cert: not a readable PEM CA certificate ({type(e).__name__})") from None

    class _Adapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            kwargs["ssl_context"] = ctx
            return super().init_poolmanager(*args, **kwargs)

    session.mount("https://", _Adapter())
    return session


def _why(address: str, e: Exception) -> tuple[str, str]:
    """(reason, what to tell the operator) for an address that could not be used."""
    if isinstance(e, requests.exceptions.SSLError):
        return "tls", (f"{address}: TLS verification failed; set SDS_VAULT_CA_CERT (chart: "
                       "config.agent.vault.caCert) to the CA that signed Vault's certificate")
    if isinstance(e, vexc.VaultDown):
        return "sealed", f"{address}: Vault is sealed; unseal it (vault/bao operator unseal)"
    if isinstance(e, requests.exceptions.Timeout):
        return "unavailable", f"{address}: no answer within the timeout"
    return "unavailable", f"{address}: {type(e).__name__}"


class VaultClient:
    def __init__(self, settings: AgentSettings, on_switch: Callable[[str, str], None] | None = None):
        if not settings.vault_addresses:
            raise ValueError("the vault source needs vault_addresses")
        plain = [a for a in settings.vault_addresses if not a.startswith("https://")]
        if plain and not settings.vault_allow_http:
            raise ValueError(f"Vault addresses must be https:// (got {plain}); plain http only with "
                             "SDS_VAULT_ALLOW_HTTP=true, for development")
        self.s = settings
        self.addresses = list(settings.vault_addresses)
        self.session = _session(settings.vault_ca_cert)
        self.clients = [hvac.Client(url=a, timeout=settings.vault_timeout_seconds, session=self.session)
                        for a in self.addresses]
        self.down_until = [0.0] * len(self.addresses)
        self.current = 0
        self.token = ""
        self.token_expires = 0.0
        self.token_ttl = 0.0
        self.on_switch = on_switch or (lambda a, b: None)
        self._lock = threading.Lock()

    # -- failover ----------------------------------------------------------------------------
    def _healthy(self, i: int) -> bool:
        try:
            r = self.session.get(f"{self.addresses[i]}/v1/sys/health", timeout=self.s.vault_timeout_seconds)
            return r.status_code == 200
        except requests.exceptions.RequestException:
            return False

    def get_text(self, path: str) -> str | None:
        """An unauthenticated GET on the address in use; None for any failure. For optional
        reads (one issuer's CRL) whose failure says nothing about the address's health."""
        try:
            r = self.session.get(f"{self.addresses[self.current]}{path}", timeout=self.s.vault_timeout_seconds)
        except requests.exceptions.RequestException:
            return None
        return r.text if r.status_code == 200 else None

    def post_bytes(self, path: str, body: bytes, content_type: str) -> bytes:
        """An unauthenticated POST on the address in use (Vault's OCSP responder takes DER)."""
        try:
            r = self.session.post(f"{self.addresses[self.current]}{path}", data=body, timeout=self.s.vault_timeout_seconds,
                                  headers={"content-type": content_type})
        except requests.exceptions.RequestException as e:
            raise OSError(type(e).__name__) from None
        if r.status_code != 200:
            raise OSError(f"HTTP {r.status_code}")
        return r.content

    def any_healthy(self) -> bool:
        """True once any address reports itself active (it is then usable again at once)."""
        for i in range(len(self.addresses)):
            if self._healthy(i):
                self.down_until[i] = 0.0
                return True
        return False

    def _order(self) -> list[int]:
        now = time.monotonic()
        usable = [i for i in range(len(self.addresses)) if self.down_until[i] <= now]
        for i in list(usable):
            # An address that failed before comes back only once it reports itself active.
            if self.down_until[i] and not self._healthy(i):
                self.down_until[i] = now + self.s.vault_down_seconds
                usable.remove(i)
            else:
                self.down_until[i] = 0.0
        return usable

    def call(self, what: str, fn: Callable[[hvac.Client], T], auth: bool = True) -> T:
        """Run `fn` against the first usable address, moving down the list on unavailability."""
        tried: list[tuple[str, str]] = []
        for i in self._order():
            client = self.clients[i]
            started = time.monotonic()
            try:
                if auth:
                    self._ensure_token(client)
                    client.token = self.token
                result = fn(client)
            except _UNAVAILABLE as e:
                self.down_until[i] = time.monotonic() + self.s.vault_down_seconds
                tried.append(_why(self.addresses[i], e))
                log.warning("vault address unavailable, trying the next", extra=logs.kv(
                    address=self.addresses[i], error=type(e).__name__, what=what,
                    ms=round(1000 * (time.monotonic() - started))))
                continue
            if i != self.current:
                metrics.VAULT_SWITCHES.inc()
                self.on_switch(self.addresses[self.current], self.addresses[i])
                log.info("vault address switched", extra=logs.kv(frm=self.addresses[self.current],
                                                                  to=self.addresses[i]))
                self.current = i
            return result
        reasons = {r for r, _ in tried}
        reason = reasons.pop() if len(reasons) == 1 else "unavailable"
        raise SourceError(reason, f"no Vault address answered for {what}: "
                                  f"{'; '.join(t for _, t in tried) or 'all marked down (retrying when healthy)'}")

    def token_policies(self) -> list[str] | None:
        """The current token's policies, or None when Vault does not accept the token (which
        also drops it, so the next call logs in again at once)."""
        try:
            client = self.clients[self.current]
            client.token = self.token
            return list(client.auth.token.lookup_self()["data"].get("policies") or [])
        except vexc.Forbidden:
            self.token, self.token_expires = "", 0.0
            return None
        except (vexc.VaultError, requests.exceptions.RequestException):
            return []

    # -- auth -------------------------------------------------------------------------------
    def _ensure_token(self, client: hvac.Client) -> None:
        with self._lock:
            now = time.monotonic()
            if self.token and now < self.token_expires - self.token_ttl / 3:
                return
            if self.token and now < self.token_expires:
                try:
                    client.token = self.token
                    resp = client.auth.token.renew_self()
                    self._took(resp["auth"])
                    return
                except _UNAVAILABLE:
                    raise
                except vexc.VaultError as e:
                    log.warning("vault token renewal failed; logging in again",
                                extra=logs.kv(error=type(e).__name__))
            self._login(client)

    def _took(self, auth: dict) -> None:
        self.token = auth["client_token"]
        self.token_ttl = float(auth.get("lease_duration") or 0) or 3600.0
        self.token_expires = time.monotonic() + self.token_ttl

    def _login(self, client: hvac.Client) -> None:
        s = self.s
        if s.vault_auth == "token":
            if s.vault_token is None:
                raise SourceError("auth_failed", "vault_auth=token but no vault_token is set")
            # A given token has a TTL too: learn it, so it is renewed like a login's.
            client.token = s.vault_token.get_secret_value()
            try:
                data = client.auth.token.lookup_self()["data"]
            except vexc.Forbidden:
                raise SourceError("auth_failed", "Vault refused the token (SDS_VAULT_TOKEN): it is invalid or expired") from None
            ttl = float(data.get("ttl") or 0)
            self.token = client.token
            self.token_ttl = ttl if ttl > 0 and data.get("renewable") else 10**9  # 0: never expires
            self.token_expires = time.monotonic() + (ttl if ttl > 0 else 10**9)
            if ttl > 0 and not data.get("renewable"):
                log.warning("SDS_VAULT_TOKEN is not renewable and expires in %.0f s", ttl)
            return
        role = s.vault_role.format(**s.template_values())
        try:
            jwt = s.vault_token_file.read_text().strip()  # re-read each login: the kubelet rotates it
        except OSError as e:
            raise SourceError("auth_failed", f"cannot read the service account token {s.vault_token_file}: "
                                             f"{e.strerror}") from None
        try:
            resp = client.auth.kubernetes.login(role, jwt, use_token=False, mount_point=s.vault_auth_mount)
        except _UNAVAILABLE:
            raise
        except vexc.VaultError as e:
            metrics.VAULT_AUTH_FAILURES.inc()
            said = "; ".join(str(x)[:300] for x in (e.errors or [])) or type(e).__name__
            raise SourceError("auth_failed", f"Vault login as role {role!r} at auth/{s.vault_auth_mount} failed: "
                                             f"{said} (check the role's bound service account and namespace, "
                                             "its audience, and the auth method's TokenReview access)") from None
        self._took(resp["auth"])
        log.info("vault login", extra=logs.kv(role=role, ttl=self.token_ttl))
