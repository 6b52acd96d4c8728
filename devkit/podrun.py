"""Runs an injected pod's sidecars as local processes, from the injected spec itself: each
container's exact command, args and env (with the downward API and kubelet's $(VAR) expansion
resolved), its volumes mapped to temporary directories, its startup probes honoured in order.
Only the app container is replaced, by a small local HTTP server."""
from __future__ import annotations

import json
import re
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonpatch
import yaml
from cryptography import x509

from sds_core.policy.config import InjectorConfig, load_config
from webhook.injector import decide

from . import harness

ROOT = Path(__file__).resolve().parent.parent

SIDECARS = ("sds-agent", "sds-envoy")


def _field(pod: dict, path: str) -> str:
    node = pod
    for part in path.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, str) else ""


class App:
    """The app container's stand-in: answers with its name and the peer identity Envoy forwarded."""

    def __init__(self, name: str, port: int):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = json.dumps({"app": name, "path": self.path,
                                   "xfcc": self.headers.get("x-forwarded-client-cert", "")}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class LocalPod:
    def __init__(self, pod: dict, workdir: Path, secrets: dict[str, dict[str, bytes]] | None = None,
                 name: str | None = None, tokens: dict[str, str] | None = None,
                 dns: dict[str, str] | None = None, configmaps: dict[str, dict[str, bytes]] | None = None):
        """`tokens`: projected service-account tokens by audience, as the kubelet writes them.
        `dns`: the cluster's DNS as this pod sees it (hostname -> address): Envoy's outbound
        endpoints are resolved through it, while SNI and peer verification keep the hostname,
        exactly as when a name resolves (or is redirected) to that address."""
        self.tokens = tokens or {}
        self.dns = dns or {}
        self.pod = pod
        self.name = name or pod["metadata"].get("name") or pod["metadata"].get("generateName", "pod")
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True)
        self.secrets = secrets or {}
        self.configmaps = configmaps or {}  # name -> key -> content, as the namespace holds them
        self.volumes = self._map_volumes()
        self.procs: list[harness.Proc] = []
        self.apps: list[App] = []

    def _map_volumes(self) -> dict[str, Path]:
        out = {}
        for vol in self.pod["spec"].get("volumes", []):
            d = self.workdir / "volumes" / vol["name"]
            d.mkdir(parents=True)
            if "secret" in vol:
                for fname, data in self.secrets.get(vol["secret"]["secretName"], {}).items():
                    (d / fname).write_bytes(data)
            if "configMap" in vol:
                data = self.configmaps.get(vol["configMap"]["name"], {})
                for item in vol["configMap"].get("items") or [{"key": k, "path": k} for k in data]:
                    if item["key"] in data:
                        (d / item["path"]).write_bytes(data[item["key"]])
            if "projected" in vol:
                for src in vol["projected"]["sources"]:
                    if "serviceAccountToken" in src:
                        sat = src["serviceAccountToken"]
                        (d / sat["path"]).write_text(self.tokens.get(sat.get("audience", ""), "local-run-token"))
            out[vol["name"]] = d
        return out

    def containers(self) -> list[dict]:
        spec = self.pod["spec"]
        return [c for c in spec.get("initContainers", []) + spec.get("containers", []) if c["name"] in SIDECARS]

    def _env(self, c: dict) -> dict[str, str]:
        env = {}
        for e in c.get("env", []):
            if "valueFrom" in e:
                env[e["name"]] = _field(self.pod, e["valueFrom"]["fieldRef"]["fieldPath"])
            else:
                env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e.get("value", ""))
        return env

    def _localise(self, text: str, mounts: list[dict]) -> str:
        for m in sorted(mounts, key=lambda m: -len(m["mountPath"])):
            text = text.replace(m["mountPath"], str(self.volumes[m["name"]]))
        return text

    def command_of(self, c: dict) -> tuple[list[str], dict[str, str]]:
        env = self._env(c)
        mounts = c.get("volumeMounts", [])
        argv = list(c.get("command", [])) + list(c.get("args", []))
        # kubelet expands $(VAR) in command and args from the container's env.
        argv = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in argv]
        argv = [self._localise(a, mounts) for a in argv]
        if c["name"] == "sds-envoy" and self.dns:
            i = argv.index("--config-yaml") + 1
            argv[i] = self._resolve(argv[i])
        env = {k: self._localise(v, mounts) for k, v in env.items()}
        exe = {"python": sys.executable, "envoy": harness.ENVOY}
        argv[0] = exe.get(argv[0], argv[0])
        return argv, env

    def _resolve(self, bootstrap: str) -> str:
        boot = json.loads(bootstrap)
        for cluster in boot["static_resources"]["clusters"]:
            for group in cluster.get("load_assignment", {}).get("endpoints", []):
                for ep in group["lb_endpoints"]:
                    sock = ep["endpoint"]["address"].get("socket_address")
                    if sock and sock["address"] in self.dns:
                        sock["address"] = self.dns[sock["address"]]
        return json.dumps(boot)

    def start(self, app_ports: list[int], timeout: float = 30) -> LocalPod:
        import os

        for port in app_ports:
            self.apps.append(App(self.name, port))
        for c in self.containers():
            argv, env = self.command_of(c)
            proc = harness.Proc(argv, self.workdir / f"{c['name']}.log", {**os.environ, **env}).start()
            self.procs.append(proc)
            # As the kubelet does: the next (init) container starts once this one's startup
            # probe passed, or at once when it has none.
            if c.get("startupProbe"):
                self.wait_probe(c, c["startupProbe"], proc, timeout)
        for c, proc in zip(self.containers(), self.procs, strict=True):
            if c.get("readinessProbe"):
                self.wait_probe(c, c["readinessProbe"], proc, timeout)
        return self

    def wait_probe(self, c: dict, probe: dict, proc: harness.Proc, timeout: float) -> None:
        get = probe["httpGet"]
        url = f"http://127.0.0.1:{get['port']}{get['path']}"

        def ok():
            if proc.p.poll() is not None:
                raise RuntimeError(f"{c['name']} exited {proc.p.returncode}: {proc.output()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False
        harness.wait_for(ok, timeout, what=f"{self.name}/{c['name']} probe {url}")

    def log_events(self, container: str = "sds-agent") -> list[dict]:
        out = []
        for line in (self.workdir / f"{container}.log").read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        for a in self.apps:
            a.stop()


# Example pods injected for local runs (the demo, the local end-to-end test).
_EXAMPLE = load_config(ROOT / "examples" / "config.yaml")
# Local runs (this test, the demo) use the embedded local CA, shared through a mounted Secret:
# fine on one machine, never in a cluster (that is the issuer's job, tests/test_issuer_pods.py).
CONFIG = InjectorConfig.model_validate({
    **_EXAMPLE.model_dump(by_alias=True),
    "agent": {**_EXAMPLE.agent.model_dump(by_alias=True), "source": "local-ca", "localCASecret": "sds-injector-local-ca"},
})
# Pod B shares the loopback with pod A here, so its sidecars listen on other ports.
CONFIG_B = InjectorConfig.model_validate({
    **CONFIG.model_dump(by_alias=True),
    "proxy": {**CONFIG.proxy.model_dump(by_alias=True), "statusPort": 16021},
    "agent": {**CONFIG.agent.model_dump(by_alias=True), "httpPort": 16090},
})


def pod_from(example: str, name: str, cfg: InjectorConfig, annotations: dict | None = None) -> dict:
    dep = yaml.safe_load((ROOT / "examples" / example).read_text())
    tmpl = dep["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {**tmpl["metadata"], "name": name, "namespace": dep["metadata"]["namespace"]},
           "spec": tmpl["spec"]}
    pod["metadata"]["annotations"] = {**pod["metadata"]["annotations"], **(annotations or {})}
    out = decide(pod, pod["metadata"]["namespace"], cfg)
    assert out.result == "injected", out.message
    return jsonpatch.apply_patch(pod, out.patch)


def spiffe_of(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)
