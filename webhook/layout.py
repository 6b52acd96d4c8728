"""The names the injector gives what it adds to a pod (containers, volumes, paths, the status
annotation): read by the plan that adds them, the checks that keep the pod's own containers away
from them, and the patch."""
from __future__ import annotations

from sds_core.policy.config import PREFIX

STATUS = PREFIX + "status"
AGENT, PROXY = "sds-agent", "sds-envoy"
SOCKET_VOL, TOKEN_VOL, CA_VOL = "sds-socket", "sds-token", "sds-local-ca"
ADMIN_VOL, NO_SA_TOKEN_VOL, FILES_VOL_PREFIX = "sds-admin", "sds-no-sa-token", "sds-files-"
TOKEN_DIR, CA_DIR, FILES_DIR = "/var/run/secrets/sds-injector", "/etc/sds/local-ca", "/etc/sds/certs"
ADMIN_DIR = "/var/run/sds-admin"
ISSUER_CA_VOL, ISSUER_CA_DIR = "sds-issuer-ca", "/etc/sds/issuer-ca"
# The API server mounts the pod's API token at this path into every container that has no mount
# there already: an empty volume in its place keeps the token out of the sidecars.
SA_TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


# Without a pod fsGroup the kubelet writes Secret files as root:root, so the agent (uid 65532)
# reads them through the "other" bits. Only the agent mounts these volumes (owned_volume() is
# enforced at admission), so readable-by-all means readable by the agent alone.
SECRET_FILE_MODE = 0o444


def owned_volume(name: str) -> bool:
    """Volumes the injector adds: no container of the pod's own may mount one."""
    return name in (SOCKET_VOL, TOKEN_VOL, CA_VOL, ADMIN_VOL, NO_SA_TOKEN_VOL, ISSUER_CA_VOL) \
        or name.startswith(FILES_VOL_PREFIX)

