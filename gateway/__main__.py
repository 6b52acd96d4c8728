"""`python -m gateway serve [--flag value ...]`: the gateway agent (every SDS_* setting of the
agent, plus SDS_GATEWAY_*, SDS_INJECTOR_CONFIG_FILE, SDS_CLAIMS_FILE...).
`python -m gateway bootstrap --agent-socket PATH [--admin-socket PATH]`: the gateway Envoy's
bootstrap (JSON), the same one the Helm chart renders."""
from __future__ import annotations

import argparse
import json
import sys


def _bootstrap(argv: list[str]) -> int:
    from .envoy import bootstrap  # lazy: not for `bootstrap`

    p = argparse.ArgumentParser(prog="python -m gateway bootstrap")
    p.add_argument("--agent-socket", required=True)
    p.add_argument("--admin-socket")
    p.add_argument("--admin-port", type=int)
    p.add_argument("--max-connections", type=int, default=50_000)
    a = p.parse_args(argv)
    print(json.dumps(bootstrap(a.agent_socket, a.admin_socket, a.admin_port, max_connections=a.max_connections),
                     indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bootstrap"]:
        return _bootstrap(argv[1:])
    if argv[:1] != ["serve"]:
        print("usage: python -m gateway serve [--source issuer|local-ca|files|vault] [--claims-file F] ...\n"
              "       python -m gateway bootstrap --agent-socket PATH [--admin-socket PATH]",
              file=sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    from sds_core.sds.run import run  # lazy: not for `bootstrap`

    from .run import GatewayAgent  # lazy: not for `bootstrap`
    from .settings import GatewaySettings  # lazy: not for `bootstrap`

    return run("gateway", "python -m gateway serve", GatewaySettings, GatewayAgent, argv[1:], fast_loop=True)

if __name__ == "__main__":
    sys.exit(main())
