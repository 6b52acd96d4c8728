"""A Vault API test double: a real HTTP server that answers the endpoints the agent uses with
Vault's documented request and response formats, enforces tokens and per-path policies, and can
be made slow, unresponsive, sealed, erroring or down on command. It is a double, not Vault."""
from __future__ import annotations

import datetime as dt
import fnmatch
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from sds_core.pki.ca import LocalCA


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


def _ttl_seconds(ttl) -> int:
    if isinstance(ttl, (int, float)):
        return int(ttl)
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return int(float(ttl[:-1]) * units[ttl[-1]]) if ttl and ttl[-1] in units else int(ttl)


@dataclass
class Token:
    policies: list[str]  # path globs the token may use, as in Vault's ACL policies
    ttl: int
    issued: float = field(default_factory=time.monotonic)
    metadata: dict = field(default_factory=dict)

    def valid(self) -> bool:
        return time.monotonic() < self.issued + self.ttl


@dataclass
class PkiMount:
    ca: LocalCA
    roles: dict[str, dict]
    issued: dict[str, x509.Certificate] = field(default_factory=dict)
    revoked: dict[str, dt.datetime] = field(default_factory=dict)
    max_ttl: int = 86400

    def crl_pem(self) -> bytes:
        now = dt.datetime.now(dt.UTC)
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.ca.cert.subject)
             .last_update(now - dt.timedelta(minutes=1)).next_update(now + dt.timedelta(hours=12)))
        for serial, when in self.revoked.items():
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(int(serial.replace(":", ""), 16))
                                          .revocation_date(when).build())
        return b.sign(self.ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def colon_hex(n: int) -> str:
    h = format(n, "x")
    h = h if len(h) % 2 == 0 else "0" + h
    return ":".join(h[i:i + 2] for i in range(0, len(h), 2))


class VaultDouble:
    def __init__(self, port: int = 0):
        self.tokens: dict[str, Token] = {}
        self.k8s_roles: dict[str, dict] = {}  # role -> {"jwts": set, "policies": [...], "ttl": int}
        self.kv: dict[str, dict[str, list[dict]]] = {}  # mount -> path -> versions
        self.pki: dict[str, PkiMount] = {}
        self.mode = "ok"  # ok | slow | hang | sealed | error | standby
        self.delay = 0.0
        self.log: list[tuple[str, str]] = []  # (method, path) of every request
        self._port = port
        self.server: ThreadingHTTPServer | None = None

    # -- control ---------------------------------------------------------------------------
    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> VaultDouble:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                double._handle(self, "GET")

            def do_POST(self):
                double._handle(self, "POST")

            def do_PUT(self):
                double._handle(self, "POST")

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self.server.daemon_threads = True
        self._port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Down: the port refuses connections until start() again."""
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def root_token(self) -> str:
        return self.add_token(["*"], ttl=86400)

    def add_token(self, policies: list[str], ttl: int = 3600, metadata: dict | None = None) -> str:
        tok = "hvs." + secrets.token_urlsafe(18)
        self.tokens[tok] = Token(policies, ttl, metadata=metadata or {})
        return tok

    def add_k8s_role(self, role: str, jwts: set[str], policies: list[str], ttl: int = 3600, mount="kubernetes"):
        self.k8s_roles[f"{mount}/{role}"] = {"jwts": jwts, "policies": policies, "ttl": ttl}

    def kv_put(self, mount: str, path: str, data: dict) -> int:
        versions = self.kv.setdefault(mount, {}).setdefault(path, [])
        versions.append({"data": data, "created_time": _now(), "deletion_time": "", "destroyed": False})
        return len(versions)

    def kv_delete_latest(self, mount: str, path: str, destroy: bool = False) -> None:
        v = self.kv[mount][path][-1]
        v["deletion_time"] = _now()
        v["destroyed"] = destroy

    def add_pki(self, mount: str, roles: dict[str, dict] | None = None, ca: LocalCA | None = None) -> PkiMount:
        m = PkiMount(ca or LocalCA.generate(f"{mount} CA"), roles or {})
        self.pki[mount] = m
        return m

    def issue_direct(self, mount: str, cn: str, uris: list[str] = (), ca: LocalCA | None = None,
                     ttl: int = 3600):
        """A certificate as another workload would get it from this PKI mount (revocable)."""
        pki = self.pki[mount]
        issued = (ca or pki.ca).issue(cn, dns_names=[cn], uris=list(uris), ttl=dt.timedelta(seconds=ttl))
        pki.issued[colon_hex(issued.certificate.serial_number)] = issued.certificate
        return issued

    def requests_to(self, prefix: str) -> int:
        return sum(1 for _, p in self.log if p.startswith(prefix))

    # -- HTTP ------------------------------------------------------------------------------
    def _send(self, h, code: int, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        # No keep-alive: when the double goes down, no open connection may keep answering.
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(data)

    def _errors(self, h, code: int, *errors: str):
        self._send(h, code, {"errors": list(errors)})

    def _handle(self, h, method: str):
        url = urlparse(h.path)
        path = url.path
        self.log.append((method, path))
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return self._errors(h, 400, "failed to parse JSON input")
        if self.mode == "hang":
            time.sleep(30)
            return
        if self.mode == "slow":
            time.sleep(self.delay)
        if path == "/v1/sys/health":
            code = {"sealed": 503, "standby": 429}.get(self.mode, 200)
            return self._send(h, code, {"initialized": True, "sealed": self.mode == "sealed",
                                        "standby": self.mode == "standby", "version": "double"})
        if self.mode == "sealed":
            return self._errors(h, 503, "Vault is sealed")
        if self.mode == "error":
            return self._errors(h, 500, "internal error (double)")
        if not path.startswith("/v1/"):
            return self._errors(h, 404, "no handler for route")
        rel = path[len("/v1/"):]
        if rel.startswith("auth/") and rel.endswith("/login") and method == "POST":
            return self._login(h, rel[len("auth/"):-len("/login")], body)
        # Unauthenticated PKI reads, as in Vault.
        for mount, pki in self.pki.items():
            if rel == f"{mount}/crl/pem":
                return self._send(h, 200, pki.crl_pem(), "application/pkix-crl")
            if rel == f"{mount}/ca_chain":
                return self._send(h, 200, pki.ca.cert_pem, "application/pem-certificate-chain")
        token = self.tokens.get(h.headers.get("X-Vault-Token", ""))
        if token is None or not token.valid():
            return self._errors(h, 403, "permission denied", "invalid token")
        if rel == "auth/token/renew-self" and method == "POST":
            token.issued = time.monotonic()
            return self._send(h, 200, {"auth": {"client_token": h.headers["X-Vault-Token"],
                                                "lease_duration": token.ttl, "renewable": True,
                                                "policies": ["default"]}})
        if rel == "auth/token/lookup-self" and method == "GET":
            # Vault lists policy names; the double's policies are the path globs themselves.
            return self._send(h, 200, {"data": {"policies": list(token.policies), "ttl": token.ttl,
                                                "renewable": True}})
        if not any(fnmatch.fnmatchcase(rel, p) for p in token.policies):
            return self._errors(h, 403, "1 error occurred:\n\t* permission denied\n\n")
        for mount, paths in self.kv.items():
            for kind in ("data", "metadata"):
                prefix = f"{mount}/{kind}/"
                if rel.startswith(prefix) and method == "GET":
                    return self._kv(h, kind, paths, rel[len(prefix):], parse_qs(url.query))
        for mount, pki in self.pki.items():
            if rel.startswith(f"{mount}/issue/") and method == "POST":
                return self._issue(h, pki, rel[len(f"{mount}/issue/"):], body)
            if rel.startswith(f"{mount}/sign/") and method == "POST":
                return self._issue(h, pki, rel[len(f"{mount}/sign/"):], body, csr=body.get("csr", ""))
            if rel == f"{mount}/revoke" and method == "POST":
                serial = body.get("serial_number", "")
                if serial not in pki.issued:
                    return self._errors(h, 400, f"certificate with serial {serial} not found")
                pki.revoked[serial] = dt.datetime.now(dt.UTC)
                return self._send(h, 200, {"data": {"revocation_time": int(time.time())}})
        return self._errors(h, 404, f"no handler for route \"{rel}\"")

    def _login(self, h, mount: str, body: dict):
        role = self.k8s_roles.get(f"{mount}/{body.get('role')}")
        if role is None:
            return self._errors(h, 400, f"invalid role name \"{body.get('role')}\"")
        if body.get("jwt") not in role["jwts"]:
            return self._errors(h, 403, "permission denied")
        tok = self.add_token(role["policies"], role["ttl"])
        return self._send(h, 200, {"auth": {"client_token": tok, "accessor": "acc", "policies": ["default"],
                                            "lease_duration": role["ttl"], "renewable": True,
                                            "metadata": {"role": body["role"]}}})

    def _kv(self, h, kind: str, paths: dict, path: str, query: dict):
        versions = paths.get(path)
        if not versions:
            return self._errors(h, 404)
        if kind == "metadata":
            return self._send(h, 200, {"data": {
                "current_version": len(versions), "oldest_version": 1, "max_versions": 0,
                "versions": {str(i + 1): {k: v[k] for k in ("created_time", "deletion_time", "destroyed")}
                             for i, v in enumerate(versions)}}})
        n = int(query.get("version", [len(versions)])[0])
        v = versions[n - 1]
        meta = {"version": n, "created_time": v["created_time"], "deletion_time": v["deletion_time"],
                "destroyed": v["destroyed"], "custom_metadata": None}
        if v["deletion_time"]:
            # Vault answers a deleted version with 404 and the metadata in the body.
            return self._send(h, 404, {"data": {"data": None, "metadata": meta}})
        return self._send(h, 200, {"data": {"data": v["data"], "metadata": meta}})

    def _issue(self, h, pki: PkiMount, role_name: str, body: dict, csr: str | None = None):
        role = pki.roles.get(role_name)
        if role is None:
            return self._errors(h, 400, f"unknown role: {role_name}")
        cn = body.get("common_name", "")
        if not cn:
            return self._errors(h, 400, "the common_name field is required")
        ttl = min(_ttl_seconds(body.get("ttl") or role.get("ttl", 3600)), pki.max_ttl)
        alt = [a for a in (body.get("alt_names") or "").split(",") if a]
        uris = [u for u in (body.get("uri_sans") or "").split(",") if u]
        # Like Vault, back-date not_before by the role's not_before_duration (default 30 s).
        back = _ttl_seconds(role.get("not_before_duration", 30))
        now = dt.datetime.now(dt.UTC)
        span = dict(ttl=dt.timedelta(seconds=ttl + back), not_before=now - dt.timedelta(seconds=back))
        if csr is None:
            issued = pki.ca.issue(cn, dns_names=[cn, *alt], uris=uris, **span)
            cert, key = issued.certificate, {"private_key": issued.key_pem.decode().strip(), "private_key_type": "ec"}
        else:  # pki/sign: only the CSR's key is used, as with Vault's default use_csr_sans=false
            try:
                request = x509.load_pem_x509_csr(csr.encode())
            except ValueError:
                return self._errors(h, 400, "certificate request could not be parsed")
            if not request.is_signature_valid:
                return self._errors(h, 400, "certificate request signature is invalid")
            cert, key = pki.ca.sign(request.public_key(), cn, [cn, *alt], uris, **span), {}
        serial = colon_hex(cert.serial_number)
        pki.issued[serial] = cert
        ca_pem = pki.ca.cert_pem.decode()
        return self._send(h, 200, {"lease_id": "", "renewable": False, "lease_duration": 0, "data": {
            "certificate": cert.public_bytes(serialization.Encoding.PEM).decode().strip(),
            "issuing_ca": ca_pem.strip(), "ca_chain": [ca_pem.strip()], **key, "serial_number": serial,
            "expiration": int(cert.not_valid_after_utc.timestamp())}})
