"""python -m webhook serve | inject -f FILE|- | docs"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from pydantic import ValidationError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m webhook")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the admission webhook (flags: --port, --cert-file, --key-file, --config, "
                   "or WEBHOOK_* variables)", add_help=False)
    inj = sub.add_parser("inject", help="inject the pod templates of manifests (like istioctl kube-inject)")
    inj.add_argument("-f", "--filename", required=True, help="YAML file, or - for stdin")
    inj.add_argument("--namespace", help="namespace to decide for (default: each document's, else default)")
    inj.add_argument("--config", type=Path, help="injector configuration YAML")
    sub.add_parser("docs", help="print docs/annotations.md")
    args, rest = parser.parse_known_args(argv)

    if args.command == "docs":
        from .annotations import markdown

        sys.stdout.write(markdown())
        return 0
    if args.command == "inject":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        from .config import load_config
        from .manifests import InjectError, inject_text

        try:
            cfg = load_config(args.config)
            text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text()
            sys.stdout.write(inject_text(text, cfg, args.namespace, lambda m: print(m, file=sys.stderr)))
        except (InjectError, ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0

    from sds_sidecar import logs

    from .app import create_app
    from .config import ConfigStore, ServerSettings
    from .namespaces import NamespaceLabels
    from .server import serve

    try:
        settings = ServerSettings(_cli_parse_args=rest, _cli_prog_name="python -m webhook serve")
        store = ConfigStore(settings.config, on_error=lambda e: logging.getLogger("webhook").error(
            "configuration reload failed, previous kept: %s", e))
    except (ValidationError, ValueError) as e:
        print(f"webhook: invalid configuration:\n{e}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level)
    labels = NamespaceLabels() if store.get().namespace_policy.uses_labels else None
    try:
        import uvloop  # optional fast path

        uvloop.install()
    except ImportError:
        pass
    app = create_app(store, labels, settings.max_body_bytes, settings.benchmark_baseline)
    import gc

    # Everything loaded so far lives as long as the process: keep it out of the collector's
    # full passes, which otherwise stall admissions (seen as p99 spikes under load).
    gc.collect()
    gc.freeze()
    asyncio.run(serve(app, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
