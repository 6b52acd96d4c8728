"""./scripts/demo.sh's flow (without the venv bootstrap, which the suite already did)."""
import subprocess
import sys
from pathlib import Path

import pytest

from devkit import harness

ROOT = Path(__file__).parent.parent


def run_demo(script: str) -> str:
    """Its output, after checking it succeeded and printed no key."""
    if harness.ENVOY is None:
        pytest.skip("envoy binary not found")
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / script)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PRIVATE KEY" not in run.stdout + run.stderr
    return run.stdout


def test_demo_runs_end_to_end_and_cleans_up():
    out = run_demo("demo.py")
    assert "Envoy presented ['retail-service-cert']" in out
    assert "new certificate at Envoy after" in out and "never restarted: True" in out
    assert "cleaned up: 2 processes" in out
    assert not harness.port_open(8443), "the demo left Envoy running"


def test_gateway_demo_runs_and_cleans_up():
    out = run_demo("demo_gateway.py")
    assert "hostname 'shop.example.com' belongs to shop/storefront" in out
    assert "rogue.example.com      -> certificate for ['rogue.example.com']" in out
    assert "unknown.example.com    -> no certificate" in out
    assert "served by the same Envoy: True" in out and "'hello shop'" in out
