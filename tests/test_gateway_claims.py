"""Hostname ownership of gateway tenant claims, as tables: who owns a hostname, who is refused and
what the message says. The issuer and the gateway both run these rules (sds_core/policy/claims.py)."""
from __future__ import annotations

import pytest

from sds_core.policy.claims import resolve
from sds_core.policy.config import InjectorConfig

# Ownership among claims the operator allows: every rule grants any hostname ("*").
CFG = InjectorConfig.model_validate({"namespacePolicy": {"rules": [
    {"namespaces": ["shop-*"], "environments": ["prod", "dev"], "businessLines": ["retail"], "gatewayHostnames": ["*"]},
    {"namespaceSelector": {"matchLabels": {"tier": "bank"}}, "environments": ["prod"], "businessLines": ["corporate"],
     "gatewayHostnames": ["*"]},
    {"namespaces": ["*"], "environments": ["dev"], "gatewayHostnames": ["*"]},
]}})


def cm(ns, name, hosts, created="2026-01-01T00:00:00Z", immutable=True, **data):
    obj = {"metadata": {"namespace": ns, "name": name, "creationTimestamp": created},
           "data": {"hostnames": hosts, "service": "web", "port": "8080", **data}}
    if immutable is not None:
        obj["immutable"] = immutable
    return obj


def labels(ns):
    return {"kubernetes.io/metadata.name": ns, **({"tier": "bank"} if ns.startswith("bank") else {})}


def owners(*objs, labels_of=labels, cfg=CFG):
    r = resolve(list(objs), cfg, labels_of)
    return {h: t.key for t in r.tenants for h in t.hostnames}, {(f.namespace, f.name): f for f in r.refusals}


T1, T2, T3 = "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"


