"""The issuer as an attacker meets it: the real `python -m webhook issuer` process, over HTTPS,
reading the cluster through the `kubernetes` client from the API double (devkit/kube_api.py),
with projected tokens shaped as kube-apiserver issues them. Every test runs with both token
verifiers (TokenReview and offline JWKS)."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from devkit import harness
from devkit.issuer_run import IssuerRun
from devkit.kube_api import KubeAPI
from sds_core.sds.sources.issuer import csr_pem, new_key
from webhook.issuer.audit import AuditLog
from webhook.issuer.audit_verify import verify

ROOT = Path(__file__).parent.parent
CONFIG = ROOT / "examples" / "config.yaml"
PROD = {"sds-injector.io/env": "prod", "sds-injector.io/business-line": "retail"}


@pytest.fixture(scope="module", params=["tokenreview", "jwks"])
def world(request, tmp_path_factory):
    kube = KubeAPI().start()
    kube.add_namespace("shop-prod")
    kube.add_namespace("bank")
    kube.add_service("shop-prod", "cart", {"app": "cart"})
    kube.add_service("shop-prod", "payments", {"app": "payments"})
    # Every test's client is 127.0.0.1, and many send refused tokens on purpose: the per-address
    # limit (test_forged_tokens_cost_a_few_reviews_per_address_then_nothing) is lifted here.
    issuer = IssuerRun(tmp_path_factory.mktemp(request.param), kube, CONFIG, verifier=request.param,
                       source_refusals_burst=100_000).start()
    yield kube, issuer
    issuer.stop()
    kube.stop()
    assert "PRIVATE KEY" not in issuer.log.read_text()


def sign(issuer: IssuerRun, token: str | None, name: str, key=None, csr: str | None = None) -> tuple[int, dict]:
    return issuer.post("/v1/certificates", {"name": name, "csr": csr or csr_pem(key or new_key("ec"), name)}, token)


def leaf_of(out: dict) -> x509.Certificate:
    return x509.load_pem_x509_certificates(out["certificate_chain"].encode())[0]


def sans(cert: x509.Certificate) -> tuple[list[str], list[str], list[str]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (san.get_values_for_type(x509.UniformResourceIdentifier), san.get_values_for_type(x509.DNSName),
            [str(i) for i in san.get_values_for_type(x509.IPAddress)])


def test_identity_comes_from_the_cluster(world):
    kube, issuer = world
    pod = kube.add_pod("shop-prod", "cart-1", "cart", {"app": "cart"}, PROD, ip="10.0.0.7")
    key = new_key("ec")
    status, out = sign(issuer, kube.mint(pod), "retail-service-cert", key)
    assert status == 200, out
    cert = leaf_of(out)
    uris, dns, ips = sans(cert)
    assert uris == ["spiffe://cluster.local/ns/shop-prod/sa/cart"]
    assert dns == ["cart.shop-prod.svc", "cart.shop-prod.svc.cluster.local"]  # never bare, never two labels
    assert ips == ["10.0.0.7"]
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()  # our key, never theirs
    chain = x509.load_pem_x509_certificates(out["certificate_chain"].encode())
    prod_ca = x509.load_pem_x509_certificate(out["trust_bundle"].encode())
    cert.verify_directly_issued_by(prod_ca)
    assert chain[1] == prod_ca and "prod" in prod_ca.subject.rfc4514_string()
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki == prod_ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(hours=1)


def test_annotation_cannot_choose_identity(world):
    """A pod running as SA `rogue`, annotated service: payments, gets neither payments' SANs
    nor its SPIFFE ID: only Services that select the pod name it."""
    kube, issuer = world
    pod = kube.add_pod("shop-prod", "rogue-1", "rogue", {"app": "rogue"},
                       {"sds-injector.io/env": "prod", "sds-injector.io/service": "payments"})
    status, out = sign(issuer, kube.mint(pod), "payments-prod-cert")
    assert status == 200, out
    uris, dns, _ = sans(leaf_of(out))
    assert uris == ["spiffe://cluster.local/ns/shop-prod/sa/rogue"]
    assert not any("payments" in d for d in dns) and dns == []
    assert "payments" not in leaf_of(out).subject.rfc4514_string()


def test_csr_asking_for_extra_names_gets_none(world):
    kube, issuer = world
    pod = kube.add_pod("shop-prod", "cart-2", "cart", {"app": "cart"}, PROD)
    key = ec.generate_private_key(ec.SECP256R1())
    greedy = (x509.CertificateSigningRequestBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "payments")]))
              .add_extension(x509.SubjectAlternativeName([
                  x509.DNSName("payments.shop-prod.svc"), x509.DNSName("*.shop-prod.svc"),
                  x509.UniformResourceIdentifier("spiffe://cluster.local/ns/shop-prod/sa/payments")]), False)
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
              .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
    status, out = sign(issuer, kube.mint(pod), "retail-service-cert", csr=greedy)
    assert status == 200, out
    cert = leaf_of(out)
    uris, dns, _ = sans(cert)
    assert uris == ["spiffe://cluster.local/ns/shop-prod/sa/cart"]
    assert not any("payments" in d or "*" in d for d in dns)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_forged_stale_and_foreign_tokens_are_refused(world):
    kube, issuer = world
    pod = kube.add_pod("shop-prod", "cart-3", "cart", {"app": "cart"}, PROD)
    gone = kube.add_pod("shop-prod", "cart-gone", "cart", {"app": "cart"}, PROD)
    gone_token = kube.mint(gone)
    kube.delete_pod("shop-prod", "cart-gone")
    # Same name, new pod: a token of the previous incarnation must not serve the new one.
    old = kube.add_pod("shop-prod", "cart-again", "cart", {"app": "cart"}, PROD)
    old_token = kube.mint(old)
    kube.delete_pod("shop-prod", "cart-again")
    kube.add_pod("shop-prod", "cart-again", "cart", {"app": "cart"}, PROD)
    other_key = rsa.generate_private_key(65537, 2048)
    cases = {
        "expired": kube.mint(pod, ttl=-120),
        "wrong audience": kube.mint(pod, audience="vault"),
        "not yet valid": kube.mint(pod, nbf=int(dt.datetime.now().timestamp()) + 600),
        "deleted pod": gone_token,
        "previous pod of that name": old_token,
        "signed by another key": kube.mint(pod, key=other_key),
        "unsigned": kube.mint(pod).rsplit(".", 1)[0] + ".",
        "not a JWT": "hello",
        "none": None,
    }
    for what, token in cases.items():
        status, out = sign(issuer, token, "retail-service-cert")
        assert status in (401, 403), (what, status, out)
        assert "certificate_chain" not in out and out["reason"] and out["error"], what
    assert sign(issuer, kube.mint(pod), "retail-service-cert")[0] == 200  # the genuine one still works


def test_policy_is_enforced_at_issuance_for_pods_that_skipped_the_webhook(world):
    """A pod that opted out of injection, in the dev-only namespace `bank`, annotated prod,
    asks the issuer directly: refused, with the reason."""
    kube, issuer = world
    pod = kube.add_pod("bank", "sneaky-1", "ledger", {"app": "ledger"},
                       {"sds-injector.io/inject": "false", "sds-injector.io/env": "prod",
                        "sds-injector.io/business-line": "retail"})
    status, out = sign(issuer, kube.mint(pod), "retail-service-cert")
    assert status == 403 and out["reason"] == "policy" and "prod" in out["error"], out
    status, out = issuer.post("/v1/trust-bundles", {"name": "retail-trust-bundle"}, kube.mint(pod))
    assert status == 403 and out["reason"] == "policy"


def test_names_outside_the_pods_selection_are_refused(world):
    kube, issuer = world
    pod = kube.add_pod("shop-prod", "cart-4", "cart", {"app": "cart"}, PROD)
    token = kube.mint(pod)
    status, out = sign(issuer, token, "serviceA-prod-cert")
    assert status == 403 and out["reason"] == "name_not_allowed", out
    status, out = issuer.post("/v1/trust-bundles", {"name": "prod-trust-bundle"}, token)
    assert status == 403 and out["reason"] == "name_not_allowed", out
    status, out = issuer.post("/v1/trust-bundles", {"name": "retail-trust-bundle"}, token)
    assert status == 200 and "BEGIN CERTIFICATE" in out["trust_bundle"]


def test_each_environment_has_its_own_trust_root(world):
    """A dev pod's certificate does not chain to what a prod pod trusts (and back)."""
    kube, issuer = world
    prod = kube.add_pod("shop-prod", "cart-5", "cart", {"app": "cart"}, PROD)
    dev = kube.add_pod("bank", "ledger-1", "ledger", {"app": "ledger"},
                       {"sds-injector.io/env": "dev", "sds-injector.io/business-line": "corporate"})
    _, p = sign(issuer, kube.mint(prod), "retail-service-cert")
    status, d = sign(issuer, kube.mint(dev), "corporate-service-cert")
    assert status == 200, d
    prod_bundle = x509.load_pem_x509_certificates(p["trust_bundle"].encode())
    dev_bundle = x509.load_pem_x509_certificates(d["trust_bundle"].encode())
    assert len(prod_bundle) == len(dev_bundle) == 1 and prod_bundle != dev_bundle
    with pytest.raises((ValueError, InvalidSignature)):
        leaf_of(d).verify_directly_issued_by(prod_bundle[0])
    with pytest.raises((ValueError, InvalidSignature)):
        leaf_of(p).verify_directly_issued_by(dev_bundle[0])
    # Neither bundle is a root that could also vouch for the other environment.
    for ca in prod_bundle + dev_bundle:
        assert ca.issuer != ca.subject


