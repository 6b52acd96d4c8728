"""Who is calling: a projected service-account token, verified as Kubernetes defines it.

Two verifiers, one result (`Caller`):
- `TokenReviewVerifier`: asks the API server (POST authentication.k8s.io/v1 TokenReview with the
  expected audience). The API server checks signature, expiry, audience and that the bound pod
  still exists. Needs RBAC `create tokenreviews`.
- `JwksVerifier`: offline, against the cluster's service-account issuer keys (OIDC discovery
  `/.well-known/openid-configuration` -> `jwks_uri`), refreshed when an unknown key id appears.
  Checks signature, `iss`, `aud`, `exp`, `nbf`; the bound pod's existence is then checked by the
  caller against the pod cache (name *and* uid), as for TokenReview."""
from __future__ import annotations

from typing import Any

import json
import threading
import time
from dataclasses import dataclass

import jwt
from sds_core.reasons import Reason
from kubernetes import client

SA_PREFIX = "system:serviceaccount:"


class Busy(RuntimeError):
    """Not a refusal of the token: the issuer cannot review it now (503, retry)."""


class TokenRefused(Exception):
    def __init__(self, reason: Reason, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass(frozen=True)
class Caller:
    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str


def _bearer(token: str) -> str:
    if not token or len(token) > 16384:
        raise TokenRefused(Reason.NO_TOKEN, "no service-account token (Authorization: Bearer <projected token>)")
    return token


def precheck(token: str, audience: str, issuer: str | None = None, leeway: float = 5) -> None:
    """What can be refused without asking anyone, before a TokenReview: a JWT's shape, its
    audience, expiry and not-before, the issuer when known, a service account's subject, a pod
    binding. Anyone on the pod network can send junk; junk must cost no API-server call. The
    signature is still the API server's to check (this reads the claims unverified)."""
    try:
        claims = jwt.decode(_bearer(token), options={"verify_signature": False})
    except jwt.PyJWTError:
        raise TokenRefused(Reason.TOKEN_MALFORMED, "the token is not a JWT") from None
    now = time.time()
    aud = claims.get("aud")
    if audience not in (aud if isinstance(aud, list) else [aud]):
        raise TokenRefused(Reason.TOKEN_AUDIENCE, f"the token is not for audience {audience!r}")
    exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat"))
    if not isinstance(exp, (int, float)) or exp < now - leeway:
        raise TokenRefused(Reason.TOKEN_EXPIRED, "the token has expired (or carries no exp)")
    if isinstance(nbf, (int, float)) and nbf > now + leeway:
        raise TokenRefused(Reason.TOKEN_NOT_YET_VALID, "the token is not valid yet (nbf/iat in the future)")
    if issuer is not None and claims.get("iss") != issuer:
        raise TokenRefused(Reason.TOKEN_ISSUER, f"the token's issuer is not {issuer!r}")
    if not str(claims.get("sub", "")).startswith(SA_PREFIX):
        raise TokenRefused(Reason.NOT_A_SERVICE_ACCOUNT, "the token's subject is not a service account")
    pod = (claims.get("kubernetes.io") or {}).get("pod") if isinstance(claims.get("kubernetes.io"), dict) else None
    if not isinstance(pod, dict) or not pod.get("name") or not pod.get("uid"):
        raise TokenRefused(Reason.NOT_POD_BOUND, "the token is not bound to a pod; mount a projected "
                           "service-account token (serviceAccountToken volume source)")


class TokenReviewVerifier:
    def __init__(self, api_client, audience: str, issuer: str | None = None, max_in_flight: int = 32,
                 health=None):
        self.health = health  # an ApiHealth: a refused review call makes the issuer unready
        self.auth = client.AuthenticationV1Api(api_client)
        self.audience, self.issuer = audience, issuer
        # However many requests arrive, at most this many TokenReviews are in flight at once.
        self._in_flight = threading.BoundedSemaphore(max_in_flight)

    def verify(self, token: str) -> Caller:
        precheck(token, self.audience, self.issuer)  # junk never reaches the API server
        # Plain JSON both ways: the client's model (de)serialization cost more than the review.
        body: Any = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": _bearer(token), "audiences": [self.audience]}}
        if not self._in_flight.acquire(timeout=2.0):
            raise Busy("too many token reviews in flight; retry")
        try:
            # The client sends a dict as it is (its stubs ask for the model); the answer stays raw.
            resp: Any = self.auth.create_token_review(body, _preload_content=False, _request_timeout=5)
        except Exception as e:
            if self.health is not None:
                self.health.observe(e)
            raise
        finally:
            self._in_flight.release()
        if self.health is not None:
            self.health.ok()
        status = json.loads(resp.data).get("status") or {}
        if not status.get("authenticated"):
            raise TokenRefused(Reason.TOKEN_INVALID, f"the API server refused the token: "
                               f"{status.get('error') or 'not authenticated'}")
        if self.audience not in (status.get("audiences") or []):
            raise TokenRefused(Reason.TOKEN_AUDIENCE, f"the token is not for audience {self.audience!r}")
        user = status.get("user") or {}
        username = user.get("username") or ""
        if not username.startswith(SA_PREFIX) or username.count(":") != 3:
            raise TokenRefused(Reason.NOT_A_SERVICE_ACCOUNT, f"{username!r} is not a service account")
        namespace, sa = username[len(SA_PREFIX):].split(":")
        extra = user.get("extra") or {}
        pod_name = (extra.get("authentication.kubernetes.io/pod-name") or [""])[0]
        pod_uid = (extra.get("authentication.kubernetes.io/pod-uid") or [""])[0]
        if not pod_name or not pod_uid:
            raise TokenRefused(Reason.NOT_POD_BOUND, "the token is not bound to a pod; mount a projected "
                               "service-account token (serviceAccountToken volume source)")
        return Caller(namespace, sa, pod_name, pod_uid)


def _json(resp) -> dict:
    # Raw bytes: the client's own "str" decoding of these documents is a Python repr, not JSON.
    return json.loads(resp.data)


class JwksVerifier:
    def __init__(self, api_client, audience: str, issuer: str | None = None, refresh_seconds: float = 300):
        self.api = api_client
        self.audience = audience
        self.issuer = issuer
        self.refresh_seconds = refresh_seconds
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched = 0.0
        self._lock = threading.Lock()

    def _refresh(self, force: bool) -> None:
        with self._lock:
            if not force and time.monotonic() - self._fetched < self.refresh_seconds and self._keys:
                return
            if force and time.monotonic() - self._fetched < 1.0:
                return  # an unknown kid must not turn into a request flood
            # The API server serves both documents (ServiceAccountIssuerDiscovery).
            discovery = _json(client.WellKnownApi(self.api).get_service_account_issuer_open_id_configuration(
                _preload_content=False, _request_timeout=5))
            self.issuer = self.issuer or discovery["issuer"]
            keys = {}
            for k in _json(client.OpenidApi(self.api).get_service_account_issuer_open_id_keyset(
                    _preload_content=False, _request_timeout=5)).get("keys") or []:
                try:
                    keys[k.get("kid", "")] = jwt.PyJWK(k)
                except jwt.PyJWTError:
                    continue
            self._keys, self._fetched = keys, time.monotonic()

    def verify(self, token: str) -> Caller:
        token = _bearer(token)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRefused(Reason.TOKEN_MALFORMED, "the token is not a JWT") from None
        self._refresh(force=False)
        key = self._keys.get(header.get("kid", ""))
        if key is None:
            self._refresh(force=True)
            key = self._keys.get(header.get("kid", ""))
        if key is None:
            raise TokenRefused(Reason.TOKEN_INVALID, "the token is not signed by a key of the cluster's issuer")
        try:
            claims = jwt.decode(token, key, algorithms=["RS256", "ES256", "ES384", "PS256"], audience=self.audience,
                                issuer=self.issuer, options={"require": ["exp", "iat", "iss", "aud", "sub"]},
                                leeway=5)
        except jwt.ExpiredSignatureError:
            raise TokenRefused(Reason.TOKEN_EXPIRED, "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRefused(Reason.TOKEN_NOT_YET_VALID, "the token is not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise TokenRefused(Reason.TOKEN_AUDIENCE, f"the token is not for audience {self.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise TokenRefused(Reason.TOKEN_ISSUER, f"the token's issuer is not {self.issuer!r}") from None
        except jwt.PyJWTError as e:
            raise TokenRefused(Reason.TOKEN_INVALID, f"the token is invalid: {type(e).__name__}") from None
        k8s = claims.get("kubernetes.io") or {}
        pod = k8s.get("pod") or {}
        sa = k8s.get("serviceaccount") or {}
        namespace = k8s.get("namespace") or ""
        if claims.get("sub") != f"{SA_PREFIX}{namespace}:{sa.get('name')}":
            raise TokenRefused(Reason.NOT_A_SERVICE_ACCOUNT, "the token's subject is not its service account")
        if not pod.get("name") or not pod.get("uid"):
            raise TokenRefused(Reason.NOT_POD_BOUND, "the token is not bound to a pod; mount a projected "
                               "service-account token (serviceAccountToken volume source)")
        return Caller(namespace, sa["name"], pod["name"], pod["uid"])