@pytest.mark.parametrize("claims, owned, refused", [
    # one claim, several hostnames
    ([cm("shop-a", "c", "a.example.com, www.a.example.com", env="dev")],
     {"a.example.com": "shop-a/c", "www.a.example.com": "shop-a/c"}, {}),
    # the earlier claim owns; the later one is refused, naming the owner
    ([cm("shop-b", "c", "x.example.com", T2, env="dev"), cm("shop-a", "c", "x.example.com", T1, env="dev")],
     {"x.example.com": "shop-a/c"}, {("shop-b", "c"): "belongs to shop-a/c (namespace 'shop-a'"}),
    # same second: namespace, then name, decides (both the gateway and the issuer agree)
    ([cm("shop-b", "c", "x.example.com", T1, env="dev"), cm("shop-a", "z", "x.example.com", T1, env="dev")],
     {"x.example.com": "shop-a/z"}, {("shop-b", "c"): "belongs to shop-a/z"}),
    # two claims of one namespace: still the first
    ([cm("shop-a", "new", "x.example.com", T2, env="dev"), cm("shop-a", "old", "x.example.com", T1, env="dev")],
     {"x.example.com": "shop-a/old"}, {("shop-a", "new"): "another claim of the same namespace"}),
    # partial conflict: the free hostnames are still served
    ([cm("shop-a", "c", "x.example.com", T1, env="dev"), cm("shop-b", "c", "x.example.com,y.example.com", T2, env="dev")],
     {"x.example.com": "shop-a/c", "y.example.com": "shop-b/c"}, {("shop-b", "c"): "'x.example.com' belongs to"}),
    # an owned wildcard covers a later exact name one label below it ...
    ([cm("shop-a", "c", "*.a.example.com", T1, env="dev"), cm("shop-b", "c", "pay.a.example.com", T2, env="dev")],
     {"*.a.example.com": "shop-a/c"}, {("shop-b", "c"): "'pay.a.example.com' belongs to shop-a/c"}),
    # ... and an owned exact name blocks a later wildcard over it
    ([cm("shop-a", "c", "pay.a.example.com", T1, env="dev"), cm("shop-b", "c", "*.a.example.com", T2, env="dev")],
     {"pay.a.example.com": "shop-a/c"}, {("shop-b", "c"): "'*.a.example.com' belongs to shop-a/c"}),
    # but a wildcard covers one label only, as in TLS
    ([cm("shop-a", "c", "*.a.example.com", T1, env="dev"), cm("shop-b", "c", "x.pay.a.example.com", T2, env="dev"),
      cm("shop-c", "c", "a.example.com", T3, env="dev")],
     {"*.a.example.com": "shop-a/c", "x.pay.a.example.com": "shop-b/c", "a.example.com": "shop-c/c"}, {}),
    # a claim the policy refuses owns nothing, so it cannot block the tenant allowed to have the name
    ([cm("team-x", "c", "x.example.com", T1, env="prod"), cm("shop-a", "c", "x.example.com", T2, env="prod")],
     {"x.example.com": "shop-a/c"}, {("team-x", "c"): "may not use environment 'prod'"}),
    # business line outside the rule
    ([cm("shop-a", "c", "x.example.com", env="prod", **{"business-line": "corporate"})], {},
     {("shop-a", "c"): "business line 'corporate'"}),
    # label rule: a bank namespace may have prod corporate
    ([cm("bank-1", "c", "x.example.com", env="prod", **{"business-line": "corporate"})], {"x.example.com": "bank-1/c"}, {}),
    # a mutable claim is refused: its creation time could not stand for its content
    ([cm("shop-a", "c", "x.example.com", immutable=None, env="dev")], {}, {("shop-a", "c"): "immutable: true"}),
    ([cm("shop-a", "c", "x.example.com", immutable=False, env="dev")], {}, {("shop-a", "c"): "immutable: true"}),
    # bad input: each gets a message, none is served
    ([cm("shop-a", "c", "", env="dev")], {}, {("shop-a", "c"): "hostnames is empty"}),
    ([cm("shop-a", "c", "Bad_Host.example.com", env="dev")], {}, {("shop-a", "c"): "not a DNS name"}),
    ([cm("shop-a", "c", "localhost", env="dev")], {}, {("shop-a", "c"): "not a fully qualified name"}),
    ([cm("shop-a", "c", "10.0.0.1", env="dev")], {}, {("shop-a", "c"): "an IP address"}),
    ([cm("shop-a", "c", "*.com", env="dev")], {}, {("shop-a", "c"): "wildcard needs at least two labels"}),
    ([cm("shop-a", "c", "a.*.example.com", env="dev")], {}, {("shop-a", "c"): "not a DNS name"}),
    ([cm("shop-a", "c", "x.example.com", env="qa")], {}, {("shop-a", "c"): "env 'qa' is not one of"}),
    ([cm("shop-a", "c", "x.example.com", env="dev", port="0")], {}, {("shop-a", "c"): "not a port number"}),
    ([cm("shop-a", "c", "x.example.com", env="dev", service="Web/..")], {}, {("shop-a", "c"): "not a Service name"}),
    ([cm("shop-a", "c", "x.example.com", env="dev", backend="10.0.0.1")], {}, {("shop-a", "c"): "unknown keys ['backend']"}),
    ([cm("shop-a", "c", ",".join(f"h{i}.example.com" for i in range(101)), env="dev")], {},
     {("shop-a", "c"): "at most 100"}),
    # system namespaces never get gateway certificates
    ([cm("kube-system", "c", "x.example.com", env="dev")], {}, {("kube-system", "c"): "system namespace"}),
    # env omitted and no defaultEnvironment: refused with the list
    ([cm("shop-a", "c", "x.example.com")], {}, {("shop-a", "c"): "env '' is not one of"}),
    # hostnames are case-insensitive and a trailing dot is the same name
    ([cm("shop-a", "c", "X.Example.com.", T1, env="dev"), cm("shop-b", "c", "x.example.com", T2, env="dev")],
     {"x.example.com": "shop-a/c"}, {("shop-b", "c"): "belongs to shop-a/c"}),
])
def test_ownership(claims, owned, refused):
    check(claims, owned, refused)


def check(claims, owned, refused, cfg=CFG):
    """The table's row holds: who owns what, who is refused, with what in the message."""
    got, refusals = owners(*claims, cfg=cfg)
    assert got == owned
    assert set(refusals) == set(refused), {k: v.message for k, v in refusals.items()}
    for key, text in refused.items():
        assert text in refusals[key].message, refusals[key].message
    return refusals


def test_unknown_namespace_labels_fail_closed():
    # The label rule comes before the catch-all: with labels unknown, it cannot be decided.
    got, refusals = owners(cm("bank-1", "c", "x.example.com", env="dev"), labels_of=lambda ns: None)
    assert got == {} and refusals[("bank-1", "c")].reason == "namespace_labels_unknown"


def test_deleting_the_owner_frees_the_hostname():
    first = cm("shop-a", "c", "x.example.com", T1, env="dev")
    second = cm("shop-b", "c", "x.example.com", T2, env="dev")
    assert owners(first, second)[0] == {"x.example.com": "shop-a/c"}
    assert owners(second)[0] == {"x.example.com": "shop-b/c"}


def test_ten_thousand_tenants_with_wildcards_do_not_collide():
    # Indexed lookups (the benchmark times them); a wildcard and the name it sits on are distinct.
    objs = [cm(f"shop-{i}", "c", f"t{i}.example.com,*.t{i}.example.com", env="dev") for i in range(10_000)]
    objs.append(cm("shop-late", "c", "www.t5.example.com", T2, env="dev"))
    r = resolve(objs, CFG, labels)
    assert len(r.tenants) == 10_000
    assert [(f.namespace, f.reason) for f in r.refusals] == [("shop-late", "hostname_taken")]


