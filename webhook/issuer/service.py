"""The issuer's decisions, independent of HTTP: verify the token, derive the grant, check the
CSR, sign with the environment's CA; audit every outcome."""
from __future__ import annotations


import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sds_core import issuer_api as api
from sds_core import names
from sds_core.logs import RateLimit
from sds_core.pki.validation import serial_hex
from sds_core.policy.config import InjectorConfig
from .audit import AuditLog
from .crl import crl_pem
from .external import ExternalCA, check_names
from .authority import Authority, edge, line
from .identity import Grant, Refused, check_binding, grant
from .inventory import ISSUED, REFUSED, Inventory
from . import serials
from .limits import PodBuckets
from .tokens import Caller, TokenRefused
from sds_core.reasons import Reason

log = logging.getLogger("issuer")
_CURVES = (ec.SECP256R1, ec.SECP384R1)


def public_key_of(csr_pem: str) -> object:
    """The CSR's key after proof of possession. Everything else the CSR asks for is ignored."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode() if isinstance(csr_pem, str) else csr_pem)
    except (ValueError, TypeError):
        raise Refused(Reason.BAD_CSR, "csr: not a PEM certificate signing request", 400) from None
    if not csr.is_signature_valid:
        raise Refused(Reason.BAD_CSR, "csr: its signature does not verify (proof of key possession failed)", 400)
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _CURVES):
        return key
    if isinstance(key, rsa.RSAPublicKey) and 2048 <= key.key_size <= 8192:
        return key
    raise Refused(Reason.WEAK_KEY, "csr: key must be EC P-256/P-384 or RSA 2048-8192", 400)


def cas_of(env: str, business_line: str | None, cfg: InjectorConfig) -> tuple[str, list[str]]:
    """The CA that signs the certificates of pods of `env` (and business line) and the CAs their
    trust bundle holds: the environment's, or with businessLineCAs the business line's (plus
    those it trusts)."""
    if not (cfg.business_line_cas and business_line):
        return env, [env]
    trusts = cfg.business_lines[business_line].trusts
    return line(env, business_line), [line(env, b) for b in dict.fromkeys([business_line, *trusts])]


class Issuer:
    def __init__(self, authority: Authority, cluster, verifier, config: Callable[[], InjectorConfig],
                 audit: AuditLog, inventory: Inventory | None = None, cert_ttl: dt.timedelta = dt.timedelta(hours=1),
                 max_dns_names: int = 100, overlap_seconds: float = 48 * 3600,
                 gateways: Sequence[str] = (), pod_limits: PodBuckets | None = None,
                 source_limits: PodBuckets | None = None, crl: bool = False):
        self.authority, self.cluster, self.verifier, self.config = authority, cluster, verifier, config
        self.audit, self.inventory = audit, inventory or Inventory()
        self.cert_ttl, self.max_dns_names, self.overlap = cert_ttl, max_dns_names, overlap_seconds
        self.gateways = frozenset(gateways)  # "namespace/serviceaccount"
        self.pod_limits = pod_limits or PodBuckets(per_minute=20, burst=20)
        # Per source address, for tokens the API server refused (the HTTP layer applies it).
        self.source_limits = source_limits or PodBuckets(per_minute=5, burst=5)
        self._refusal_audit = RateLimit(burst=20, per=60.0)
        self.crl = crl  # trust bundles carry CRLs of serial revocations

    def _grant(self, token: str, cfg: InjectorConfig) -> tuple[Caller, Grant]:
        try:
            caller = self.verifier.verify(token)
        except TokenRefused as e:
            raise Refused(e.reason, e.message, 401) from None
        pod = self.cluster.pod(caller.namespace, caller.pod_name)
        services = self.cluster.services_selecting(pod) if pod else []
        labels = self.cluster.namespace_labels(caller.namespace)
        return caller, grant(caller, pod, services, labels, cfg, self.max_dns_names)

    def _authorize(self, token: str, name: str, kind: str, csr_pem: str | None = None,
                   cfg: InjectorConfig | None = None):
        """(grant, the signing CA, the trust bundle, the CSR's key, the bundle's CAs this issuer
        signs with) — or a Refused, audited. The configuration (`cfg`, the request's, when the
        caller needs it too) and the CAs are read once: one request, one view of the policy."""
        caller = None
        cfg = cfg or self.config()
        try:
            caller, g = self._grant(token, cfg)
            if kind == "certificate" and (wait := self.pod_limits.take(caller.pod_uid)):
                raise Refused(Reason.RATE_LIMITED, f"pod {caller.namespace}/{caller.pod_name} asked for certificates "
                              f"faster than the issuer allows one pod; retry in {wait:.0f} s (the agent keeps serving "
                              "its cached certificate)", 429, retry_after=wait)
            allowed = g.certificates if kind == "certificate" else g.trust_bundles
            if name not in allowed:
                raise Refused(Reason.NAME_NOT_ALLOWED, f"{kind} {name!r} is not one this pod may have (its "
                              f"annotations and the namespace policy give {list(allowed)})")
            key = public_key_of(csr_pem) if csr_pem is not None else None
            signing, trusted = self._cas_of(g, cfg)
            authority = self.authority  # once: a refresh may swap it while this request runs
            ca = self._ca(authority, signing)
            bundle = b"".join(self._bundle(authority, n) for n in trusted)
            own = [c for n in trusted for c in (authority.envs.get(n), (authority.nexts.get(n) or (None,))[0])
                   if c is not None and c.key is not None and not isinstance(c, ExternalCA)] \
                if kind == "trust bundle" and self.crl else []  # only a bundle's CRLs need them
        except Refused as e:
            self._refused(e, caller, name=name)
        return g, ca, bundle, key, own

    @staticmethod
    def _cas_of(g: Grant, cfg: InjectorConfig) -> tuple[str, list[str]]:
        return cas_of(g.env, g.business_line, cfg)

    def use(self, authority: Authority) -> None:
        """The CAs to sign with from now on (a refresh of the CA Secret); requests under way
        finish with the ones they read."""
        self.authority = authority

    def _bundle(self, authority: Authority, name: str) -> bytes:
        try:
            return authority.bundle(name, self.overlap)
        except KeyError as e:
            raise Refused(Reason.NO_CA, f"{e.args[0]}; the issuer creates it within a minute of the configuration", 503) \
                from None

    @staticmethod
    def _ca(authority: Authority, env: str):
        try:
            return authority.ca(env)
        except KeyError as e:
            raise Refused(Reason.NO_CA, f"{e.args[0]}; add it to the issuer's environments", 503) from None

    def _refused(self, e: Refused, caller: Caller | None, **fields) -> NoReturn:
        """Count every refusal; audit at most a burst of them per reason and caller a minute
        (unverified callers are one caller), the next record saying how many were not: junk from
        the pod network cannot grow the audit without bound, and nothing is silently lost."""
        REFUSED.labels(e.reason).inc()
        who = {"namespace": caller.namespace, "service_account": caller.service_account,
               "pod": caller.pod_name} if caller else {}
        key = f"{e.reason}:{caller.namespace}/{caller.pod_name}" if caller else f"{e.reason}:unverified"
        audit, suppressed = self._refusal_audit.allow(key)
        if audit:
            self.audit.record("refused", e.reason, message=e.message, **fields, **who,
                              **({"suppressed_before": suppressed} if suppressed else {}))
        raise e

    def sign(self, token: str, req: api.CertificateRequest) -> api.CertificateResponse:
        name, csr_pem = req.name, req.csr
        g, ca, bundle, key, _ = self._authorize(token, name, "certificate", csr_pem)
        cert, chain = self._issue(ca, key, csr_pem, g.common_name, g.dns_names, [g.spiffe_id], g.ips,
                                  serials.Identity(g.namespace, g.service_account, g.pod_uid), name=name)
        fingerprint = cert.fingerprint(hashes.SHA256()).hex()
        serial = serial_hex(cert.serial_number)
        not_after = cert.not_valid_after_utc
        ISSUED.labels(g.env).inc()
        self.audit.record("issued", namespace=g.namespace, service_account=g.service_account, pod=g.pod,
                          spiffe_id=g.spiffe_id, name=name, dns_names=list(g.dns_names), env=g.env,
                          serial=serial, sha256=fingerprint, not_after=not_after.isoformat())
        self.inventory.add(g.namespace, name, g.pod, {"spiffe_id": g.spiffe_id, "env": g.env, "serial": serial,
                                                      "not_after": not_after.isoformat(),
                                                      "not_after_unix": not_after.timestamp()})
        return api.CertificateResponse(certificate_chain=chain, serial=serial,
                                       not_after=not_after.isoformat(), trust_bundle=bundle.decode())

    def _issue(self, ca, key, csr_pem: str, cn: str, dns, uris, ips, who: serials.Identity, name: str):
        """(certificate, served chain PEM): signed here with a serial that carries `who`, or by the
        external signer and checked to carry exactly the decided names (refused, and audited,
        otherwise)."""
        if not isinstance(ca, ExternalCA):
            cert = ca.sign(key, cn, dns, uris, ips, ttl=self.cert_ttl, serial=serials.mint(ca, who))
            return cert, (cert.public_bytes(serialization.Encoding.PEM) + ca.cert_pem).decode()
        try:
            cert, chain = ca.signer.sign(ca.name, csr_pem, cn, dns, uris, ips, self.cert_ttl)
            check_names(cert, cn, dns, uris, ips, key)
        except Refused as e:
            self._refused(e, None, name=name, namespace=who.namespace, service_account=who.service_account)
        return cert, chain

    def _gateway(self, token: str) -> Caller:
        """The caller, if it is a configured gateway's live pod (else Refused, unaudited)."""
        try:
            caller = self.verifier.verify(token)
        except TokenRefused as e:
            raise Refused(e.reason, e.message, 401) from None
        if f"{caller.namespace}/{caller.service_account}" not in self.gateways:
            raise Refused(Reason.NOT_A_GATEWAY, f"service account {caller.namespace}/{caller.service_account} is not "
                          "a gateway (issuer setting gateway_identities); gateway certificates are not issued to it")
        check_binding(caller, self.cluster.pod(caller.namespace, caller.pod_name))
        return caller

    def _authorize_gateway(self, token: str, tenant: str, csr_pem: str):
        """(the tenant's resolved claim, its environment's CA, the CSR's key), or Refused. The
        hostnames are the issuer's own resolution of the cluster's claims: the request only
        names the tenant."""
        caller = None
        try:
            caller = self._gateway(token)
            claim = next((t for t in self.cluster.gateway_tenants(self.config()).tenants if t.key == tenant), None)
            if claim is None:
                raise Refused(Reason.NO_SUCH_TENANT, f"tenant {tenant!r} has no served hostnames: no such claim, or it was "
                              "refused (see the gateway's /readyz)")
            key = public_key_of(csr_pem)
            ca = self._ca(self.authority, edge(claim.env))  # never the workload CA: sidecars must not trust it
        except Refused as e:
            self._refused(e, caller, tenant=tenant)
        return claim, ca, key

    def sign_gateway(self, token: str, req: api.GatewayCertificateRequest) -> api.CertificateResponse:
        tenant = req.tenant
        claim, ca, key = self._authorize_gateway(token, tenant, req.csr)
        cert, chain = self._issue(ca, key, req.csr, claim.hostnames[0], list(claim.hostnames), [], [],
                                  serials.Identity(claim.namespace, f"gateway:{claim.name}", ""), name=f"gateway:{tenant}")
        serial = serial_hex(cert.serial_number)
        not_after = cert.not_valid_after_utc
        ISSUED.labels(claim.env).inc()
        self.audit.record("issued", tenant=tenant, hostnames=list(claim.hostnames), env=claim.env, serial=serial,
                          sha256=cert.fingerprint(hashes.SHA256()).hex(), not_after=not_after.isoformat())
        self.inventory.add(claim.namespace, f"gateway:{claim.name}", "gateway", {
            "hostnames": list(claim.hostnames), "env": claim.env, "serial": serial,
            "not_after": not_after.isoformat(), "not_after_unix": not_after.timestamp()})
        return api.CertificateResponse(certificate_chain=chain, serial=serial, not_after=not_after.isoformat())

    def trust_bundle(self, token: str, req: api.TrustBundleRequest) -> api.TrustBundleResponse:
        cfg = self.config()
        g, _, bundle, _, own = self._authorize(token, req.name, "trust bundle", cfg=cfg)
        # With crl on, a CRL per CA of the bundle whose key the issuer holds (signing now, and a
        # next one); none in vault mode (Vault's CRLs are Vault's).
        crls = b"".join(crl_pem(c, self.cluster.revocations) for c in own) if self.crl else b""
        peers = self._gateway_peers(g, req.port, cfg) if req.port else []
        return api.TrustBundleResponse(trust_bundle=bundle.decode(), env=g.env, crl=crls.decode(),
                                       gateway_peers=",".join(peers))

    def _gateway_peers(self, g: Grant, port: str, cfg: InjectorConfig) -> list[str]:
        """The gateways' SPIFFE IDs, when an accepted claim of the pod's namespace asks for
        mTLS to a Service that selects this pod and sends the claim's port to `port`: derived
        from the claim, so a tenant never lists the gateway by hand, and only on that port."""
        if not self.gateways or not port.isdigit():
            return []
        pod = self.cluster.pod(g.namespace, g.pod)
        if pod is None:
            return []
        services = set(self.cluster.services_selecting(pod))
        wanted = int(port)
        for t in self.cluster.gateway_tenants(cfg).tenants:
            if (t.namespace == g.namespace and t.backend_tls == "mutual" and t.service in services
                    and wanted in self.cluster.service_targets(pod, t.service, t.port)):
                return sorted(names.spiffe_id(cfg.agent.trust_domain, *gw.split("/", 1)) for gw in self.gateways)
        return []

    def sign_gateway_identity(self, token: str, req: api.GatewayIdentityRequest) -> api.CertificateResponse:
        """The gateway's own workload certificate for reaching tenants' pods of one environment
        (and business line): its service account's SPIFFE ID and nothing else, signed by the CA
        those pods trust; with the trust bundle to verify them."""
        caller, spiffe, ca, bundle, key = self._authorize_gateway_identity(token, req.env, req.business_line, req.csr)
        cert, chain = self._issue(ca, key, req.csr, "", [], [spiffe], [],
                                  serials.Identity(caller.namespace, caller.service_account, caller.pod_uid),
                                  name=f"gateway-identity:{req.env}")
        serial = serial_hex(cert.serial_number)
        not_after = cert.not_valid_after_utc
        ISSUED.labels(req.env).inc()
        self.audit.record("issued", namespace=caller.namespace, service_account=caller.service_account,
                          pod=caller.pod_name, spiffe_id=spiffe, name="gateway-identity", env=req.env,
                          business_line=req.business_line, serial=serial,
                          sha256=cert.fingerprint(hashes.SHA256()).hex(), not_after=not_after.isoformat())
        return api.CertificateResponse(certificate_chain=chain, serial=serial, not_after=not_after.isoformat(),
                                       trust_bundle=bundle.decode())

    def gateway_trust_bundle(self, token: str, req: api.GatewayTrustRequest) -> api.TrustBundleResponse:
        _, _, _, bundle, _ = self._authorize_gateway_identity(token, req.env, req.business_line, None)
        return api.TrustBundleResponse(trust_bundle=bundle.decode(), env=req.env)

    def _authorize_gateway_identity(self, token: str, env: str, business_line: str, csr_pem: str | None):
        """(the gateway caller, its SPIFFE ID, the CA of `env`'s pods, their trust bundle, the CSR's
        key), all from one view of the configuration."""
        caller = None
        try:
            caller = self._gateway(token)
            cfg = self.config()
            if env not in cfg.environments or (business_line and business_line not in cfg.business_lines):
                raise Refused(Reason.UNKNOWN_ENV, f"no environment {env!r} / business line {business_line!r} "
                              "in the issuer's configuration", 400)
            # The pods' own signing CA only: the gateway verifies pods of this line, not of the
            # lines they trust.
            signing, _ = cas_of(env, business_line or None, cfg)
            authority = self.authority
            ca = self._ca(authority, signing)
            bundle = self._bundle(authority, signing)
            key = public_key_of(csr_pem) if csr_pem is not None else None
            spiffe = names.spiffe_id(cfg.agent.trust_domain, caller.namespace, caller.service_account)
        except Refused as e:
            self._refused(e, caller, name=f"gateway-identity:{env}")
        return caller, spiffe, ca, bundle, key
