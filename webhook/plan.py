"""Selection → injection plan: the containers, volumes and status annotation to add, checked
against the pod they go into (no name or port used twice)."""
from __future__ import annotations

import json
from dataclasses import dataclass

from sds_core.envoy.bootstrap import inbound_trust_names, pod_bootstrap
from sds_core.policy import annotations as ann
from sds_core.policy.config import AgentConfig, InjectorConfig, Resources
from sds_core.policy.selection import Denied, Selection
from sds_core.reasons import Reason
from sds_core.sds.settings import agent_env, agent_field_env, env_name

from . import istio
from .layout import (ADMIN_DIR, ADMIN_VOL, AGENT, CA_DIR, CA_VOL, FILES_DIR, FILES_VOL_PREFIX, ISSUER_CA_DIR,
                     ISSUER_CA_VOL, NO_SA_TOKEN_VOL, PROXY, SA_TOKEN_DIR, SECRET_FILE_MODE, SOCKET_VOL, TOKEN_DIR,
                     TOKEN_VOL)

@dataclass(frozen=True)
class Plan:
    containers: tuple[dict, ...]  # agent first: it must be up before Envoy asks
    volumes: tuple[dict, ...]
    native: bool
    status: str  # JSON for the status annotation

    def status_record(self) -> dict:
        return json.loads(self.status)


def _restricted(uid: int, gid: int) -> dict:
    return {
        "runAsNonRoot": True, "runAsUser": uid, "runAsGroup": gid,
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
    }


def _resources(base: Resources, cpu: str | None, memory: str | None) -> dict:
    """Per-pod annotations override both request and limit; "" unsets."""
    req = {"cpu": base.cpu_request, "memory": base.memory_request}
    lim = {"cpu": base.cpu_limit, "memory": base.memory_limit}
    for key, value in (("cpu", cpu), ("memory", memory)):
        if value is not None:
            req[key] = lim[key] = value or None
    out = {}
    if r := {k: v for k, v in req.items() if v}:
        out["requests"] = r
    if lim := {k: v for k, v in lim.items() if v}:
        out["limits"] = lim
    return out


def _field_env(name: str, path: str) -> dict:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


_PLANS: dict[tuple[Selection, str, str, bool, tuple[int, int]], Plan] = {}


def build(sel: Selection, cfg: InjectorConfig, mode: str, pod: dict) -> Plan:
    """The plan for `pod` (stripped of any earlier injection); raises Denied when the plan's
    names or ports collide with the pod's own. The plan itself depends only on the selection, the
    config and the mode (Istio's proxy present or not, and whether Istio's socket volume is
    already there): the pods of one Deployment share them, so a scale-up builds it once. Plans
    are never mutated (the patch copies)."""
    socket_volume = istio.has_socket_volume(pod)
    ids = istio.proxy_identity(pod, cfg.sidecar_group)
    key = (sel, cfg.revision, mode, socket_volume, ids)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= 1024:
            _PLANS.clear()
        plan = _PLANS[key] = _build_istio(sel, cfg, socket_volume, ids) if mode == "istio" else _build(sel, cfg)
    if not (pod.get("spec") or {}).get("containers"):
        # Only a container named like a sidecar can be stripped; if that was all the pod had,
        # the pod is not one the injector made.
        raise Denied(Reason.RESERVED_NAME, f"the pod's containers are named {AGENT!r}/{PROXY!r}, names reserved "
                     "for the sidecars; rename them", 400)
    _check_collisions(pod, plan, sel, cfg, mode)
    return plan


Parts = tuple[list[dict], list[dict], list[dict]]  # the agent's env, its mounts, the pod volumes


def _token_volume(audience: str) -> Parts:
    """A projected service-account token for the agent alone: audience-bound, 1 h, pod-bound."""
    return ([], [{"name": TOKEN_VOL, "mountPath": TOKEN_DIR, "readOnly": True}],
            [{"name": TOKEN_VOL, "projected": {"sources": [{"serviceAccountToken": {
                "audience": audience, "expirationSeconds": 3600, "path": "token"}}]}}])


def _issuer_parts(sel: Selection, a: AgentConfig) -> Parts:
    i = a.issuer
    _, mounts, volumes = _token_volume(i.token_audience)
    env = agent_env(issuer_address=i.address, issuer_ca_file=f"{ISSUER_CA_DIR}/ca.crt",
                    issuer_token_file=f"{TOKEN_DIR}/token", key_type=i.key_type)
    # The issuer's serving CA by reference (the issuer keeps the ConfigMap in the namespace; the
    # kubelet updates the file when it changes, and the agent re-reads it): never inline.
    mounts.append({"name": ISSUER_CA_VOL, "mountPath": ISSUER_CA_DIR, "readOnly": True})
    volumes.append({"name": ISSUER_CA_VOL, "configMap": {"name": i.ca_config_map,
                                                         "items": [{"key": "ca.crt", "path": "ca.crt"}]}})
    return env, mounts, volumes


