"""Start an SDS agent program (the per-pod agent, the gateway agent) from its settings: parse,
build, run until SIGTERM."""
from __future__ import annotations

import asyncio
import sys

from .fields import SettingsError


def run(name: str, prog: str, settings_class, make_agent, args: list[str], fast_loop: bool = False) -> int:
    """Parse the settings, build the agent and run it until SIGTERM; every failure to start is a
    one-line message and exit status 2 (the agent and the gateway agent share this). `fast_loop`:
    uvloop when installed, for the gateway's 10,000 tenants; the per-pod agent's loop is idle
    between renewals, and uvloop would cost each of 5,000 pods 0.75 MB private, 2.3 MB RSS."""
    from sds_core import logs  # lazy: after the settings parse

    try:
        settings = settings_class.load(args, prog=prog)
    except SettingsError as e:
        print(f"{name}: invalid configuration:\n{e}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level)
    if fast_loop:
        try:
            import uvloop  # lazy: optional fast path

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
