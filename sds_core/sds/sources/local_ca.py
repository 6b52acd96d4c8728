"""The embedded default source: a CA in the agent's memory (or loaded from files the user gave)."""
from __future__ import annotations

import datetime as dt

from sds_core.sds import material
from sds_core.pki.ca import LocalCA
from ..settings import AgentSettings
from .base import SecretSpec, Source


class LocalCASource(Source):
    label = "local-ca"

    def __init__(self, settings: AgentSettings, ca: LocalCA | None = None):
        self.settings = settings
        if ca is None and settings.local_ca_cert_file is not None and settings.local_ca_key_file is not None:
            ca = LocalCA.load(settings.local_ca_cert_file, settings.local_ca_key_file)
        self.ca = ca or LocalCA.generate()

    def issues(self, spec: SecretSpec) -> bool:
        return spec.kind == material.TLS_CERTIFICATE

    async def fetch(self, spec: SecretSpec) -> material.SecretMaterial:
        if spec.kind == material.VALIDATION_CONTEXT:
            return material.validation_context(self.ca.cert_pem)
        s = self.settings
        if spec.identity is not None:  # the gateway's own SPIFFE ID, to reach tenants' pods
            issued = self.ca.issue("", dns_names=[], uris=[s.spiffe_id],
                                   ttl=dt.timedelta(seconds=s.local_ca_cert_ttl_seconds))
            return material.tls_certificate(issued.chain_pem, issued.key_pem)
        if spec.tenant is not None:  # a gateway tenant: exactly its hostnames
            issued = self.ca.issue(spec.tenant.hostnames[0], dns_names=list(spec.tenant.hostnames), uris=[],
                                   ttl=dt.timedelta(seconds=s.local_ca_cert_ttl_seconds))
            return material.tls_certificate(issued.chain_pem, issued.key_pem)
        issued = self.ca.issue(
            s.service or spec.name,
            dns_names=s.dns_sans(),
            uris=[s.spiffe_id],
            ttl=dt.timedelta(seconds=s.local_ca_cert_ttl_seconds),
        )
        return material.tls_certificate(issued.chain_pem, issued.key_pem)
