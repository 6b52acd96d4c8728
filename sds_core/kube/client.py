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
