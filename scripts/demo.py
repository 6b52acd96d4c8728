"""Demo: the SDS agent on its embedded local CA feeds a real Envoy; a TLS request shows the
served certificate; a forced rotation (SIGHUP) reaches Envoy with no restart. Every process
started here is stopped on the way out."""
from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography import x509  # noqa: E402

from sds_sidecar.ca import LocalCA  # noqa: E402
from tests import envoy_configs, harness  # noqa: E402


def describe(cert: x509.Certificate) -> str:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return (f"serial={cert.serial_number:x} subject={cert.subject.rfc4514_string()} "
            f"spiffe={uris[0] if uris else '-'} expires={cert.not_valid_after_utc:%H:%M:%S}Z")


def main() -> int:
    procs: list[harness.Proc] = []
    with tempfile.TemporaryDirectory(prefix="sds-demo-") as tmp:
        work = Path(tmp)
        try:
            ca = LocalCA.generate("sds-injector demo CA")
            ca.save(work / "ca.crt", work / "ca.key")  # the demo asks for its CA on disk (0600)
            agent = harness.Agent(work, "agent", source="local-ca", certificates="demo-cert",
                                  trust_bundles="demo-trust", namespace="demo", service_account="web",
                                  service="web", dns_names="localhost", local_ca_cert_file=str(work / "ca.crt"),
                                  local_ca_key_file=str(work / "ca.key"), local_ca_cert_ttl_seconds=3600)
            procs.append(agent.start())
            print(f"1. SDS agent started (pid {agent.p.pid}) on {agent.socket}, source: embedded local CA")
            port = harness.free_port()
            envoy = harness.Envoy(work, envoy_configs.tls_server(agent.socket, port, "demo-cert"))
            procs.append(envoy.start())
            envoy.wait_live()
            print(f"2. Envoy {envoy.p.pid} is LIVE: its TLS listener 127.0.0.1:{port} got 'demo-cert' over SDS")
            cert, body = harness.tls_get(port, ca.cert_pem)
            print(f"3. TLS request -> {body.splitlines()[0]!r}, body {body.splitlines()[-1]!r}")
            print(f"   certificate served: {describe(cert)}")
            t0 = time.monotonic()
            os.kill(agent.p.pid, signal.SIGHUP)
            new = harness.wait_for(
                lambda: (c := harness.tls_get(port, ca.cert_pem)[0]).serial_number != cert.serial_number and c,
                timeout=10, interval=0.01, what="rotation")
            print(f"4. rotation forced (SIGHUP to the agent); new certificate at Envoy after "
                  f"{1000 * (time.monotonic() - t0):.0f} ms")
            print(f"   certificate served: {describe(new)}")
            alive = envoy.p.poll() is None and envoy.stat("server.hot_restart_epoch") == 0
            print(f"5. Envoy pid {envoy.p.pid} still running, never restarted: {alive}")
            ready = agent.status()[1]
            print(f"6. agent /readyz: ready={ready['ready']} degraded={ready['degraded']}")
            return 0 if alive else 1
        finally:
            for p in reversed(procs):
                p.stop()
            print(f"cleaned up: {len(procs)} processes stopped")


if __name__ == "__main__":
    sys.exit(main())
