"""python -m webhook serve | issuer | inject -f FILE|- | audit verify|keygen | revoke | ca rotate | docs | chart-schema"""
from __future__ import annotations

import argparse
import json
import asyncio
import logging
import sys
from pathlib import Path

from pydantic import ValidationError


def _describe(e: Exception) -> str:
    """A configuration error as lines of `field: what is wrong`, never the value given (it may be
    a token)."""
    if not isinstance(e, ValidationError):
        return f"  {e}"
    lines = []
    for err in e.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in err.get("loc", ())) or "settings"
        lines.append(f"  {where}: {err.get('msg')}")
    return "\n".join(lines)


def _fast_loop() -> None:
    try:
        import uvloop  # lazy: optional fast path

        uvloop.install()
    except ImportError:
        pass


def _inject(args, parser, rest) -> int:
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from sds_core.policy.config import load_config  # lazy: per subcommand
    from .manifests import InjectError, inject_text  # lazy: per subcommand

    try:
        cfg = load_config(args.config)
        if args.filename == "-":
            text = sys.stdin.read()
        else:
            with open(args.filename, newline="", encoding="utf-8") as f:  # untouched documents keep their \r\n
                text = f.read()
        out = inject_text(text, cfg, args.namespace, lambda m: print(m, file=sys.stderr))
        # As read: no newline translation; YAML is UTF-8 whatever the locale says.
        with open(sys.stdout.fileno(), "w", newline="", encoding="utf-8", closefd=False) as stdout:
            stdout.write(out)
    except (InjectError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _issuer_settings(rest: list[str]):
    from .issuer.settings import IssuerSettings  # lazy: per subcommand

    return IssuerSettings(_cli_parse_args=rest, _cli_prog_name="python -m webhook issuer")


def _issuer_sockets(settings) -> tuple:
    """The issuer's port and its operations port, bound up front: a busy port is a clean exit."""
    from sds_core.listen import bind_tcp  # lazy: per subcommand

    main = bind_tcp(settings.host, settings.port, "issuer port")
    ops = bind_tcp(settings.host, settings.ops_port, "issuer operations port") if settings.ops_port else None
    return main, ops


def _run_issuer(rest: list[str]) -> int:
    from sds_core import logs  # lazy: per subcommand

    from sds_core.policy.config import ConfigStore  # lazy: per subcommand
    from .issuer import run  # lazy: per subcommand

    try:
        settings = _issuer_settings(rest)
        store = ConfigStore(settings.config, on_error=lambda e: logging.getLogger("issuer").error(
            "configuration reload failed, previous kept: %s", e))
    except (ValidationError, ValueError) as e:
        print(f"issuer: invalid configuration:\n{_describe(e)}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, fast_json=True)
    try:
        socks = _issuer_sockets(settings)
    except ValueError as e:
        print(f"issuer: cannot start: {e}", file=sys.stderr)
        return 2
    _fast_loop()

    async def main() -> None:
        import signal  # lazy: per subcommand

        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await run.serve(settings, store.get, stop, *socks)

    try:
        asyncio.run(main())
    except ValueError as e:  # the operator's CA material or signer: said plainly, not a traceback
        print(f"issuer: cannot start: {e}", file=sys.stderr)
        return 2
    return 0


def _serve(rest: list[str]) -> int:
    from sds_core import logs  # lazy: per subcommand

    from .app import create_app  # lazy: per subcommand
    from sds_core.policy.config import ConfigStore, ServerSettings  # lazy: per subcommand
    from sds_core.kube.namespaces import NamespaceLabels  # lazy: per subcommand
    from .server import serve  # lazy: per subcommand

    try:
        settings = ServerSettings(_cli_parse_args=rest, _cli_prog_name="python -m webhook serve")
        store = ConfigStore(settings.config, on_error=lambda e: logging.getLogger("webhook").error(
            "configuration reload failed, previous kept: %s", e))
        issuer_settings = _issuer_settings([]) if settings.issuer else None
    except (ValidationError, ValueError, OSError) as e:
        print(f"webhook: invalid configuration:\n{_describe(e)}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, fast_json=True)
    from sds_core.listen import bind_tcp  # lazy: per subcommand

    try:  # both ports before anything else starts: a busy port is a clean exit
        sock = bind_tcp(settings.host, settings.port, "webhook port")
        issuer_socks = _issuer_sockets(issuer_settings) if issuer_settings is not None else (None, None)
    except ValueError as e:
        print(f"webhook: cannot start: {e}", file=sys.stderr)
        return 2
    try:
        from sds_core.kube.client import api_client  # lazy: per subcommand

        labels = (NamespaceLabels(api_client(settings.kubeconfig)).start()
                  if store.get().needs_namespace_labels else None)
    except Exception as e:  # noqa: BLE001 - no cluster credentials
        if store.get().namespace_policy.uses_labels:  # label rules cannot be decided: do not start half-way
            print(f"webhook: label-based namespacePolicy rules need the Kubernetes API: {e}", file=sys.stderr)
            return 2
        # Only the environment label wants them: run on annotations and defaultEnvironment (local runs).
        print(f"webhook: no Kubernetes API ({type(e).__name__}): namespace environment labels are not read",
              file=sys.stderr)
        labels = None
    _fast_loop()
    app = create_app(store, labels, settings.max_body_bytes, settings.benchmark_baseline)
    also = []
    if issuer_settings is not None:
        from .issuer import run  # lazy: per subcommand

        also.append(lambda stop: run.serve(issuer_settings, store.get, stop, *issuer_socks))
    import gc  # lazy: per subcommand

    # Everything loaded so far lives as long as the process: keep it out of the collector's
    # full passes, which otherwise stall admissions (seen as p99 spikes under load).
    gc.collect()
    gc.freeze()
    try:
        asyncio.run(serve(app, settings, also, sock))
    except ValueError as e:  # a port in use: found before anything was announced
        print(f"webhook: cannot start: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m webhook")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the admission webhook (flags: --port, --cert-file, --key-file, --config, "
                   "--issuer true, or WEBHOOK_* variables; the issuer reads ISSUER_* variables)", add_help=False)
    sub.add_parser("issuer", help="run the issuer alone (ISSUER_* variables or flags)", add_help=False)
    inj = sub.add_parser("inject", help="inject the pod templates of manifests (like istioctl kube-inject)")
    inj.add_argument("-f", "--filename", required=True, help="YAML file, or - for stdin")
    inj.add_argument("--namespace", help="namespace to decide for (default: each document's, else default)")
    inj.add_argument("--config", type=Path, help="injector configuration YAML")
    from .issuer import audit_cli  # lazy: per subcommand (cryptography only)

    audit_cli.add_parser(sub)
    from .issuer import revoke_cli  # lazy: per subcommand

    revoke_cli.add_parser(sub)
    from .issuer import ca_cli  # lazy: per subcommand

    ca_cli.add_parser(sub)
    sub.add_parser("docs", help="print docs/annotations.md")
    schema = sub.add_parser("chart-schema", help="print the chart's values.schema.json, its `config` part "
                            "generated from the configuration model")
    schema.add_argument("--values-schema", type=Path, default=Path("charts/sds-injector/values.schema.json"))
    args, rest = parser.parse_known_args(argv)

    if args.command == "docs":
        from sds_core.policy.annotations import markdown  # lazy: per subcommand

        sys.stdout.write(markdown())
        return 0
    if args.command == "chart-schema":
        from sds_core.policy.config import chart_values_schema  # lazy: per subcommand

        sys.stdout.write(chart_values_schema(json.loads(args.values_schema.read_text())))
        return 0
    if args.command == "inject":
        return _inject(args, parser, rest)
    if args.command == "audit":
        return audit_cli.run(args)
    if args.command == "revoke":
        return revoke_cli.run(args)
    if args.command == "ca":
        return ca_cli.run(args)
    if args.command == "issuer":
        return _run_issuer(rest)
    return _serve(rest)


if __name__ == "__main__":
    sys.exit(main())
