"""A small Kubernetes API server double, for the issuer's tests and benchmarks: only the
documented endpoints the issuer uses, with objects and tokens shaped as kube-apiserver makes
them. It is a double: it proves our client code against the documented API, not against a
real API server.

- GET  /api/v1/{pods,services,namespaces} (list; `?watch=true&resourceVersion=N` streams
  ADDED/MODIFIED/DELETED events, chunked, until `timeoutSeconds`), GET /api/v1/namespaces/{ns}/pods/{name}
- GET/POST/PUT /api/v1/namespaces/{ns}/secrets[/{name}] (create 409 AlreadyExists; replace
  409 Conflict on a stale resourceVersion)
- POST /apis/authentication.k8s.io/v1/tokenreviews (signature, expiry, audiences, bound pod
  name and uid, as kube-apiserver checks them; a token bound to a pod being deleted is
  "invalidated"; positive answers are cached for `review_cache_seconds`, 10 s as observed on
  kube-apiserver 1.36, so a token reviewed just before its pod's deletion still passes)
- GET  /.well-known/openid-configuration, /openid/v1/jwks (service-account issuer discovery)

Projected tokens (`mint`) carry iss, sub, aud (list), exp, iat, nbf, jti and `kubernetes.io`
{namespace, node, pod, serviceaccount, warnafter}, RS256 with a `kid`, like kube-apiserver's."""
from __future__ import annotations

import base64
import bisect
import copy
import hashlib
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sds_core.policy import claim_crd

from . import kube_crd
from .kube_crd import Invalid

ISSUER = "https://kubernetes.default.svc.cluster.local"
API_TOKEN = "issuer-api-token"  # the issuer's own credentials against this double


def _b64url_uint(n: int) -> str:
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


SA_TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def service_account_admission(pod: dict) -> dict:
    """kube-apiserver's ServiceAccount admission plugin, as it runs before mutating webhooks and
    again after them when they changed the pod: every container that does not mount the token
    path already gets the `kube-api-access-*` projected volume there, unless the pod opts out
    (automountServiceAccountToken: false). Returns a new pod."""
    pod = copy.deepcopy(pod)
    spec = pod.setdefault("spec", {})
    if spec.get("automountServiceAccountToken") is False:
        return pod
    volumes = spec.setdefault("volumes", [])
    name = next((v["name"] for v in volumes if v["name"].startswith("kube-api-access-")), None)
    if name is None:
        name = f"kube-api-access-{uuid.uuid4().hex[:5]}"
        volumes.append({"name": name, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1",
                                                                         "fieldPath": "metadata.namespace"}}]}}]}})
    for key in ("initContainers", "containers"):
        for c in spec.get(key) or []:
            mounts = c.setdefault("volumeMounts", [])
            if not any(m.get("mountPath") == SA_TOKEN_DIR for m in mounts):
                mounts.append({"name": name, "readOnly": True, "mountPath": SA_TOKEN_DIR})
    return pod


def admit_pod(pod: dict, webhook) -> tuple[dict, int]:
    """A pod CREATE through the admission chain as kube-apiserver runs it for one mutating
    webhook with reinvocationPolicy IfNeeded: the ServiceAccount plugin, the webhook, the plugin
    again when the webhook changed the pod, and the webhook again when the plugin then did.
    `webhook(pod)` returns the pod it admits (patched or not). Returns (stored pod, webhook calls)."""
    first = service_account_admission(pod)
    mutated = webhook(first)
    calls = 1
    if mutated != first:
        again = service_account_admission(mutated)
        if again != mutated:
            mutated = webhook(again)
            calls += 1
    return mutated, calls



def _as_seen(event: tuple, selected) -> dict | None:
    """An event as a watch with a label selector sees it: an object that starts matching is
    ADDED, one that stops matching is DELETED (carrying its new state), as kube-apiserver does."""
    _, _, etype, obj, before = event
    now, was = selected(obj), before is not None and selected(before)
    if etype == "DELETED":
        return {"type": "DELETED", "object": obj} if was else None
    if etype == "MODIFIED":
        if now and was:
            return {"type": "MODIFIED", "object": obj}
        if now:
            return {"type": "ADDED", "object": obj}
        return {"type": "DELETED", "object": obj} if was else None
    return {"type": etype, "object": obj} if now else None


