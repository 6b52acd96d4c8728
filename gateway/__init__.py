"""Gateway mode: one Envoy at the cluster's edge serving many tenants' certificates by SNI.
The agent (sds_sidecar) runs beside it and serves, over one ADS stream, the listener built
from tenant claims, the one cluster every tenant's traffic leaves by, and each tenant's certificate."""