def _local_ca_parts(sel: Selection, a: AgentConfig) -> Parts:
    env = agent_env(local_ca_cert_ttl_seconds=a.cert_ttl_seconds)
    if not a.local_ca_secret:
        return env, [], []
    env += agent_env(local_ca_cert_file=f"{CA_DIR}/tls.crt", local_ca_key_file=f"{CA_DIR}/tls.key")
    return (env, [{"name": CA_VOL, "mountPath": CA_DIR, "readOnly": True}],
            [{"name": CA_VOL, "secret": {"secretName": a.local_ca_secret, "defaultMode": SECRET_FILE_MODE}}])


def _files_parts(sel: Selection, a: AgentConfig) -> Parts:
    # One Kubernetes Secret per name, mounted as the files source expects (<root>/<name>/...);
    # the kubelet's atomic `..data` swap is what the agent watches for.
    mounts, volumes = [], []
    for i, name in enumerate(sel.certificates + sel.trust_bundles):
        vol = f"{FILES_VOL_PREFIX}{i}"
        mounts.append({"name": vol, "mountPath": f"{FILES_DIR}/{name}", "readOnly": True})
        volumes.append({"name": vol, "secret": {"secretName": name.lower(), "defaultMode": SECRET_FILE_MODE}})
    return agent_env(files_root=FILES_DIR), mounts, volumes


def _vault_parts(sel: Selection, a: AgentConfig) -> Parts:
    v = a.vault
    _, mounts, volumes = _token_volume(v.token_audience)
    env = agent_env(vault_addresses=v.addresses, vault_ca_cert=v.ca_cert, vault_auth_mount=v.auth_mount,
                    vault_role=v.role, vault_mode=v.mode, vault_kv_mount=v.kv_mount, vault_kv_path=v.kv_path,
                    vault_pki_path=v.pki_path, vault_pki_ttl=v.pki_ttl, vault_crl=v.crl,
                    vault_poll_seconds=v.poll_seconds, vault_ca_overlap_seconds=v.ca_overlap_seconds,
                    vault_token_file=f"{TOKEN_DIR}/token")
    return env, mounts, volumes


