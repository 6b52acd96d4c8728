"""`python -m sds_sidecar serve [--flag value ...]`: every setting is a flag (kebab-case) or an
SDS_* environment variable; flags win."""
from __future__ import annotations

import asyncio
import sys

from pydantic import ValidationError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] != "serve":
        print("usage: python -m sds_sidecar serve [--socket-path PATH] [--source local-ca|files|vault]\n"
              "       [--certificates a,b] [--trust-bundles c] ... (see --help after 'serve')",
              file=sys.stderr if argv[:1] != ["--help"] else sys.stdout)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    from .agent import Agent
    from .settings import AgentSettings

    return run("sds_sidecar", "python -m sds_sidecar serve", AgentSettings, Agent, argv[1:])


def run(name: str, prog: str, settings_class, make_agent, args: list[str]) -> int:
    """Parse the settings, build the agent and run it until SIGTERM; every failure to start is a
    one-line message and exit status 2 (the agent and the gateway agent share this)."""
    from . import logs
    from .settings import describe_errors

    try:
        settings = settings_class(_cli_parse_args=args, _cli_prog_name=prog)
    except ValidationError as e:
        print(f"{name}: invalid configuration:\n{describe_errors(e)}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level)
    try:
        import uvloop  # optional fast path

        uvloop.install()
    except ImportError:
        pass
    try:
        agent = make_agent(settings)
    except (ValueError, OSError) as e:  # e.g. an unreadable local CA file, an unavailable source
        print(f"{name}: cannot start: {e}", file=sys.stderr)
        return 2
    try:
        asyncio.run(agent.run_until_signalled())
    except ValueError as e:  # found while starting (a busy port); everything started was stopped
        print(f"{name}: cannot start: {e}", file=sys.stderr)
        return 2
    return 0

if __name__ == "__main__":
    sys.exit(main())
