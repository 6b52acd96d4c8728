"""Trust distribution without pod specs: the issuer keeps its serving CA in a ConfigMap of every
enabled namespace; agents mount it and re-read it. Rotating the issuer's serving certificate to a
new CA (what cert-manager does when its CA rotates) keeps running agents renewing, with no pod
re-created; an agent given the CA inline (as pod specs carried it before) cannot."""
from __future__ import annotations

import datetime as dt
import signal
import time
from pathlib import Path

import pytest

from devkit.harness import wait_for
from devkit.issuer_run import IssuerRun
from devkit.kube_api import KubeAPI
from sds_core.pki.ca import LocalCA

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "config.yaml"
PROD = {"sds-injector.io/env": "prod", "sds-injector.io/business-line": "retail"}
CM = ("shop-prod", "sds-injector-issuer-ca")


def rotate_serving_certificate(issuer: IssuerRun, workdir: Path) -> LocalCA:
    """A new serving CA and certificate, written where the issuer reads them (as a renewed
    cert-manager Certificate's Secret is updated in the issuer's volume)."""
    new_ca = LocalCA.generate("issuer serving CA, rotated")
    served = new_ca.issue("localhost", dns_names=["localhost"], ttl=dt.timedelta(days=1))
    (workdir / "issuer.key").write_bytes(served.key_pem)
    (workdir / "issuer.crt").write_bytes(served.chain_pem)
    (workdir / "serving-ca.crt").write_bytes(new_ca.cert_pem)
    return new_ca


def test_rotating_the_issuers_serving_ca_keeps_running_agents_renewing(procs, tmp_path):
    kube = KubeAPI().start()
    kube.label_namespace("shop-prod", {"sds-injector.io/injection": "enabled"})
    issuer = IssuerRun(tmp_path, kube, CONFIG, verifier="jwks", ca_publish_seconds=0.5).start()
    try:
        published = wait_for(lambda: kube.objects["configmaps"].get(CM), what="the issuer CA published")
        mounted = tmp_path / "mounted-ca.crt"  # the agent's view of the ConfigMap volume
        mounted.write_text(published["data"]["ca.crt"])
        pod = kube.add_pod("shop-prod", "web-1", "web", {"app": "web"}, PROD)
        token = tmp_path / "token"
        token.write_text(kube.mint(pod))
        common = dict(source="issuer", certificates="retail-service-cert", issuer_address=issuer.address,
                      issuer_token_file=str(token), retry_initial_seconds=0.2, retry_max_seconds=0.5)
        agent = procs.agent(issuer_ca_file=str(mounted), **common)
        inline = procs.agent(name="inline", issuer_ca=published["data"]["ca.crt"], **common)  # as pod specs had it
        for a in (agent, inline):
            a.wait_ready()
        new_ca = rotate_serving_certificate(issuer, tmp_path)
        wait_for(lambda: kube.objects["configmaps"][CM]["data"]["ca.crt"] == new_ca.cert_pem.decode(),
                 what="the rotated CA published")
        mounted.write_text(kube.objects["configmaps"][CM]["data"]["ca.crt"])  # the kubelet's sync
        time.sleep(1.5)  # the issuer reloads its certificate within a second
        before = {a: a.certificate_updates() for a in (agent, inline)}
        for a in (agent, inline):
            a.p.send_signal(signal.SIGHUP)  # renew now
        wait_for(lambda: agent.certificate_updates() > before[agent], 15, what="the mounting agent renewed")
        time.sleep(2)
        assert inline.certificate_updates() == before[inline], "an agent pinned to the old CA cannot reach the issuer"
        assert inline.status()[1]["degraded"], inline.status()
    finally:
        issuer.stop()
        kube.stop()


def test_an_owner_edit_of_the_published_ca_is_undone(tmp_path):
    kube = KubeAPI().start()
    kube.label_namespace("shop-prod", {"sds-injector.io/injection": "enabled"})
    issuer = IssuerRun(tmp_path, kube, CONFIG, verifier="jwks", ca_publish_seconds=0.3).start()
    try:
        wait_for(lambda: kube.objects["configmaps"].get(CM), what="the issuer CA published")
        kube.update_configmap(*CM, data={"ca.crt": "attacker's CA"}, immutable=True)  # pinned, even
        wait_for(lambda: kube.objects["configmaps"][CM]["data"]["ca.crt"] == issuer.ca_pem.decode(), 15,
                 what="the published CA restored")
        assert not kube.objects["configmaps"][CM].get("immutable")
    finally:
        issuer.stop()
        kube.stop()


@pytest.mark.parametrize("labels", [{}, {"sds-injector.io/injection": "disabled"}])
def test_nothing_is_published_where_injection_is_not_enabled(tmp_path, labels):
    kube = KubeAPI().start()
    kube.add_namespace("other", labels)
    kube.label_namespace("shop-prod", {"sds-injector.io/injection": "enabled"})
    issuer = IssuerRun(tmp_path, kube, CONFIG, verifier="jwks", ca_publish_seconds=0.3).start()
    try:
        wait_for(lambda: kube.objects["configmaps"].get(CM), what="the issuer CA published")
        assert ("other", CM[1]) not in kube.objects["configmaps"]
    finally:
        issuer.stop()
        kube.stop()
