"""`python -m webhook ca rotate`: start a rotation now, in the CA Secret (self mode). Each named
environment's CA (or every CA, with --root after a new root is made) gets a *next* CA: it joins
the trust bundles at once, signs after the propagation delay, and the old one stays trusted for
the overlap, exactly as the issuers' clock-driven rotation does near expiry (docs/issuer.md "CA
rotation"). Pods trust intermediates, never the root: a root rotation is a rotation of every
intermediate under a new root, and no pod is re-created."""
from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from typing import Any

from sds_core.pki.ca import LocalCA

from .authority import Authority, Layout


def add_parser(sub) -> None:
    ca = sub.add_parser("ca", help="operate the issuer's self-made CAs")
    actions = ca.add_subparsers(dest="action", required=True)
    rot = actions.add_parser("rotate", help="start a rotation now (next CA into the bundles, signing after the "
                             "propagation delay, old CA trusted for the overlap)")
    which = rot.add_mutually_exclusive_group(required=True)
    which.add_argument("--ca", action="append", metavar="NAME", help="a signing CA: prod, prod-edge, prod--retail "
                       "(repeatable)")
    which.add_argument("--all", action="store_true", help="every signing CA")
    which.add_argument("--root", action="store_true", help="a new root, and every signing CA under it")
    rot.add_argument("--config", type=Path, help="the injector configuration (name constraints of new CAs)")
    rot.add_argument("--namespace", default="sds-system", help="the release namespace")
    rot.add_argument("--secret", default="sds-injector-ca", help="the CA Secret")
    rot.add_argument("--pod-cidrs", default="[]", help="as the issuer's pod_cidrs (JSON list)")
    rot.add_argument("--lifetime-days", type=float, default=365)
    rot.add_argument("--kubeconfig", type=Path)


def run(args: argparse.Namespace) -> int:
    from sds_core.kube.client import api_command  # lazy: heavy, API callers only

    return api_command(lambda: _rotate(args))


def _rotate(args: argparse.Namespace) -> str:
    from kubernetes import client  # lazy: heavy, API callers only

    from sds_core.kube.client import api_client  # lazy: heavy, API callers only
    from sds_core.policy.config import load_config  # lazy: per subcommand

    cfg = load_config(args.config)
    layout = Layout(tuple(cfg.environments), cfg.agent.trust_domain, cfg.agent.cluster_domain,
                    tuple(cfg.business_lines) if cfg.business_line_cas else (), tuple(json.loads(args.pod_cidrs)))
    core = client.CoreV1Api(api_client(args.kubeconfig))
    resp: Any = core.read_namespaced_secret(args.secret, args.namespace, _preload_content=False, _request_timeout=10)
    secret = json.loads(resp.data)
    auth = Authority.from_secret_data(secret.get("data") or {})
    names = list(auth.envs) if (args.all or args.root) else args.ca
    unknown = [n for n in names if n not in auth.envs]
    busy = [n for n in names if n in auth.nexts]
    if unknown or busy:
        raise ValueError(f"unknown CAs {unknown} (the Secret holds {sorted(auth.envs)})" if unknown else
                         f"a rotation of {busy} is under way: wait until its next CA signs")
    if args.root:
        auth.root = LocalCA.generate("sds-injector root CA", days=3650)
    at = dt.datetime.now(dt.UTC)
    for name in names:
        auth.nexts[name] = (layout.intermediate(auth.root, name, args.lifetime_days), at)
    secret["data"] = auth.to_secret_data()  # with metadata.resourceVersion: a concurrent change fails
    core.replace_namespaced_secret(args.secret, args.namespace, secret, _request_timeout=10)
    return (f"rotation started for {names}{' under a new root' if args.root else ''}: the next CAs are in the trust "
            "bundles now (agents re-read them), sign after the issuers' propagation delay, and the old ones stay "
            "trusted for the overlap")