def test_bad_requests_get_clear_errors(world):
    kube, issuer = world
    pod = kube.add_pod("shop-prod", "cart-6", "cart", {"app": "cart"}, PROD)
    token = kube.mint(pod)
    weak = rsa.generate_private_key(65537, 1024)
    weak_csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
                .sign(weak, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
    good = csr_pem(new_key("ec"), "x")
    tampered = good.replace(good.splitlines()[3], good.splitlines()[3][:-4] + "AAAA")
    for body, reason in [(b"{not json", "bad_request"), (b"[]", "bad_request"), ({"name": "retail-service-cert"},
                         "bad_request"), ({"name": "retail-service-cert", "csr": "-----BEGIN nonsense"}, "bad_csr"),
                         ({"name": "retail-service-cert", "csr": weak_csr}, "weak_key"),
                         ({"name": "retail-service-cert", "csr": tampered}, "bad_csr")]:
        status, out = issuer.post("/v1/certificates", body, token)
        assert status in (400, 413) and out["reason"] == reason, (body, status, out)
    assert sign(issuer, token, "retail-service-cert", new_key("rsa"))[0] == 200  # RSA 2048 is fine


def test_the_port_pods_reach_does_not_list_what_was_issued(world):
    """/inventory and /metrics name every namespace, pod, SPIFFE ID and serial: they were served to
    anyone on the pod network (the issuer port). Now only on the operations port, which the chart's
    NetworkPolicy opens to scrapers alone."""
    kube, issuer = world
    pod = kube.add_pod("shop-prod", "cart-8", "cart", {"app": "cart"}, PROD)
    assert sign(issuer, kube.mint(pod), "retail-service-cert")[0] == 200
    for path in ("/inventory", "/metrics"):
        status, body = issuer.get(path)
        assert status == 404 and b"cart-8" not in body and b"shop-prod" not in body, (path, status)
        assert issuer.get(path, ops=True)[0] == 200
    assert issuer.get("/readyz")[0] == issuer.get("/readyz", ops=True)[0] == 200  # probes on either


def test_inventory_metrics_and_audit(world):
    kube, issuer = world
    pod = kube.add_pod("shop-prod", "cart-7", "cart", {"app": "cart"}, PROD)
    _, out = sign(issuer, kube.mint(pod), "retail-service-cert")
    assert sign(issuer, "not-a-jwt", "retail-service-cert")[0] == 401  # a refusal: audited (at most 20 a minute of one kind)
    items = json.loads(issuer.get("/inventory", ops=True)[1])
    mine = [i for i in items if i["pod"] == "cart-7"]
    assert mine and mine[0]["serial"] == out["serial"] and mine[0]["name"] == "retail-service-cert"
    assert mine[0]["spiffe_id"] == "spiffe://cluster.local/ns/shop-prod/sa/cart"
    metrics = issuer.get("/metrics", ops=True)[1].decode()
    assert 'sds_issuer_certificate_not_after_seconds{name="retail-service-cert",namespace="shop-prod"}' in metrics
    assert "sds_issuer_requests_refused_total" in metrics
    records = [json.loads(line) for line in issuer.audit_file.read_text().splitlines()]
    issued = [r for r in records if r.get("serial") == out["serial"]]
    assert issued and issued[0]["decision"] == "issued" and issued[0]["pod"] == "cart-7"
    assert {"time", "namespace", "service_account", "spiffe_id", "name", "sha256", "not_after", "prev",
            "hash", "replica"} <= set(issued[0])
    assert any(r["decision"] == "refused" and r["reason"] for r in records)
    report = verify(issuer.audit_file.read_bytes())
    assert (report.count, report.problems) == (len(records), [])
    # The same records went to stdout (here: the process log) for the log collector.
    assert out["serial"] in issuer.log.read_text()


def test_audit_chain_detects_edits_deletions_and_reordering(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    for replica in ("a", "b"):
        log = AuditLog(replica, path)
        for i in range(4):
            log.record("issued", namespace="shop", serial=f"{replica}{i}")
    AuditLog("a", path).record("refused", "policy")  # a restarted replica continues its chain
    lines = path.read_text().splitlines()
    report = verify(path.read_bytes())
    assert (report.count, report.problems) == (9, [])

    def problems(changed: list[str]) -> list[str]:
        return verify(("\n".join(changed) + "\n").encode()).problems

    edited = list(lines)
    edited[2] = edited[2].replace('"serial":"a2"', '"serial":"ff"')
    deleted = lines[:1] + lines[2:]
    reordered = [lines[1], lines[0], *lines[2:]]
    for case in (edited, deleted, reordered):
        assert problems(case)
    cli = [sys.executable, "-m", "webhook", "audit", "verify"]
    assert subprocess.run([*cli, str(path)], capture_output=True, cwd=ROOT).returncode == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(reordered) + "\n")
    r = subprocess.run([*cli, str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "reordered" in r.stdout


def test_replicas_starting_together_share_one_ca(tmp_path):
    """Two issuer replicas on a fresh cluster: one creates the CA Secret, the other reads it;
    each keeps its own audit chain; no leader."""
    kube = KubeAPI().start()
    runs = []
    for i in range(2):
        (tmp_path / f"r{i}").mkdir()
        runs.append(IssuerRun(tmp_path / f"r{i}", kube, CONFIG, replica=f"issuer-{i}"))
    try:
        for r in runs:
            r.launch()
        for r in runs:
            r.wait_ready()
        pod = kube.add_pod("shop-prod", "cart-r", "cart", {"app": "cart"}, PROD)
        bundles = {r.post("/v1/trust-bundles", {"name": "retail-trust-bundle"}, kube.mint(pod))[1]["trust_bundle"]
                   for r in runs}
        assert len(bundles) == 1
        creates = [p for m, p in kube.requests if m == "POST" and p.endswith("/secrets")]
        assert len([s for s in kube.objects["secrets"]]) == 1 and creates
        for r in runs:
            sign(r, kube.mint(pod), "retail-service-cert")
            recs = [json.loads(x) for x in r.audit_file.read_text().splitlines()]
            assert {x["replica"] for x in recs} == {r.env["ISSUER_REPLICA"]}
    finally:
        for r in runs:
            r.stop()
        kube.stop()


def test_webhook_and_issuer_run_in_one_process_as_the_chart_runs_them(tmp_path):
    """`python -m webhook serve` with WEBHOOK_ISSUER=true (the chart's Deployment): both ports
    answer, injected agents get the issuer's serving CA, the issuer signs for the pod."""
    import base64
    import ssl
    import urllib.request

    import jsonpatch

    from devkit.harness import free_port, wait_for
    from tests.webhook_util import pod, review

    kube = KubeAPI().start()
    run = IssuerRun(tmp_path, kube, CONFIG)  # reuse its files and ISSUER_* environment
    (tmp_path / "ca.crt").write_bytes(run.ca_pem)
    port = free_port()
    env = {**run.env, "WEBHOOK_ISSUER": "true",
           "WEBHOOK_PORT": str(port), "WEBHOOK_HOST": "127.0.0.1", "WEBHOOK_CONFIG": str(CONFIG),
           "WEBHOOK_KUBECONFIG": run.env["ISSUER_KUBECONFIG"],
           "WEBHOOK_CERT_FILE": run.env["ISSUER_CERT_FILE"], "WEBHOOK_KEY_FILE": run.env["ISSUER_KEY_FILE"]}
    log = open(tmp_path / "serve.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "webhook", "serve"], stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=ROOT)
    try:
        run.proc = proc
        run.wait_ready()
        ctx = ssl.create_default_context(cadata=run.ca_pem.decode())
        body = json.dumps(review(pod({"sds-injector.io/env": "dev"}))).encode()
        req = urllib.request.Request(f"https://localhost:{port}/mutate", data=body, method="POST",
                                     headers={"content-type": "application/json"})
        out = wait_for(lambda: json.loads(urllib.request.urlopen(req, timeout=5, context=ctx).read()),
                       what="webhook answering")
        patched = jsonpatch.apply_patch(pod({"sds-injector.io/env": "dev"}),
                                        json.loads(base64.b64decode(out["response"]["patch"])))
        env_of = {e["name"]: e.get("value") for e in patched["spec"]["initContainers"][0]["env"]}
        assert env_of["SDS_SOURCE"] == "issuer" and "SDS_ISSUER_CA" not in env_of
        # The issuer keeps its serving CA in each enabled namespace, where the pods mount it.
        kube.label_namespace("bank", {"sds-injector.io/injection": "enabled"})
        published = wait_for(lambda: kube.objects["configmaps"].get(("bank", "sds-injector-issuer-ca")),
                             what="the issuer CA ConfigMap")
        assert published["data"]["ca.crt"] == run.ca_pem.decode()
        stored = kube.add_pod("bank", "ledger-9", "ledger", {"app": "ledger"},
                              {"sds-injector.io/env": "dev", "sds-injector.io/business-line": "corporate"})
        assert sign(run, kube.mint(stored), "corporate-service-cert")[0] == 200
        # The webhook port is open to the pod network: its /metrics must not carry the in-process
        # issuer's (namespaces and certificate names); those are on the operations port only.
        webhook_metrics = urllib.request.urlopen(f"https://localhost:{port}/metrics", timeout=5, context=ctx).read()
        assert b"sds_webhook_requests_total" in webhook_metrics and b"bank" not in webhook_metrics
        assert b"sds_issuer_" not in webhook_metrics, "the issuer's metrics leak on the webhook port"
        assert b'namespace="bank"' in run.get("/metrics", ops=True)[1]
        proc.send_signal(__import__("signal").SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
        kube.stop()
    text = (tmp_path / "serve.log").read_text()
    assert '"webhook serving"' in text and '"issuer serving"' in text and "PRIVATE KEY" not in text


def test_a_declared_huge_body_is_refused_before_it_is_read(world):
    """Content-Length: 100 MB and a trickle: 413 at once, nothing buffered (the issuer used to
    read the whole body, then compare its size)."""
    import socket
    import ssl

    _, issuer = world
    ctx = ssl.create_default_context(cadata=issuer.ca_pem.decode())
    with socket.create_connection(("127.0.0.1", issuer.port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"POST /v1/certificates HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\n"
                  b"content-length: 100000000\r\n\r\n{\"name\":")
        s.settimeout(3)
        head = s.recv(200).decode(errors="replace")
    assert head.startswith("HTTP/1.1 413"), head


def _wait_refused(issuer, token, reason: str) -> dict:
    """The issuer's pod view follows a watch: wait (briefly) for it to see the change."""
    out: dict = {}

    def refused():
        nonlocal out
        status, out = sign(issuer, token, "retail-service-cert")
        return status != 200 and out.get("reason") == reason
    harness.wait_for(refused, timeout=10, what=f"refusal {reason}")
    return out


def test_a_pod_being_deleted_gets_no_certificate(world):
    """Attack: a pod deleted with a grace period keeps running (and its token keeps its
    signature) until the kubelet confirms. JWKS verification cannot see that; TokenReview says
    'invalidated' once its ~10 s cache of positive answers runs out. The issuer refuses on the
    pod object's deletionTimestamp in both modes, cached review or not."""
    kube, issuer = world
    pod = kube.add_pod("shop-prod", "cart-ending", "cart", {"app": "cart"}, PROD)
    token = kube.mint(pod)
    assert sign(issuer, token, "retail-service-cert")[0] == 200  # reviewed (and cached) while alive
    kube.terminate_pod("shop-prod", "cart-ending")
    out = _wait_refused(issuer, token, "pod_terminating")
    assert "being deleted" in out["error"]
    fresh = kube.mint(kube.objects["pods"][("shop-prod", "cart-ending")])
    status, out = sign(issuer, fresh, "retail-service-cert")
    assert status in (401, 403) and "certificate_chain" not in out, out


def test_a_deleted_pods_token_is_refused_while_tokenreview_still_caches_it(world):
    """Real TokenReview answers `authenticated: true` for ~10 s after the pod is deleted (its
    cache, modelled by the double): only the issuer's own pod check stops the token then."""
    kube, issuer = world
    pod = kube.add_pod("shop-prod", "cart-cached", "cart", {"app": "cart"}, PROD)
    token = kube.mint(pod)
    assert sign(issuer, token, "retail-service-cert")[0] == 200
    kube.delete_pod("shop-prod", "cart-cached")
    if issuer.env["ISSUER_TOKEN_VERIFIER"] == "tokenreview":  # JWKS never asked the API server
        assert kube.review({"spec": {"token": token, "audiences": ["sds-injector"]}})["status"]["authenticated"]
    _wait_refused(issuer, token, "pod_gone")


def test_the_namespace_environment_label_is_applied_at_signing_too(world):
    """A pod that skipped the webhook cannot pick another environment than its namespace's
    label permits; one without an env annotation gets the labelled one."""
    kube, issuer = world
    kube.add_namespace("bank-prod", {"sds-injector.io/env": "prod"})
    plain = kube.add_pod("bank-prod", "teller-1", "teller", {"app": "teller"}, {"sds-injector.io/business-line": "retail"})
    status, out = harness.wait_for(lambda: (a := sign(issuer, kube.mint(plain), "retail-service-cert"))[0] == 200 and a,
                                   what="the issuer seeing the namespace label")
    assert "prod" in leaf_of(out).issuer.rfc4514_string()
    other = kube.add_pod("bank-prod", "teller-2", "teller", {"app": "teller"},
                         {"sds-injector.io/env": "dev", "sds-injector.io/business-line": "retail"})
    status, out = sign(issuer, kube.mint(other), "retail-service-cert")
    assert (status, out["reason"]) == (403, "env_not_in_namespace"), out


def test_junk_tokens_cost_the_api_server_nothing(world):
    """Anyone on the pod network can send tokens: 500 junk ones caused 500 TokenReviews. Now
    what can be refused from the token itself (shape, audience, expiry, subject, pod binding)
    never reaches the API server; the genuine token is reviewed once."""
    kube, issuer = world
    pod = kube.add_pod("shop-prod", "cart-junk", "cart", {"app": "cart"}, PROD)
    junk = ["hello", "a.b.c", kube.mint(pod, audience="vault"), kube.mint(pod, ttl=-120),
            kube.mint(pod, sub="system:node:n1"), kube.mint(pod, **{"kubernetes.io": {"namespace": "shop-prod"}})]
    reviews = lambda: sum(1 for m, p in kube.requests if m == "POST" and p.endswith("/tokenreviews"))  # noqa: E731
    before = reviews()
    for i in range(100):
        status, out = sign(issuer, junk[i % len(junk)], "retail-service-cert")
        assert status == 401 and "certificate_chain" not in out, out
    if issuer.env["ISSUER_TOKEN_VERIFIER"] == "tokenreview":
        assert reviews() == before, "junk reached the API server"
        assert sign(issuer, kube.mint(pod), "retail-service-cert")[0] == 200
        assert reviews() == before + 1


def test_one_pod_cannot_hammer_the_issuer(tmp_path):
    """One pod's valid token got 1,000 certificates in 5 s. Now a token bucket per pod: past its
    burst a 429 with Retry-After, which the agent's issuer source reports for its renewer;
    another pod is not affected."""
    import asyncio

    from sds_core.sds import material
    from sds_core.sds.settings import AgentSettings
    from sds_core.sds.sources.base import SecretSpec, SourceError
    from sds_core.sds.sources.issuer import IssuerSource

    kube = KubeAPI().start()
    # One token a minute: however slow this machine, the burst is not refilled between requests.
    issuer = IssuerRun(tmp_path, kube, CONFIG, verifier="jwks", pod_issuance_burst=3,
                       pod_issuance_per_minute=1).start()
    try:
        hot = kube.add_pod("shop-prod", "hot-1", "cart", {"app": "cart"}, PROD)
        for _ in range(3):
            assert sign(issuer, kube.mint(hot), "retail-service-cert")[0] == 200
        status, out = sign(issuer, kube.mint(hot), "retail-service-cert")
        assert (status, out["reason"]) == (429, "rate_limited") and "retry in" in out["error"], out
        other = kube.add_pod("shop-prod", "calm-1", "cart", {"app": "cart"}, PROD)
        assert sign(issuer, kube.mint(other), "retail-service-cert")[0] == 200
        token = tmp_path / "token"
        token.write_text(kube.mint(hot))
        src = IssuerSource(AgentSettings(source="issuer", issuer_address=issuer.address,
                                         issuer_ca=issuer.ca_pem.decode(), issuer_token_file=token))
        with pytest.raises(SourceError) as e:
            asyncio.run(src.fetch(SecretSpec("retail-service-cert", material.TLS_CERTIFICATE)))
        assert e.value.reason == "rate_limited" and 20 <= e.value.retry_after <= 61, e.value.retry_after
    finally:
        issuer.stop()
        kube.stop()


def test_the_renewer_waits_as_long_as_the_source_asked():
    import random

    from sds_core.sds.cache import SecretCache
    from sds_core.sds.renewal import Renewer
    from sds_core.sds.settings import AgentSettings
    from sds_core.sds.sources.base import SecretSpec

    s = AgentSettings(certificates=["a"])
    r = Renewer(s, SecretCache(), [SecretSpec("a", "tls_certificate")], {})
    r.rng = random.Random(1)
    r._not_before["a"] = 120.0
    assert r._next_delay(SecretSpec("a", "tls_certificate"), failures=1) == 120.0
    assert r._next_delay(SecretSpec("a", "tls_certificate"), failures=1) < 120.0  # once, then backoff again


def test_readiness_follows_whether_the_api_server_accepts_the_issuers_credentials(tmp_path):
    """With its credentials revoked every CSR got a 503 while /readyz said ready. Now: unready
    once the API server has refused them for api_refused_seconds, ready again when it accepts
    them (found by a cheap probe: an unready replica receives no traffic that would tell)."""
    kube = KubeAPI().start()
    issuer = IssuerRun(tmp_path, kube, CONFIG, verifier="tokenreview", api_refused_seconds=1).start()
    try:
        pod = kube.add_pod("shop-prod", "cart-r", "cart", {"app": "cart"}, PROD)
        assert issuer.get("/readyz")[0] == 200
        kube.mode = "unauthorized"
        assert sign(issuer, kube.mint(pod), "retail-service-cert")[0] == 503
        harness.wait_for(lambda: sign(issuer, kube.mint(pod), "retail-service-cert")
                         and issuer.get("/readyz")[0] == 503, timeout=10, what="unready")
        kube.mode = "ok"
        harness.wait_for(lambda: issuer.get("/readyz")[0] == 200, timeout=10, what="ready again")
        assert sign(issuer, kube.mint(pod), "retail-service-cert")[0] == 200
    finally:
        issuer.stop()
        kube.stop()


def test_junk_cannot_grow_the_audit_without_bound(tmp_path):
    """500 junk requests wrote 500 audit records (183 KB). Refusals are still all counted, but
    audited at most 20 a minute per reason and caller; a later record says how many were not."""
    kube = KubeAPI().start()
    issuer = IssuerRun(tmp_path, kube, CONFIG, verifier="jwks").start()
    try:
        for _ in range(100):
            assert sign(issuer, "not-a-jwt", "retail-service-cert")[0] == 401
        records = [json.loads(x) for x in issuer.audit_file.read_text().splitlines()]
        refused = [r for r in records if r["decision"] == "refused" and r["reason"] == "token_malformed"]
        assert len(refused) == 20, len(refused)
        metrics = issuer.get("/metrics", ops=True)[1].decode()
        assert 'sds_issuer_requests_refused_total{reason="token_malformed"} 100.0' in metrics
    finally:
        issuer.stop()
        kube.stop()


def test_forged_tokens_cost_a_few_reviews_per_address_then_nothing(tmp_path):
    """A well-formed token with a real pod's claims but the attacker's own signature passes every
    local check: only a TokenReview refuses it, and 200 of them cost 200 reviews. After 5 refusals
    by the API server, an address gets 429 without a review until its bucket refills."""
    from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys

    kube = KubeAPI().start()
    issuer = IssuerRun(tmp_path, kube, CONFIG).start()
    try:
        pod = kube.add_pod("shop-prod", "cart-forged", "cart", {"app": "cart"}, PROD)
        forged = kube.mint(pod, key=rsa_keys.generate_private_key(public_exponent=65537, key_size=2048))
        reviews = lambda: sum(1 for m, p in kube.requests if m == "POST" and p.endswith("/tokenreviews"))  # noqa: E731
        codes = [sign(issuer, forged, "retail-service-cert") for _ in range(50)]
        assert [s for s, _ in codes[:5]] == [401] * 5 and {s for s, _ in codes[5:]} == {429}, codes
        assert codes[-1][1]["reason"] == "source_rate_limited"
        assert reviews() == 5, reviews()
    finally:
        issuer.stop()
        kube.stop()
