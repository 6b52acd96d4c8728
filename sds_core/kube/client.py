"""One kubernetes ApiClient per process: in-cluster credentials, else a kubeconfig file."""
from __future__ import annotations

from pathlib import Path


def api_client(kubeconfig: Path | None = None):
    from kubernetes import client, config  # lazy: heavy, API callers only

    if kubeconfig is not None:
        return config.new_client_from_config(config_file=str(kubeconfig))
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        return config.new_client_from_config()
    return client.ApiClient(cfg)


def refusal(e) -> str:
    """An ApiException as a person reads it: status, reason, and the API server's own message."""
    import json  # lazy: error path only

    try:
        message = json.loads(e.body).get("message")
    except (TypeError, ValueError, AttributeError):
        message = None
    return f"{e.status} {e.reason}" + (f": {message}" if message else "")


def api_command(command) -> int:
    """An operator's command against the API (`command()` returns what it did): its line and 0;
    or one error line, 1 when the API server refused, 2 for bad input or an unreadable file."""
    import sys  # lazy: CLI path only

    from kubernetes.client.exceptions import ApiException  # lazy: heavy, API callers only

    try:
        done = command()
    except ApiException as e:
        print(f"error: the API server refused ({refusal(e)})", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(done)
    return 0
