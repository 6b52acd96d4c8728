"""Gateway mode: one Envoy at the cluster's edge serving many tenants' certificates by SNI.
The agent (sds_sidecar) runs beside it and serves, over one ADS stream, the listener and
clusters built from tenant claims plus each tenant's certificate."""
