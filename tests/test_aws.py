"""The AWS source against moto's server mode (a separate process speaking the AWS wire protocol
on loopback: Secrets Manager, KMS, ACM PCA, IAM). What moto does not emulate, and so is not
proven here, is in docs/aws.md: resource-level IAM evaluation, KMS key state on Secrets Manager
reads, throttling (a front double answers ThrottlingException), AWS's own latency and quotas."""
from __future__ import annotations

import asyncio
import json
import time

import pytest
from botocore.exceptions import ClientError
from cryptography import x509

from devkit import envoy_configs as cfg
from devkit.harness import free_port, wait_for
from devkit.moto import TEST_CREDENTIALS, MotoServer, Throttler
from sds_core.pki.ca import LocalCA
from sds_core.sds import material
from sds_core.sds.settings import AgentSettings
from sds_core.sds.sources.aws import AwsSource, classify
from sds_core.sds.sources.base import SecretSpec, SourceError
from tests.test_istio_mode import served

CERT, TRUST = "retail-service-cert", "retail-trust-bundle"
REGIONS = ["us-east-1", "us-west-2"]
SPEC, TRUST_SPEC = SecretSpec(CERT, material.TLS_CERTIFICATE), SecretSpec(TRUST, material.VALIDATION_CONTEXT)


@pytest.fixture
def moto(tmp_path, monkeypatch):
    for k, v in TEST_CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    server = MotoServer(tmp_path).start()
    yield server
    server.stop()


def settings(urls: list[str], **kw) -> AgentSettings:
    return AgentSettings(source="aws", namespace="shop", service_account="web", service="web", env="dev",
                         aws_regions=REGIONS[:len(urls)], aws_endpoint_urls=urls,
                         aws_timeout_seconds=1.0, **kw)


def fetch(src: AwsSource, spec: SecretSpec = SPEC) -> material.SecretMaterial:
    return asyncio.run(src.fetch(spec))


def put_pair(moto: MotoServer, ca: LocalCA, name: str = "shop/retail-service-cert", kms_key: str | None = None,
             region: str = REGIONS[0]):
    """A certificate and key as a platform team stores them: JSON, KMS-encrypted."""
    issued = ca.issue("web.shop.svc", dns_names=["web.shop.svc"], uris=["spiffe://cluster.local/ns/shop/sa/web"])
    body = json.dumps({"certificate": issued.chain_pem.decode(), "private_key": issued.key_pem.decode()})
    sm = moto.client("secretsmanager", region)
    try:
        sm.put_secret_value(SecretId=name, SecretString=body)
    except ClientError:
        sm.create_secret(Name=name, SecretString=body, **({"KmsKeyId": kms_key} if kms_key else {}))
    return x509.load_pem_x509_certificate(issued.chain_pem).serial_number


def test_a_new_secret_version_reaches_a_real_envoy_without_restart(moto, procs, tmp_path):
    ca = LocalCA.generate("team CA")
    key = moto.client("kms", REGIONS[0]).create_key(Description="shop certificates")["KeyMetadata"]["KeyId"]
    first = put_pair(moto, ca, kms_key=key)
    agent = procs.agent(source="aws", namespace="shop", certificates=CERT, aws_regions=REGIONS[0],
                        aws_endpoint_urls=moto.url, aws_poll_seconds="0.3")
    port = free_port()
    envoy = procs.envoy(cfg.tls_server(agent.socket, port, CERT), "server")
    envoy.wait_live()
    assert served(port).serial_number == first
    pid = envoy.p.pid
    second = put_pair(moto, ca)  # a rotation: a new version becomes AWSCURRENT
    wait_for(lambda: served(port).serial_number == second, 15, what="the new version served")
    assert envoy.p.pid == pid and envoy.p.poll() is None, "no restart"


def test_the_trust_bundle_keeps_the_previous_ca_while_a_rotation_propagates(moto):
    old, new = LocalCA.generate("old CA"), LocalCA.generate("new CA")
    sm = moto.client("secretsmanager", REGIONS[0])
    sm.create_secret(Name="shop/retail-trust-bundle", SecretString=old.cert_pem.decode())
    src = AwsSource(settings([moto.url]))
    assert fetch(src, TRUST_SPEC).trusted_ca == old.cert_pem
    sm.put_secret_value(SecretId="shop/retail-trust-bundle", SecretString=json.dumps({"ca_chain": new.cert_pem.decode()}))
    both = x509.load_pem_x509_certificates(fetch(src, TRUST_SPEC).trusted_ca)
    assert {c.subject.rfc4514_string() for c in both} == {"CN=old CA", "CN=new CA"}


