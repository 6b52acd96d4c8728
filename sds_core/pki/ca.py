"""A small certificate authority: the agent's embedded default source, and the tests' fixture factory."""
from __future__ import annotations

from collections.abc import Sequence

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .validation import parse_certificates, parse_private_key, serial_hex


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Issued:
    chain_pem: bytes
    key_pem: bytes
    certificate: x509.Certificate

    def __repr__(self) -> str:
        return f"Issued(serial={serial_hex(self.certificate.serial_number)})"


class LocalCA:
    def __init__(self, cert: x509.Certificate, key):
        self.cert = cert
        self.key = key

    @classmethod
    def generate(cls, common_name: str = "sds-injector local CA", days: float = 365,
                 not_before: dt.datetime | None = None) -> LocalCA:
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_file: Path, key_file: Path) -> LocalCA:
        cert = parse_certificates(cert_file.read_bytes(), "local CA certificate")[0]
        return cls(cert, parse_private_key(key_file.read_bytes()))

    def save(self, cert_file: Path, key_file: Path) -> None:
        """Only for callers that asked for the CA on disk (demo, tests): the key file is 0600."""
        cert_file.write_bytes(self.cert_pem)
        key_file.touch(mode=0o600)
        key_file.write_bytes(self._key_pem())

    def _key_pem(self) -> bytes:
        return _pem_key(self.key)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_identifier(self) -> x509.AuthorityKeyIdentifier:
        """What a certificate this CA signs names as its issuer's key: the CA's own subject key
        identifier, copied. Recomputing it (SHA-1 of the key) breaks chains under CAs whose SKI
        is made another way, e.g. Go's truncated SHA-256 (Helm's genCA)."""
        try:
            ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)

    def intermediate(self, common_name: str, days: float = 365, permitted_uri_domains: Sequence[str] = (),
                     not_before: dt.datetime | None = None, excluded_uri_domains: Sequence[str] = (),
                     excluded_dns: Sequence[str] = (), permitted_dns: Sequence[str] = (),
                     permitted_ips: Sequence[str] = ()) -> LocalCA:
        """A signing CA under this one. Name constraints keep it to (or out of) the trust domain
        and out of the excluded DNS subtrees."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        end = min(start + dt.timedelta(days=days), self.cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(self.key_identifier, critical=False)
        )
        excluded = ([x509.UniformResourceIdentifier(d) for d in excluded_uri_domains]
                    + [x509.DNSName(d) for d in excluded_dns])
        permitted = ([x509.UniformResourceIdentifier(d) for d in permitted_uri_domains]
                     + [x509.DNSName(d) for d in permitted_dns]
                     + [x509.IPAddress(ipaddress.ip_network(c)) for c in permitted_ips])
        if permitted or excluded:
            builder = builder.add_extension(x509.NameConstraints(
                permitted_subtrees=permitted or None, excluded_subtrees=excluded or None), critical=True)
        return LocalCA(builder.sign(self.key, hashes.SHA256()), key)

    def sign(self, public_key, common_name: str, dns_names: Sequence[str] = (), uris: Sequence[str] = (),
             ips: Sequence[str] = (), ttl: dt.timedelta = dt.timedelta(hours=1), not_before: dt.datetime | None = None,
             client: bool = True, server: bool = True, serial: int | None = None) -> x509.Certificate:
        """A leaf for `public_key` (from a CSR, or a key made here), never outliving this CA."""
        start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
        end = min(start + ttl, self.cert.not_valid_after_utc)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dict.fromkeys(dns_names)]
        sans += [x509.UniformResourceIdentifier(u) for u in dict.fromkeys(uris)]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in dict.fromkeys(ips)]
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        rsa_key = isinstance(public_key, rsa.RSAPublicKey)
        # A CN that does not fit X.509's 64 characters is left out, never truncated (a cut name
        # can be another one); with no subject the SANs are the identity and marked critical.
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if 0 < len(common_name) <= 64 else []
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(serial or x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, rsa_key, False, False, False, False, False, False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(self.key_identifier, critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=not subject)
        return builder.sign(self.key, hashes.SHA256())

    def issue(self, common_name: str, dns_names: Sequence[str] = (), uris: Sequence[str] = (),
              ttl: dt.timedelta = dt.timedelta(hours=1), not_before: dt.datetime | None = None,
              client: bool = True, server: bool = True) -> Issued:
        """A leaf and its key, both made here (the local-CA source, tests)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self.sign(key.public_key(), common_name, dns_names, uris, ttl=ttl, not_before=not_before,
                         client=client, server=server)
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key), cert)
