"""./scripts/demo.sh's flow (without the venv bootstrap, which the suite already did)."""
import subprocess
import sys
from pathlib import Path

import pytest

from devkit import harness

ROOT = Path(__file__).parent.parent


def test_demo_runs_end_to_end_and_cleans_up():
    if harness.ENVOY is None:
        pytest.skip("envoy binary not found")
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "Envoy presented ['retail-service-cert']" in out
    assert "new certificate at Envoy after" in out and "never restarted: True" in out
    assert "cleaned up: 2 processes" in out
    assert "PRIVATE KEY" not in out + run.stderr
    assert not harness.port_open(8443), "the demo left Envoy running"


def test_gateway_demo_runs_and_cleans_up():
    if harness.ENVOY is None:
        pytest.skip("envoy binary not found")
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo_gateway.py")], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "hostname 'shop.example.com' belongs to shop/storefront" in out
    assert "rogue.example.com      -> certificate for ['rogue.example.com']" in out
    assert "unknown.example.com    -> no certificate" in out
    assert "served by the same Envoy: True" in out and "'hello shop'" in out
    assert "PRIVATE KEY" not in out + run.stderr
