"""Every reason a pod is skipped, injected or denied, a request refused by the issuer, or a
gateway claim refused: one enumeration, so that metric labels, audit records, log fields and
error bodies say the same words, and a misspelt reason is a type error rather than a new label.
Members are strings (StrEnum): JSON, Prometheus and logs see the plain value."""
from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # admission: skipped
    ALREADY_INJECTED = "already_injected"
    EPHEMERAL_CONTAINERS = "ephemeral_containers"
    HOST_NETWORK = "host_network"
    ISTIO_OPTED_OUT = "istio_opted_out"
    ISTIO_SOCKET_TAKEN = "istio_socket_taken"
    NOOP = "noop"
    OPERATION = "operation"
    OPTED_OUT = "opted_out"
    SYSTEM_NAMESPACE = "system_namespace"
    # workloads checked at apply time (allowed)
    NO_POD_TEMPLATE = "no_pod_template"
    TEMPLATE_UNCHANGED = "template_unchanged"
    WORKLOAD_ALLOWED = "workload_allowed"
    NOT_A_WORKLOAD = "not_a_workload"
    # admission: injected
    INJECTED = "injected"
    REINJECTED = "reinjected"
    # admission: denied (pod shape, annotations, policy, ownership)
    CONFIG = "config"
    INVALID_ANNOTATION = "invalid_annotation"
    ISTIO_NAMES = "istio_names"
    MALFORMED_POD = "malformed_pod"
    MALFORMED_REQUEST = "malformed_request"
    MISSING_ENV = "missing_env"
    ENV_NOT_IN_NAMESPACE = "env_not_in_namespace"
    NAME_COLLISION = "name_collision"
    NAMESPACE_LABELS_UNKNOWN = "namespace_labels_unknown"
    NOT_A_POD = "not_a_pod"
    OWNED_VOLUME = "owned_volume"
    POLICY = "policy"
    POLICY_NO_RULE = "policy_no_rule"
    PORT_COLLISION = "port_collision"
    RESERVED_NAME = "reserved_name"
    SHARED_PROCESS_NAMESPACE = "shared_process_namespace"
    TOO_DEEP = "too_deep"
    UNKNOWN_BUSINESS_LINE = "unknown_business_line"
    UNKNOWN_ENV = "unknown_env"
    # issuer: refusals
    BAD_CSR = "bad_csr"
    BAD_REQUEST = "bad_request"
    NAME_NOT_ALLOWED = "name_not_allowed"
    NO_CA = "no_ca"
    NO_SUCH_TENANT = "no_such_tenant"
    NO_TOKEN = "no_token"
    NOT_A_GATEWAY = "not_a_gateway"
    NOT_A_SERVICE_ACCOUNT = "not_a_service_account"
    NOT_POD_BOUND = "not_pod_bound"
    POD_GONE = "pod_gone"
    POD_MISMATCH = "pod_mismatch"
    POD_TERMINATING = "pod_terminating"
    TOKEN_AUDIENCE = "token_audience"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_INVALID = "token_invalid"
    TOKEN_ISSUER = "token_issuer"
    TOKEN_MALFORMED = "token_malformed"
    TOKEN_NOT_YET_VALID = "token_not_yet_valid"
    TOO_MANY_DNS_NAMES = "too_many_dns_names"
    UNAVAILABLE = "unavailable"
    RATE_LIMITED = "rate_limited"
    SOURCE_RATE_LIMITED = "source_rate_limited"
    WEAK_KEY = "weak_key"
    # gateway claims: refusals
    HOSTNAME_NOT_ALLOWED = "hostname_not_allowed"
    HOSTNAME_TAKEN = "hostname_taken"
    INVALID = "invalid"
    INVALID_HOSTNAME = "invalid_hostname"
    MUTABLE = "mutable"