CLAIMS_API = ["apis", claim_crd.GROUP, claim_crd.VERSION]
# What kube-apiserver takes for true in a query (Go's strconv.ParseBool): the kubernetes Python
# client before 37 sends watch=True.
TRUE = ("1", "t", "T", "TRUE", "true", "True")


class KubeAPI:
    def __init__(self):
        self.key = rsa.generate_private_key(65537, 2048)
        der = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        # kube-apiserver's kid: base64url(sha256(DER public key)).
        self.kid = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
        self.rv = 0
        self.objects: dict[str, dict[tuple[str, str], dict]] = {"pods": {}, "services": {}, "namespaces": {},
                                                                  "secrets": {}, "serviceaccounts": {},
                                                                  "configmaps": {}, "hostnameclaims": {}}
        # (rv, resource, type, object, the object before the event or None)
        self.events: list[tuple[int, str, str, dict, dict | None]] = []
        self.compacted_rv = 0  # a watch from an older resourceVersion gets 410 Expired, as after etcd compaction
        self.bookmark_seconds = 60.0  # BOOKMARK events to watches that allow them, as kube-apiserver sends them
        self.cond = threading.Condition()
        self.requests: list[tuple[str, str]] = []
        self.review_cache_seconds = 10.0
        self._reviewed: dict[str, tuple[float, dict]] = {}  # token -> (cached until, positive status)
        self.fail_watches = False
        # "hang": never answer; "error": 500 to everything (an API server in trouble);
        # "unauthorized": 401 to everything (the client's credentials revoked)
        self.mode = "ok"
        self.server: ThreadingHTTPServer | None = None

    # --- objects ----------------------------------------------------------------------------
    def _store(self, resource: str, obj: dict, event: str) -> dict:
        with self.cond:
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            if event == "ADDED":  # as the API server does; a caller may have set it (ordering tests)
                obj["metadata"].setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
            before = self.objects[resource].get(key)
            if event == "DELETED":
                self.objects[resource].pop(key, None)
            else:
                self.objects[resource][key] = obj
            self.events.append((self.rv, resource, event, copy.deepcopy(obj), copy.deepcopy(before)))
            self.cond.notify_all()
            return obj

    def add_namespace(self, name: str, labels: dict | None = None) -> dict:
        return self._store("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": name, "uid": str(uuid.uuid4()),
            "labels": {"kubernetes.io/metadata.name": name, **(labels or {})}}}, "ADDED")

    def label_namespace(self, name: str, labels: dict) -> dict:
        """Labels added to a namespace (created if absent), as `kubectl label namespace` does."""
        cur = self.objects["namespaces"].get(("", name))
        if cur is None:
            return self.add_namespace(name, labels)
        new = copy.deepcopy(cur)
        new["metadata"]["labels"] = {**(new["metadata"].get("labels") or {}), **labels}
        return self._store("namespaces", new, "MODIFIED")

    def add_pod(self, namespace: str, name: str, service_account: str = "default", labels: dict | None = None,
                annotations: dict | None = None, ip: str = "10.1.2.3", host_network: bool = False) -> dict:
        if ("", namespace) not in self.objects["namespaces"]:
            self.add_namespace(namespace)
        sa_key = (namespace, service_account)
        if sa_key not in self.objects["serviceaccounts"]:
            self.objects["serviceaccounts"][sa_key] = {"metadata": {"name": service_account, "uid": str(uuid.uuid4())}}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                            "labels": labels or {}, "annotations": annotations or {}},
               "spec": {"serviceAccountName": service_account, "nodeName": "node-1", "hostNetwork": host_network,
                        "containers": [{"name": "app", "image": "app:1"}]},
               "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}
        return self._store("pods", pod, "ADDED")

    def terminate_pod(self, namespace: str, name: str, grace_seconds: int = 30) -> dict:
        """A graceful delete as kube-apiserver does it for a pod bound to a node: the pod stays,
        with deletionTimestamp and deletionGracePeriodSeconds set (MODIFIED), until the kubelet
        confirms."""
        pod = copy.deepcopy(self.objects["pods"][(namespace, name)])
        pod["metadata"]["deletionTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + grace_seconds))
        pod["metadata"]["deletionGracePeriodSeconds"] = grace_seconds
        return self._store("pods", pod, "MODIFIED")

    def delete_pod(self, namespace: str, name: str) -> None:
        pod = self.objects["pods"][(namespace, name)]
        self._store("pods", copy.deepcopy(pod), "DELETED")

    def add_configmap(self, namespace: str, name: str, data: dict, labels: dict | None = None,
                      immutable: bool | None = True, created: str | None = None) -> dict:
        if ("", namespace) not in self.objects["namespaces"]:
            self.add_namespace(namespace)
        meta = {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()), "labels": labels or {}}
        if created:
            meta["creationTimestamp"] = created
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": dict(data)}
        if immutable is not None:
            cm["immutable"] = immutable
        return self._store("configmaps", cm, "ADDED")

    def update_configmap(self, namespace: str, name: str, data: dict | None = None, labels: dict | None = None,
                         immutable: bool | None = None) -> dict:
        """An update as kube-apiserver validates it: `immutable` is one-way but may be switched on
        in the same update that changes `data`; once on, data may not change; labels and
        annotations stay mutable; creationTimestamp never changes."""
        cur = self.objects["configmaps"][(namespace, name)]
        new = copy.deepcopy(cur)
        if cur.get("immutable") is True:
            if immutable is False:
                raise Invalid(f'configmaps "{name}": immutable: field is immutable')
            if data is not None and data != cur.get("data"):
                raise Invalid(f'configmaps "{name}": data: field is immutable when `immutable` is set')
        if data is not None:
            new["data"] = dict(data)
        if immutable is not None:
            new["immutable"] = immutable
        if labels is not None:
            new["metadata"]["labels"] = dict(labels)
        return self._store("configmaps", new, "MODIFIED")

    # --- HostnameClaims (a custom resource: devkit/kube_crd.py holds the API server's rules) ---
    def add_hostname_claim(self, namespace: str, name: str, spec: dict, created: str | None = None) -> dict:
        if ("", namespace) not in self.objects["namespaces"]:
            self.add_namespace(namespace)
        meta = {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())}
        if created:
            meta["creationTimestamp"] = created
        obj = kube_crd.admit({"apiVersion": claim_crd.API_VERSION, "kind": claim_crd.KIND, "metadata": meta,
                              "spec": spec})
        return self._store("hostnameclaims", obj, "ADDED")

    def update_hostname_claim(self, namespace: str, name: str, obj: dict) -> dict:
        """An update of the main resource (kube_crd.Invalid when the API server would refuse it)."""
        cur = self.objects["hostnameclaims"][(namespace, name)]
        return self._store("hostnameclaims", kube_crd.admit(obj, cur), "MODIFIED")

    def set_claim_status(self, namespace: str, name: str, status: dict) -> dict:
        cur = self.objects["hostnameclaims"][(namespace, name)]
        return self._store("hostnameclaims", kube_crd.with_status(cur, status), "MODIFIED")

    def compact(self) -> None:
        """etcd compaction: watches from any resourceVersion up to now get 410 Expired."""
        with self.cond:
            self.compacted_rv = self.rv

    def delete(self, resource: str, namespace: str, name: str) -> None:
        obj = self.objects[resource][(namespace, name)]
        self._store(resource, copy.deepcopy(obj), "DELETED")

    def add_secret(self, namespace: str, name: str, data: dict[str, bytes]) -> dict:
        """A Secret as `kubectl create secret generic --from-file` makes it (data base64)."""
        import base64

        return self._store("secrets", {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                                       "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())},
                                       "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}, "ADDED")

    def add_service(self, namespace: str, name: str, selector: dict, ports: list[dict] | None = None) -> dict:
        return self._store("services", {"apiVersion": "v1", "kind": "Service", "metadata": {
            "name": name, "namespace": namespace, "uid": str(uuid.uuid4())},
            "spec": {"selector": selector, "ports": ports or [{"port": 443}]}}, "ADDED")

    # --- tokens -----------------------------------------------------------------------------
    def mint(self, pod: dict, audience: str = "sds-injector", ttl: int = 3600, now: float | None = None,
             key=None, **override) -> str:
        """A projected service-account token bound to `pod`, as the kubelet gets it."""
        now = int(now if now is not None else time.time())
        m, sa_name = pod["metadata"], pod["spec"]["serviceAccountName"]
        sa = self.objects["serviceaccounts"][(m["namespace"], sa_name)]
        claims = {
            "aud": [audience], "exp": now + ttl, "iat": now, "nbf": now, "iss": ISSUER, "jti": str(uuid.uuid4()),
            "sub": f"system:serviceaccount:{m['namespace']}:{sa_name}",
            "kubernetes.io": {
                "namespace": m["namespace"],
                "node": {"name": "node-1", "uid": "3f1e6c3a-node"},
                "pod": {"name": m["name"], "uid": m["uid"]},
                "serviceaccount": {"name": sa_name, "uid": sa["metadata"]["uid"]},
                "warnafter": now + min(ttl, 3607) - 7,
            },
        }
        claims.update(override)
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": self.kid})

    def jwks(self) -> dict:
        n = self.key.public_key().public_numbers()
        return {"keys": [{"use": "sig", "kty": "RSA", "kid": self.kid, "alg": "RS256",
                          "n": _b64url_uint(n.n), "e": _b64url_uint(n.e)}]}

    def review(self, body: dict) -> dict:
        spec = body.get("spec") or {}
        audiences = spec.get("audiences") or [ISSUER]
        status: dict = {"authenticated": False}
        cached = self._reviewed.get(spec.get("token", ""))
        if cached and cached[0] > time.monotonic():
            return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {},
                    "spec": spec, "status": cached[1]}
        try:
            claims = jwt.decode(spec.get("token", ""), self.key.public_key(), algorithms=["RS256"],
                                audience=audiences, issuer=ISSUER)
            k8s = claims["kubernetes.io"]
            pod = self.objects["pods"].get((k8s["namespace"], k8s["pod"]["name"]))
            if pod is None or pod["metadata"]["uid"] != k8s["pod"]["uid"]:
                raise jwt.InvalidTokenError(f"pod {k8s['pod']['name']} ({k8s['pod']['uid']}) not found")
            if pod["metadata"].get("deletionTimestamp"):
                raise jwt.InvalidTokenError("service account token has been invalidated")
            status = {"authenticated": True, "audiences": [a for a in audiences if a in claims["aud"]],
                      "user": {"username": claims["sub"], "uid": k8s["serviceaccount"]["uid"],
                               "groups": ["system:serviceaccounts", f"system:serviceaccounts:{k8s['namespace']}",
                                          "system:authenticated"],
                               "extra": {"authentication.kubernetes.io/pod-name": [k8s["pod"]["name"]],
                                         "authentication.kubernetes.io/pod-uid": [k8s["pod"]["uid"]],
                                         "authentication.kubernetes.io/node-name": [k8s["node"]["name"]],
                                         "authentication.kubernetes.io/credential-id": [f"JTI={claims['jti']}"]}}}
            self._reviewed[spec["token"]] = (time.monotonic() + self.review_cache_seconds, status)
        except (jwt.PyJWTError, KeyError) as e:
            status = {"authenticated": False, "error": f"[invalid bearer token, {e}]"}
        return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {},
                "spec": spec, "status": status}

    # --- server -----------------------------------------------------------------------------
    def start(self) -> KubeAPI:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body are two writes: with Nagle on, the body waits for the client's
            # delayed ACK (40 ms a request).
            disable_nagle_algorithm = True

            def log_message(self, *a):
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._send(code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                  "message": message, "reason": reason, "code": code})

            def _authorized(self) -> bool:
                if self.headers.get("authorization") != f"Bearer {API_TOKEN}":
                    self._status(401, "Unauthorized", "Unauthorized")
                    return False
                return True

            def _trouble(self) -> bool:
                if api.mode == "hang":
                    time.sleep(3600)
                if api.mode == "error":
                    self._status(500, "InternalError", "etcdserver: request timed out")
                    return True
                if api.mode == "unauthorized":  # the client's credentials revoked
                    self._status(401, "Unauthorized", "Unauthorized")
                    return True
                return False

            def do_GET(self):
                if self._trouble():
                    return None
                url = urlparse(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                parts = [p for p in url.path.split("/") if p]
                api.requests.append(("GET", url.path))
                if url.path == "/.well-known/openid-configuration":
                    return self._send(200, {"issuer": ISSUER, "jwks_uri": f"{ISSUER}/openid/v1/jwks",
                                            "response_types_supported": ["id_token"], "subject_types_supported":
                                            ["public"], "id_token_signing_alg_values_supported": ["RS256"]})
                if url.path == "/openid/v1/jwks":
                    return self._send(200, api.jwks())
                if not self._authorized():
                    return None
                if parts[:3] == CLAIMS_API:
                    return self._claims_get(parts[3:], q)
                if parts[:2] == ["api", "v1"] and len(parts) == 3 and parts[2] in ("pods", "services", "namespaces",
                                                                                   "configmaps"):
                    return self._list_or_watch(parts[2], q)
                if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 5 and parts[4] == "configmaps":
                    return self._list_or_watch(parts[4], q, namespace=parts[3])
                if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 6 and parts[4] in ("pods", "secrets",
                                                                                             "configmaps"):
                    obj = api.objects[parts[4]].get((parts[3], parts[5]))
                    if obj is None:
                        return self._status(404, "NotFound", f'{parts[4]} "{parts[5]}" not found')
                    return self._send(200, obj)
                return self._status(404, "NotFound", "the server could not find the requested resource")

            def _claims_get(self, rest: list[str], q: dict) -> None:
                if rest == [claim_crd.PLURAL]:
                    return self._list_or_watch(claim_crd.PLURAL, q)
                if len(rest) == 3 and rest[0] == "namespaces" and rest[2] == claim_crd.PLURAL:
                    return self._list_or_watch(claim_crd.PLURAL, q, namespace=rest[1])
                if len(rest) in (4, 5) and rest[0] == "namespaces" and rest[2] == claim_crd.PLURAL:
                    obj = api.objects[claim_crd.PLURAL].get((rest[1], rest[3]))
                    if obj is None:
                        return self._status(404, "NotFound", f'{claim_crd.PLURAL} "{rest[3]}" not found')
                    return self._send(200, obj)
                return self._status(404, "NotFound", "the server could not find the requested resource")

            def _claims_write(self, method: str, rest: list[str], body: dict) -> None:
                """POST (create), PUT (update), PATCH/PUT .../status (merge), DELETE."""
                if len(rest) < 3 or rest[0] != "namespaces" or rest[2] != claim_crd.PLURAL:
                    return self._status(404, "NotFound", "the server could not find the requested resource")
                ns = rest[1]
                try:
                    with api.cond:
                        if method == "POST" and len(rest) == 3:
                            name = (body.get("metadata") or {}).get("name", "")
                            if (ns, name) in api.objects[claim_crd.PLURAL]:
                                return self._status(409, "AlreadyExists", f'{claim_crd.PLURAL} "{name}" already exists')
                            return self._send(201, api.add_hostname_claim(ns, name, body.get("spec") or {}))
                        cur = api.objects[claim_crd.PLURAL].get((ns, rest[3])) if len(rest) > 3 else None
                        if cur is None:
                            return self._status(404, "NotFound", f'{claim_crd.PLURAL} not found')
                        if method == "DELETE" and len(rest) == 4:
                            api.delete(claim_crd.PLURAL, ns, rest[3])
                            return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
                        if len(rest) == 5 and rest[4] == "status" and method in ("PATCH", "PUT"):
                            status = body.get("status") or {}
                            if method == "PATCH":  # a merge patch of the status
                                status = {**(cur.get("status") or {}), **status}
                            return self._send(200, api.set_claim_status(ns, rest[3], status))
                        if len(rest) == 4 and method == "PUT":
                            return self._send(200, api.update_hostname_claim(ns, rest[3], body))
                except Invalid as e:
                    return self._status(422, "Invalid", str(e))
                return self._status(405, "MethodNotAllowed", f"{method} is not supported here")

            def _list_or_watch(self, resource: str, q: dict, namespace: str | None = None) -> None:
                kind = {"pods": "PodList", "services": "ServiceList", "namespaces": "NamespaceList",
                        "configmaps": "ConfigMapList", claim_crd.PLURAL: f"{claim_crd.KIND}List"}[resource]
                # labelSelector: equality terms only (k=v,k2=v2), as the callers here use it.
                terms = [t.partition("=")[0::2] for t in (q.get("labelSelector") or "").split(",") if t]

                def selected(obj: dict) -> bool:
                    if namespace is not None and obj["metadata"].get("namespace") != namespace:
                        return False
                    labels = obj["metadata"].get("labels") or {}
                    return all(labels.get(k) == v for k, v in terms)

                if q.get("watch") not in TRUE:
                    with api.cond:
                        items = copy.deepcopy([o for o in api.objects[resource].values() if selected(o)])
                        rv = api.rv
                    return self._send(200, {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": str(rv)},
                                            "items": items})
                if api.fail_watches:
                    return self._status(500, "InternalError", "watch unavailable")
                since = int(q.get("resourceVersion") or 0)
                deadline = time.monotonic() + float(q.get("timeoutSeconds") or 60)
                bookmarks = q.get("allowWatchBookmarks") in TRUE
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()

                def send(event: dict) -> None:
                    line = json.dumps(event).encode() + b"\n"
                    self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                    self.wfile.flush()
                try:
                    if since and since < api.compacted_rv:
                        # kube-apiserver answers an expired resourceVersion with HTTP 200 and one
                        # ERROR event; the client must relist.
                        send({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                                          "status": "Failure", "reason": "Expired", "code": 410,
                                                          "message": f"too old resource version: {since} "
                                                                     f"({api.compacted_rv})"}})
                        return self.wfile.write(b"0\r\n\r\n")
                    next_bookmark = time.monotonic() + api.bookmark_seconds
                    while time.monotonic() < deadline and api.server is not None:
                        with api.cond:
                            # Events are in resourceVersion order: look only past `since`.
                            fresh = api.events[bisect.bisect_right(api.events, since, key=lambda e: e[0]):]
                            new = [(e[0], ev) for e in fresh if e[1] == resource
                                   and (ev := _as_seen(e, selected)) is not None]
                            since = max([since] + [e[0] for e in fresh if e[1] == resource])
                            if not new:
                                api.cond.wait(min(0.5, max(0.0, deadline - time.monotonic())))
                        for _, event in new:
                            send(event)
                        if bookmarks and time.monotonic() >= next_bookmark:
                            send({"type": "BOOKMARK", "object": {"kind": kind[:-4], "apiVersion": "v1",
                                                                 "metadata": {"resourceVersion": str(since)}}})
                            next_bookmark = time.monotonic() + api.bookmark_seconds
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass
                self.close_connection = True

            def _body(self) -> dict:
                n = int(self.headers.get("content-length") or 0)
                return json.loads(self.rfile.read(n) or b"{}")

            def do_POST(self):
                if self._trouble():
                    return None
                parts = [p for p in urlparse(self.path).path.split("/") if p]
                api.requests.append(("POST", self.path))
                if not self._authorized():
                    return None
                body = self._body()
                if parts[:3] == CLAIMS_API:
                    return self._claims_write("POST", parts[3:], body)
                if parts == ["apis", "authentication.k8s.io", "v1", "tokenreviews"]:
                    return self._send(201, api.review(body))
                if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 5 and parts[4] in ("secrets", "configmaps"):
                    kind, name = parts[4], body["metadata"]["name"]
                    with api.cond:
                        if (parts[3], name) in api.objects[kind]:
                            return self._status(409, "AlreadyExists", f'{kind} "{name}" already exists')
                        body["metadata"].update(namespace=parts[3], uid=str(uuid.uuid4()),
                                                creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                        obj = api._store(kind, body, "ADDED")
                    return self._send(201, obj)
                return self._status(404, "NotFound", "the server could not find the requested resource")

            def do_DELETE(self):
                parts = [p for p in urlparse(self.path).path.split("/") if p]
                api.requests.append(("DELETE", self.path))
                if not self._authorized():
                    return None
                if parts[:3] == CLAIMS_API:
                    return self._claims_write("DELETE", parts[3:], {})
                if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 6 and parts[4] == "configmaps":
                    with api.cond:
                        if (parts[3], parts[5]) not in api.objects["configmaps"]:
                            return self._status(404, "NotFound", f'configmaps "{parts[5]}" not found')
                        api.delete("configmaps", parts[3], parts[5])
                    return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
                return self._status(404, "NotFound", "the server could not find the requested resource")

            def do_PUT(self):
                parts = [p for p in urlparse(self.path).path.split("/") if p]
                api.requests.append(("PUT", self.path))
                if not self._authorized():
                    return None
                body = self._body()
                if parts[:3] == CLAIMS_API:
                    return self._claims_write("PUT", parts[3:], body)
                if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 6 and parts[4] == "secrets":
                    with api.cond:
                        cur = api.objects["secrets"].get((parts[3], parts[5]))
                        if cur is None:
                            return self._status(404, "NotFound", f'secrets "{parts[5]}" not found')
                        if body["metadata"].get("resourceVersion") != cur["metadata"]["resourceVersion"]:
                            return self._status(409, "Conflict", "the object has been modified; please apply "
                                                "your changes to the latest version and try again")
                        obj = api._store("secrets", body, "MODIFIED")
                    return self._send(200, obj)
                if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 6 and parts[4] == "configmaps":
                    with api.cond:
                        cur = api.objects["configmaps"].get((parts[3], parts[5]))
                        if cur is None:
                            return self._status(404, "NotFound", f'configmaps "{parts[5]}" not found')
                        if body["metadata"].get("resourceVersion") not in (None, cur["metadata"]["resourceVersion"]):
                            return self._status(409, "Conflict", "the object has been modified; please apply "
                                                "your changes to the latest version and try again")
                        try:
                            obj = api.update_configmap(parts[3], parts[5], data=body.get("data") or {},
                                                       labels=body["metadata"].get("labels") or {},
                                                       immutable=body.get("immutable"))
                        except Invalid as e:
                            return self._status(422, "Invalid", str(e))
                    return self._send(200, obj)
                return self._status(404, "NotFound", "the server could not find the requested resource")

            def do_PATCH(self):
                parts = [p for p in urlparse(self.path).path.split("/") if p]
                api.requests.append(("PATCH", self.path))
                if not self._authorized():
                    return None
                if parts[:3] == CLAIMS_API:
                    return self._claims_write("PATCH", parts[3:], self._body())
                return self._status(404, "NotFound", "the server could not find the requested resource")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def kubeconfig(self) -> str:
        return json.dumps({"apiVersion": "v1", "kind": "Config", "current-context": "double",
                           "clusters": [{"name": "double", "cluster": {"server": self.url}}],
                           "users": [{"name": "issuer", "user": {"token": API_TOKEN}}],
                           "contexts": [{"name": "double", "context": {"cluster": "double", "user": "issuer"}}]})

    def stop(self) -> None:
        server, self.server = self.server, None
        if server:
            with self.cond:
                self.cond.notify_all()
            server.shutdown()
            server.server_close()
