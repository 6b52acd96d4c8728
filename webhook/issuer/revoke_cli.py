"""`python -m webhook revoke`: write a revocation record (an immutable, labelled ConfigMap in the
issuer's namespace) that every issuer replica's OCSP responder then answers `revoked` for.
Whoever may create ConfigMaps in that namespace may revoke: RBAC decides, not this tool."""
from __future__ import annotations

from typing import Any

import argparse
import datetime as dt
import secrets
import sys
from pathlib import Path

from .revocations import LABEL, REASONS, Revocation


def add_parser(sub) -> None:
    p = sub.add_parser("revoke", help="revoke certificates by serial, pod, or namespace/service account")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--serial", help="hex serial (as the audit and `openssl x509 -serial` print it)")
    what.add_argument("--pod", metavar="NAMESPACE/NAME", help="every certificate issued to this pod so far")
    what.add_argument("--namespace", help="every certificate issued in this namespace so far (with "
                      "--service-account: to that account only)")
    p.add_argument("--service-account", help="with --namespace")
    p.add_argument("--reason", choices=REASONS, default="unspecified")
    p.add_argument("--issuer-namespace", default="sds-system", help="the release namespace, where records live")
    p.add_argument("--kubeconfig", type=Path, help="default: KUBECONFIG or in-cluster credentials")


def run(args: argparse.Namespace) -> int:
    from sds_core.kube.client import api_command  # lazy: heavy, API callers only

    if args.service_account and not args.namespace:
        print("error: --service-account goes with --namespace", file=sys.stderr)
        return 2
    return api_command(lambda: _revoke(args))


def _revoke(args: argparse.Namespace) -> str:
    from kubernetes import client  # lazy: heavy, API callers only

    from sds_core.kube.client import api_client  # lazy: heavy, API callers only

    core = client.CoreV1Api(api_client(args.kubeconfig))
    record = _record(core, args)
    # A dict is sent as it is (the client's typed stubs, from kubernetes 37, ask for the model).
    body: Any = {"metadata": {"name": record.name, "labels": {LABEL: "true"},
                         "annotations": {"sds-injector.io/revoked-by": "python -m webhook revoke"}},
            "immutable": True, "data": record.to_data()}
    core.create_namespaced_config_map(args.issuer_namespace, body)
    return (f"revoked: configmap {args.issuer_namespace}/{record.name} {record.to_data()}\n"
            "OCSP answers `revoked` from the issuer's next watch event (seconds); stapling agents renew at their "
            "next OCSP poll")


def _record(core, args: argparse.Namespace) -> Revocation:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    name = f"revocation-{now:%Y%m%d%H%M%S}-{secrets.token_hex(3)}"
    if args.serial:
        serial = args.serial.lower().removeprefix("0x").replace(":", "").lstrip("0")
        if not serial or any(c not in "0123456789abcdef" for c in serial):
            raise ValueError(f"--serial {args.serial!r} is not a hex serial")
        return Revocation(name, now, args.reason, serial=serial)
    if args.pod:
        namespace, _, pod = args.pod.partition("/")
        if not namespace or not pod:
            raise ValueError("--pod takes NAMESPACE/NAME")
        obj = core.read_namespaced_pod(pod, namespace)
        return Revocation(name, now, args.reason, namespace=namespace, service_account=obj.spec.service_account_name
                          or "default", pod_uid=obj.metadata.uid, pod=pod)
    return Revocation(name, now, args.reason, namespace=args.namespace, service_account=args.service_account or "")
