"""External signer (issuer.caMode=vault): the issuer verifies the pod's identity and policy and
decides every name, then Vault/OpenBao PKI signs the pod's CSR (`<mount>/sign/<role>`, one
mount per signing CA of the layout: `vault_pki_path` with {ca} = prod, prod-edge, prod--retail).
No CA key exists in Kubernetes. The issuer's decision wins: a certificate whose names differ
from what it decided (a role with use_csr_sans or use_csr_common_name, or wider allowed names)
is discarded and the request refused, never handed out. Vault down: 503, agents keep their
certificates. OCSP and revocation are Vault's in this mode (its /ocsp and CRL; the issuer's own
responder answers only for CAs whose key it holds)."""
from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sds_core.pki.ca import LocalCA
from sds_core.pki.validation import parse_certificates
from sds_core.reasons import Reason

from .authority import Authority, Layout
from .identity import Refused

log = logging.getLogger("issuer.external")


class VaultSigner:
    """A Vault/OpenBao client for the issuer: a token from a file (re-read at each login: Vault
    Agent, a projected token) or Kubernetes auth with the issuer's own service-account token."""

    def __init__(self, address: str, pki_path: str, timeout: float = 5.0, ca_cert: Path | None = None,
                 token_file: Path | None = None, auth_role: str = "", auth_mount: str = "kubernetes",
                 sa_token_file: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")):
        import hvac  # lazy: only the issuer in vault mode needs Vault's client

        self.pki_path = pki_path
        self.token_file, self.auth_role, self.auth_mount, self.sa_token_file = token_file, auth_role, auth_mount, sa_token_file
        self.client = hvac.Client(address, timeout=timeout, verify=str(ca_cert) if ca_cert else True)
        self._hvac = hvac

    def _login(self) -> None:
        if self.token_file is not None:
            self.client.token = self.token_file.read_text().strip()
        elif self.auth_role:
            jwt = self.sa_token_file.read_text().strip()
            self.client.auth.kubernetes.login(self.auth_role, jwt, mount_point=self.auth_mount)

    def _call(self, fn, *args, **kwargs):
        """One Vault call, logging in first when there is no token yet and again once on a 403."""
        exc = self._hvac.exceptions
        for attempt in (0, 1):
            try:
                if not self.client.token or attempt:
                    self._login()
                return fn(*args, **kwargs)
            except exc.Forbidden as e:
                if attempt:
                    raise Refused(Reason.SIGNER_REFUSED, f"Vault refused the issuer: {_first(e)} (policy of its "
                                  "token or role)", 503) from None
            except exc.InvalidRequest as e:
                raise Refused(Reason.SIGNER_REFUSED, f"Vault refused the request: {_first(e)}", 503) from None
            except (exc.VaultError, OSError, self._requests_errors()) as e:
                raise Refused(Reason.SIGNER_UNAVAILABLE, f"the external signer is unavailable "
                              f"({type(e).__name__}); agents keep their certificates; retry", 503) from None
        raise AssertionError("unreachable")

    @staticmethod
    def _requests_errors():
        import requests  # lazy: hvac's transport

        return requests.RequestException

    def mount_and_role(self, ca: str) -> tuple[str, str]:
        path = self.pki_path.format(ca=ca)
        mount, _, role = path.partition("/sign/")
        if not mount or not role:
            raise ValueError(f"vault_pki_path {self.pki_path!r} must look like <mount>/sign/<role>")
        return mount, role

    def ca_chain(self, ca: str) -> list[x509.Certificate]:
        mount, _ = self.mount_and_role(ca)
        pem = self._call(self.client.secrets.pki.read_ca_certificate_chain, mount_point=mount) or \
            self._call(self.client.secrets.pki.read_ca_certificate, mount_point=mount)
        return parse_certificates(pem.encode(), f"CA chain of Vault mount {mount}")

    def sign(self, ca: str, csr_pem: str, common_name: str, dns: Sequence[str], uris: Sequence[str],
             ips: Sequence[str], ttl: dt.timedelta) -> tuple[x509.Certificate, str]:
        mount, role = self.mount_and_role(ca)
        out = self._call(self.client.secrets.pki.sign_certificate, role, csr_pem, common_name or "", extra_params={
            "alt_names": ",".join(dns), "uri_sans": ",".join(uris), "ip_sans": ",".join(ips),
            "ttl": f"{int(ttl.total_seconds())}s", "exclude_cn_from_sans": True}, mount_point=mount)
        data = out["data"]
        cert = x509.load_pem_x509_certificate(data["certificate"].encode())
        chain = [data["certificate"], *(data.get("ca_chain") or [data["issuing_ca"]])]
        return cert, "\n".join(c.strip() for c in chain) + "\n"


def check_names(cert: x509.Certificate, common_name: str, dns: Sequence[str], uris: Sequence[str],
                ips: Sequence[str], csr_key) -> None:
    """The certificate names exactly what the issuer decided, for the CSR's key: else refused."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    got = (set(san.get_values_for_type(x509.DNSName)), set(san.get_values_for_type(x509.UniformResourceIdentifier)),
           {str(i) for i in san.get_values_for_type(x509.IPAddress)})
    want = (set(dns), set(uris), {str(ipaddress.ip_address(i)) for i in ips})
    cns = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    same_key = cert.public_key().public_bytes(serialization.Encoding.DER, spki) == \
        csr_key.public_bytes(serialization.Encoding.DER, spki)
    if got != want or (cns and cns != [common_name]) or not same_key:
        extra = sorted(str(n) for n in (got[0] - want[0]) | (got[1] - want[1]) | (got[2] - want[2]))
        raise Refused(Reason.SIGNER_NAMES, "the external signer's certificate does not carry exactly the names the "
                      f"issuer decided (extra: {extra}, CN {cns}); it was discarded. Set the Vault role's "
                      "use_csr_sans=false and use_csr_common_name=false", 502)


class ExternalCA(LocalCA):
    """A signing CA whose key stays in Vault: `cert` is its certificate (for bundles)."""

    def __init__(self, name: str, chain: list[x509.Certificate], signer: VaultSigner):
        super().__init__(chain[0], None)
        self.name, self.chain, self.signer = name, chain, signer

    @property
    def cert_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)


class ExternalAuthority(Authority):
    def bundle(self, env: str, overlap: float = 0, at: dt.datetime | None = None) -> bytes:
        return self.ca(env).cert.public_bytes(serialization.Encoding.PEM)

    def rotate(self, layout: Layout, r, at: dt.datetime | None = None) -> list[str]:
        return []  # Vault's issuers rotate there; the issuer re-reads the chains every refresh


def load_external(signer: VaultSigner, layout: Layout) -> Authority:
    """The CA chains of every mount the layout needs (a clear error for a missing mount)."""
    envs: dict[str, ExternalCA] = {}
    for name in layout.ca_names():
        try:
            envs[name] = ExternalCA(name, signer.ca_chain(name), signer)
        except Refused as e:
            raise ValueError(f"external signer: CA {name!r} (mount {signer.mount_and_role(name)[0]}): {e.message}") \
                from None
    return ExternalAuthority(LocalCA(next(iter(envs.values())).chain[-1], None), dict(envs))


def _first(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    return "; ".join(str(x) for x in errors)[:300] if errors else str(e)[:300]