def _aws_parts(sel: Selection, a: AgentConfig) -> Parts:
    w = a.aws
    values = {"env": sel.env, "business_line": sel.business_line or "", "namespace": sel.namespace,
              "service_account": sel.service_account}
    settings = dict(aws_mode=w.mode, aws_regions=w.regions, aws_endpoint_urls=w.endpoint_urls,
                    aws_secret_id=w.secret_id, aws_poll_seconds=w.poll_seconds,
                    aws_pca_arn=w.pca_arn.format(**values), aws_pca_validity_days=w.pca_validity_days)
    env = agent_env(**{k: v for k, v in settings.items() if v not in ("", [])})  # unset: the agent's default
    if not w.role_arn:
        return env, [], []
    # IRSA for the agent alone: its own audience-bound token; the app container gets neither.
    _, mounts, volumes = _token_volume(w.token_audience)
    env += [{"name": "AWS_ROLE_ARN", "value": w.role_arn.format(**values)},
            {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": f"{TOKEN_DIR}/token"},
            {"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"}]
    return env, mounts, volumes


SOURCE_PARTS = {"issuer": _issuer_parts, "local-ca": _local_ca_parts, "files": _files_parts, "vault": _vault_parts,
                "aws": _aws_parts}


def _agent(sel: Selection, cfg: InjectorConfig, res: dict) -> tuple[dict, list[dict]]:
    a = cfg.agent
    env = [
        *agent_env(socket_path=f"{a.socket_dir}/sds.sock", socket_mode="0660", source=a.source,
                   certificates=sel.certificates,
                   trust_bundles=[*sel.trust_bundles, *inbound_trust_names(sel, cfg).values()]),
        agent_field_env("namespace", "metadata.namespace"),
        agent_field_env("pod_name", "metadata.name"),
        agent_field_env("service_account", "spec.serviceAccountName"),
        # http_host: loopback only; kubelet probes reach it through Envoy's status listener.
        *agent_env(service=sel.service, env=sel.env, business_line=sel.business_line or "",
                   trust_domain=a.trust_domain, cluster_domain=a.cluster_domain, http_host="127.0.0.1",
                   http_port=a.http_port),
    ]
    if a.ocsp_stapling or sel.ocsp_staple_policy != "LENIENT_STAPLING":
        env += agent_env(ocsp_stapling=True)
    src_env, src_mounts, volumes = SOURCE_PARTS[a.source](sel, a)
    container = {
        "name": AGENT,
        "image": cfg.images.agent,
        "imagePullPolicy": cfg.images.pull_policy,
        "command": ["python", "-m", "sds_sidecar", "serve"],
        "env": env + src_env,
        "volumeMounts": [{"name": SOCKET_VOL, "mountPath": a.socket_dir}, *src_mounts, dict(_NO_SA_TOKEN_MOUNT)],
        "resources": _resources(a.resources, res.get("agent-cpu"), res.get("agent-memory")),
        "securityContext": _restricted(65532, cfg.sidecar_group),
        "readinessProbe": {"httpGet": {"path": AGENT_READY_PATH, "port": cfg.proxy.status_port}, "periodSeconds": 5},
    }
    return container, volumes


_NO_SA_TOKEN_MOUNT = {"name": NO_SA_TOKEN_VOL, "mountPath": SA_TOKEN_DIR, "readOnly": True}
AGENT_READY_PATH = "/sds-agent/readyz"


def _proxy(sel: Selection, cfg: InjectorConfig, res: dict) -> dict:
    p = cfg.proxy
    bootstrap = json.dumps(pod_bootstrap(sel, cfg, f"{ADMIN_DIR}/admin.sock", AGENT_READY_PATH),
                           separators=(",", ":"))
    ports = [{"name": "sds-status", "containerPort": p.status_port, "protocol": "TCP"}]
    ports += [{"name": f"tls-{t}", "containerPort": t, "protocol": "TCP"} for t, _ in sel.inbound]
    return {
        "name": PROXY,
        "image": cfg.images.envoy,
        "imagePullPolicy": cfg.images.pull_policy,
        "command": ["envoy"],
        "args": ["--config-yaml", bootstrap, "--disable-hot-restart", "--concurrency", str(p.concurrency),
                 "--service-cluster", sel.service, "--service-node", "$(POD_NAME).$(POD_NAMESPACE)",
                 "--log-level", p.log_level, "--drain-strategy", "immediate"],
        "env": [_field_env("POD_NAME", "metadata.name"), _field_env("POD_NAMESPACE", "metadata.namespace")],
        "ports": ports,
        "volumeMounts": [{"name": SOCKET_VOL, "mountPath": cfg.agent.socket_dir},
                         {"name": ADMIN_VOL, "mountPath": ADMIN_DIR}, dict(_NO_SA_TOKEN_MOUNT)],
        "resources": _resources(p.resources, res.get("proxy-cpu"), res.get("proxy-memory")),
        "securityContext": _restricted(p.uid, cfg.sidecar_group),
        "readinessProbe": {"httpGet": {"path": "/ready", "port": p.status_port}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/ready", "port": p.status_port}, "periodSeconds": 10,
                          "failureThreshold": 6},
    }


def _build(sel: Selection, cfg: InjectorConfig) -> Plan:
    res = dict(sel.resources)
    agent, source_volumes = _agent(sel, cfg, res)
    proxy = _proxy(sel, cfg, res)
    volumes = [{"name": v, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
               for v in (SOCKET_VOL, ADMIN_VOL, NO_SA_TOKEN_VOL)] + source_volumes
    if cfg.native_sidecars:
        # Init containers with restartPolicy Always, started in order. The agent needs no
        # startup probe (Envoy retries its socket every 50-250 ms); Envoy's waits for /ready,
        # which holds until its secrets arrived, so the app starts with TLS ready and Jobs end.
        agent["restartPolicy"] = proxy["restartPolicy"] = "Always"
        proxy["startupProbe"] = {"httpGet": {"path": "/ready", "port": cfg.proxy.status_port}, "periodSeconds": 1,
                                 "failureThreshold": 120}
    status = json.dumps({
        "revision": cfg.revision,
        ("initContainers" if cfg.native_sidecars else "containers"): [AGENT, PROXY],
        "volumes": [v["name"] for v in volumes],
        "certificates": list(sel.certificates),
        "trustBundles": list(sel.trust_bundles),
    }, separators=(",", ":"))
    return Plan((agent, proxy), tuple(volumes), cfg.native_sidecars, status)


def _build_istio(sel: Selection, cfg: InjectorConfig, socket_volume_present: bool,
                 proxy_ids: tuple[int, int]) -> Plan:
    """Only the agent, serving the selected certificate as `default` and trust bundle as `ROOTCA`
    on Istio's socket path; Istio's proxy does TLS. Always a native sidecar placed first: the
    socket must exist when istio-proxy starts, or it falls back to istiod's certificates."""
    if len(sel.certificates) != 1 or len(sel.trust_bundles) != 1:
        raise Denied(Reason.ISTIO_NAMES, f"Istio's proxy asks for one workload certificate ({istio.CERTIFICATE!r}) and "
                     f"one trust bundle ({istio.TRUST_BUNDLE!r}); this pod selects certificates "
                     f"{list(sel.certificates)} and trust bundles {list(sel.trust_bundles)}", 400)
    agent, source_volumes = _agent(sel, cfg, dict(sel.resources))
    serve_as = {sel.certificates[0]: istio.CERTIFICATE, sel.trust_bundles[0]: istio.TRUST_BUNDLE}
    replaced = {env_name("socket_path"): f"{istio.SOCKET_DIR}/socket", env_name("http_port"): str(istio.AGENT_HTTP_PORT)}
    agent["env"] = [{**e, "value": replaced[e["name"]]} if e["name"] in replaced else e for e in agent["env"]]
    agent["env"] += agent_env(serve_as=serve_as)
    agent["volumeMounts"] = [{"name": istio.SOCKET_VOL, "mountPath": istio.SOCKET_DIR},
                             *[m for m in agent["volumeMounts"] if m["name"] != SOCKET_VOL]]
    agent["securityContext"] = _restricted(*proxy_ids)
    agent["restartPolicy"] = "Always"
    del agent["readinessProbe"]  # it went through our Envoy; here the socket is what matters
    agent["startupProbe"] = {"exec": {"command": ["python", "-c", "import os,sys; sys.exit(not os.path.exists("
                                                  f"'{istio.SOCKET_DIR}/socket'))"]},
                             "periodSeconds": 1, "failureThreshold": 60}
    ours = [{"name": NO_SA_TOKEN_VOL, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}] + source_volumes
    shared = [] if socket_volume_present else [{"name": istio.SOCKET_VOL, "emptyDir": {"medium": "Memory"}}]
    status = json.dumps({
        "revision": cfg.revision, "mode": "istio", "initContainers": [AGENT],
        # Istio's socket volume is not listed: stripping this injection must leave it to Istio.
        "volumes": [v["name"] for v in ours],
        "certificates": list(sel.certificates), "trustBundles": list(sel.trust_bundles),
    }, separators=(",", ":"))
    return Plan((agent,), tuple(ours + shared), True, status)


def _check_collisions(pod: dict, plan: Plan, sel: Selection, cfg: InjectorConfig, mode: str = "envoy") -> None:
    spec = pod.get("spec") or {}
    existing = [c for key in ("containers", "initContainers") for c in spec.get(key) or []]
    names = {c.get("name") for c in existing}
    clash = [c["name"] for c in plan.containers if c["name"] in names]
    clash += [v["name"] for v in plan.volumes if v["name"] in {v.get("name") for v in spec.get("volumes") or []}]
    if clash:
        raise Denied(Reason.NAME_COLLISION, f"the pod already has {clash}, names the injector needs; rename them "
                     "or opt the pod out", 400)
    declared = {p.get("containerPort") for c in existing for p in c.get("ports") or []}
    if mode == "istio":
        if istio.AGENT_HTTP_PORT in declared:
            raise Denied(Reason.PORT_COLLISION, f"port {istio.AGENT_HTTP_PORT} is declared by a container of the pod and "
                         "used by the SDS agent's health port in Istio mode; change the container's port", 400)
        return
    _check_ports(sel, cfg, declared)


def _check_ports(sel: Selection, cfg: InjectorConfig, declared: set) -> None:
    """Every port a sidecar listens on is used once, and never one the sidecars reserve; the
    denial names both users of the port and the setting that changes it."""
    a = ann.PREFIX
    users: dict[int, str] = {cfg.proxy.status_port: "the Envoy status port (proxy.statusPort in the injector "
                                                    "configuration)",
                             cfg.agent.http_port: "the SDS agent's health port (agent.httpPort in the injector "
                                                  "configuration)"}

    def claim(port: int, who: str) -> None:
        if port in users:
            raise Denied(Reason.PORT_COLLISION, f"port {port} is used twice: by {users[port]} and by {who}; change "
                         "one of them", 400)
        users[port] = who

    for tls, _ in sel.inbound:
        claim(tls, f"the TLS port {tls} of annotation {a}inbound")
    for local, host, port, _ in sel.outbound:
        claim(local, f"the local port {local} of annotation {a}outbound ({host}:{port})")
    for tls, app in sel.inbound:
        if app in users:
            raise Denied(Reason.PORT_COLLISION, f"annotation {a}inbound sends TLS port {tls} to port {app}, which is "
                         f"{users[app]}, not the app; name the app's port", 400)
    for port in sorted(p for p in declared if p in users):
        raise Denied(Reason.PORT_COLLISION, f"port {port} is declared by a container of the pod and used by "
                     f"{users[port]}; change one of them", 400)
