"""The issuer: signs workload CSRs after verifying the pod's projected service-account token.

Identity comes only from what Kubernetes attests (namespace, service account, the bound pod,
the Services selecting it); the namespace policy is enforced here, where it cannot be skipped.
Runs in the webhook's Deployment, on its own port with its own TLS."""