# The policy also says which hostnames a namespace may claim: without it, whoever claims a name
# first owns it, so any namespace could take a bank's hostname before the bank does.
CFG_HOSTS = InjectorConfig.model_validate({"namespacePolicy": {"rules": [
    {"namespaces": ["bank-*"], "environments": ["prod"], "gatewayHostnames": ["bank.example.com", "*.bank.example.com"]},
    {"namespaces": ["shop-*"], "environments": ["dev"], "gatewayHostnames": ["*.shop.example.com"]},
    {"namespaces": ["*"], "environments": ["dev"], "gatewayHostnames": []},
]}})


@pytest.mark.parametrize("claims, owned, refused", [
    # an earlier claim of another namespace's hostname owns nothing: the bank keeps its name
    ([cm("shop-evil", "c", "login.bank.example.com", T1, env="dev"), cm("bank-1", "c", "login.bank.example.com", T2, env="prod")],
     {"login.bank.example.com": "bank-1/c"}, {("shop-evil", "c"): "'login.bank.example.com' is not one namespace 'shop-evil' may claim"}),
    # exact and below: the name itself, any depth below, wildcards below
    ([cm("bank-1", "c", "bank.example.com,a.b.bank.example.com,*.bank.example.com", env="prod")],
     {"bank.example.com": "bank-1/c", "a.b.bank.example.com": "bank-1/c", "*.bank.example.com": "bank-1/c"}, {}),
    # a suffix is not a parent: evilbank.example.com is not below bank.example.com
    ([cm("bank-1", "c", "evilbank.example.com", env="prod")], {}, {("bank-1", "c"): "'evilbank.example.com' is not one"}),
    # "*.shop.example.com" allows what is below it, not shop.example.com itself
    ([cm("shop-a", "c", "shop.example.com", env="dev")], {}, {("shop-a", "c"): "gatewayHostnames: *.shop.example.com"}),
    # partly allowed: the allowed hostnames are served, the others refused by name
    ([cm("shop-a", "c", "a.shop.example.com,a.bank.example.com", env="dev")], {"a.shop.example.com": "shop-a/c"},
     {("shop-a", "c"): "'a.bank.example.com' is not one"}),
    # an empty list: the namespace may claim nothing
    ([cm("team-x", "c", "x.example.com", env="dev")], {}, {("team-x", "c"): "gatewayHostnames: none"}),
])
def test_hostnames_the_policy_allows(claims, owned, refused):
    refusals = check(claims, owned, refused, CFG_HOSTS)
    assert all(refusals[key].reason == "hostname_not_allowed" for key in refused)


@pytest.mark.parametrize("pattern", ["Shop.example.com", "*.*.example.com", "a.*.example.com", "*example.com",
                                     "example", "*.", "10.0.0.1/8", ""])
def test_bad_hostname_patterns_are_refused_at_load(pattern):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="gatewayHostnames"):
        InjectorConfig.model_validate({"namespacePolicy": {"rules": [
            {"namespaces": ["*"], "gatewayHostnames": [pattern]}]}})


def test_granting_gateway_hostnames_does_not_redo_every_pod():
    """The config revision marks what injection depends on; gateway hostnames are not part of it."""
    def cfg(**rule):
        return InjectorConfig.model_validate({"namespacePolicy": {"rules": [{"namespaces": ["*"], **rule}]}})

    assert cfg(gatewayHostnames=["*.shop.example.com"]).revision == cfg().revision
    assert cfg(environments=["dev"]).revision != cfg().revision


def test_by_default_no_namespace_may_claim_any_hostname():
    """The default grant is nothing: with "*" the first namespace to claim a bank's hostname
    would own it and the issuer would sign it."""
    default = InjectorConfig.model_validate({})
    owned, refused = owners(cm("team-x", "c", "bank.example.com", env="dev"), cfg=default)
    assert owned == {} and refused[("team-x", "c")].reason == "hostname_not_allowed"
    assert "gatewayHostnames: none" in refused[("team-x", "c")].message


@pytest.mark.parametrize("hostname", [
    "ledger.bank-prod.svc.cluster.local", "ledger.bank-prod.svc", "x.svc.corp", "cluster.local", "a.cluster.local",
    "*.bank-prod.svc.cluster.local"])
def test_cluster_internal_names_are_never_claimable_even_where_everything_is_granted(hostname):
    owned, refused = owners(cm("shop-a", "c", hostname, env="dev"))
    assert owned == {}, "an edge certificate would answer for a workload"
    assert refused[("shop-a", "c")].reason == "invalid_hostname"
    assert "cluster-internal" in refused[("shop-a", "c")].message
