"""`python -m sds_sidecar serve [--flag value ...]`: every setting is a flag (kebab-case) or an
SDS_* environment variable; flags win."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] != "serve":
        print("usage: python -m sds_sidecar serve [--socket-path PATH] [--source local-ca|files|vault]\n"
              "       [--certificates a,b] [--trust-bundles c] ... (see --help after 'serve')",
              file=sys.stderr if argv[:1] != ["--help"] else sys.stdout)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    from sds_core.sds.agent import Agent  # lazy: not for --help
    from sds_core.sds.settings import AgentSettings  # lazy: not for --help

    from sds_core.sds.run import run  # lazy: not for --help

    return run("sds_sidecar", "python -m sds_sidecar serve", AgentSettings, Agent, argv[1:])



if __name__ == "__main__":
    sys.exit(main())