def test_private_ca_issues_for_a_key_made_here_and_renews(moto):
    pca = moto.client("acm-pca", REGIONS[0])
    arn = pca.create_certificate_authority(CertificateAuthorityType="ROOT", CertificateAuthorityConfiguration={
        "KeyAlgorithm": "EC_prime256v1", "SigningAlgorithm": "SHA256WITHECDSA",
        "Subject": {"CommonName": "dev private CA"}})["CertificateAuthorityArn"]
    csr = pca.get_certificate_authority_csr(CertificateAuthorityArn=arn)["Csr"]
    root = pca.issue_certificate(CertificateAuthorityArn=arn, Csr=csr.encode(), SigningAlgorithm="SHA256WITHECDSA",
                                 TemplateArn="arn:aws:acm-pca:::template/RootCACertificate/V1",
                                 Validity={"Value": 5, "Type": "YEARS"})["CertificateArn"]
    pca.import_certificate_authority_certificate(CertificateAuthorityArn=arn, Certificate=pca.get_certificate(
        CertificateAuthorityArn=arn, CertificateArn=root)["Certificate"].encode())
    src = AwsSource(settings([moto.url], aws_mode="pca", aws_pca_arn=arn))
    assert src.issues(SPEC)
    first = fetch(src)
    leaf, ca_cert = x509.load_pem_x509_certificates(first.certificate_chain)
    leaf.verify_directly_issued_by(ca_cert)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cluster.local/ns/shop/sa/web"]
    assert "web.shop.svc.cluster.local" in san.get_values_for_type(x509.DNSName)
    renewed = fetch(src)
    assert renewed.serial != first.serial and renewed.private_key != first.private_key, "a new key each time"
    trust = x509.load_pem_x509_certificates(fetch(src, TRUST_SPEC).trusted_ca)
    assert [c.subject for c in trust] == [ca_cert.subject]


def test_access_denied_names_the_action_and_the_role(tmp_path, monkeypatch):
    """moto enforcing IAM (after the set-up's own requests): a role whose policy lacks
    secretsmanager:GetSecretValue is refused, and the error says so and where to fix it."""
    for k, v in TEST_CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    server = MotoServer(tmp_path, enforce_iam_after=4).start()
    try:
        iam = server.client("iam", REGIONS[0])
        iam.create_user(UserName="shop-agent")
        key = iam.create_access_key(UserName="shop-agent")["AccessKey"]
        iam.put_user_policy(UserName="shop-agent", PolicyName="kms-only", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*"}]}))
        server.client("secretsmanager", REGIONS[0]).create_secret(Name="shop/retail-service-cert", SecretString="{}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        monkeypatch.delenv("AWS_SESSION_TOKEN")
        with pytest.raises(SourceError) as e:
            fetch(AwsSource(settings([server.url])))
        assert e.value.reason == "permission_denied"
        assert "secretsmanager:GetSecretValue" in str(e.value) and "IAM role" in str(e.value)
    finally:
        server.stop()


def test_a_deleted_secret_is_named_and_the_agent_keeps_its_cached_certificate(moto, procs):
    ca = LocalCA.generate("team CA")
    serial = put_pair(moto, ca)
    src = AwsSource(settings([moto.url]))
    fetch(src)
    moto.client("secretsmanager", REGIONS[0]).delete_secret(SecretId="shop/retail-service-cert", RecoveryWindowInDays=7)
    with pytest.raises(SourceError) as e:
        fetch(src)
    assert e.value.reason == "deleted" and "RestoreSecret" in str(e.value)
    # The running agent: the certificate stays served, the agent says the source withdrew it.
    put_ok = moto.client("secretsmanager", REGIONS[0])
    put_ok.restore_secret(SecretId="shop/retail-service-cert")
    agent = procs.agent(source="aws", namespace="shop", certificates=CERT, aws_regions=REGIONS[0],
                        aws_endpoint_urls=moto.url, aws_poll_seconds="0.3", static_refresh_seconds="0.3")
    port = free_port()
    procs.envoy(cfg.tls_server(agent.socket, port, CERT), "server").wait_live()
    put_ok.delete_secret(SecretId="shop/retail-service-cert", RecoveryWindowInDays=7)
    wait_for(lambda: "deleted" in json.dumps(agent.status()[1]), 10, what="the deletion reported")
    assert served(port).serial_number == serial


def test_throttling_moves_to_the_next_region_and_backs_off(moto):
    ca = LocalCA.generate("team CA")
    for region in REGIONS:  # replicated, as Secrets Manager replicas are
        put_pair(moto, ca, region=region)
    throttler = Throttler(moto.url)
    try:
        throttler.count = 100
        alone = AwsSource(settings([throttler.url]))
        with pytest.raises(SourceError) as e:
            fetch(alone)
        assert e.value.reason == "throttled" and e.value.retry_after and e.value.retry_after > 0
        # Two regions, the first throttling: the second answers, and the first is skipped a while.
        both = AwsSource(settings([throttler.url, moto.url], aws_down_seconds=30))
        throttled = throttler.throttled
        fetch(both)
        fetch(both)
        assert throttler.throttled == throttled + 1, "the throttling region was skipped after its refusal"
    finally:
        throttler.stop()


def test_an_outage_fails_over_fast_and_recovers(moto, tmp_path):
    ca = LocalCA.generate("team CA")
    for region in REGIONS:
        put_pair(moto, ca, region=region)
    dead = f"http://127.0.0.1:{free_port()}"
    src = AwsSource(settings([dead, moto.url], aws_down_seconds=0.5))
    t = time.monotonic()
    assert fetch(src).serial
    assert time.monotonic() - t < 3
    moto.pause()
    try:
        t = time.monotonic()
        with pytest.raises(SourceError) as e:
            fetch(src)
        assert e.value.reason == "unavailable" and time.monotonic() - t < 5
    finally:
        moto.resume()
    time.sleep(0.6)
    assert fetch(src).serial, "back once the endpoint answers"


@pytest.mark.parametrize("code,reason", [("KMSDisabledException", "kms_unusable"), ("DecryptionFailure", "kms_unusable"),
                                         ("ResourceNotFoundException", "missing"),
                                         ("ExpiredTokenException", "auth_failed")])
def test_errors_moto_does_not_produce_are_named_too(code, reason):
    e = ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": 400}}, "GetSecretValue")
    assert classify("x", "secretsmanager:GetSecretValue s", e).reason == reason
