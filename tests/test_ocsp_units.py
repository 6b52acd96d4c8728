"""What the agent refuses to staple, and the issuer's responder answers (no network)."""
from __future__ import annotations

import datetime as dt

import pytest
from cryptography.x509 import ocsp as x509_ocsp

from sds_core.pki import ocsp
from sds_core.sds.material import tls_certificate, with_staple
from sds_core.sds.sources.issuer import new_key, private_pem
from webhook.issuer import serials
from webhook.issuer.authority import Authority, Layout
from webhook.issuer.ocsp import respond

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def pki():
    a = Authority.generate(Layout(("prod", "dev")))
    ca = a.ca("prod")

    def leaf():
        key = new_key("ec")
        cert = ca.sign(key.public_key(), "x", ["x"], ["spiffe://cluster.local/ns/a/sa/b"], [], ttl=dt.timedelta(hours=1),
                       serial=serials.mint(ca, serials.Identity("a", "b", "uid-b")))  # as the issuer signs
        return cert, key
    return a, ca, leaf


def test_a_good_response_staples_and_changes_the_version(pki):
    a, ca, leaf = pki
    cert, key = leaf()
    st = ocsp.parse(respond(a, ocsp.request(cert, ca.cert)), cert, ca.cert, NOW)
    assert st.status == ocsp.GOOD and st.next_update > NOW
    from cryptography.hazmat.primitives import serialization

    chain = cert.public_bytes(serialization.Encoding.PEM) + ca.cert_pem
    m = tls_certificate(chain, private_pem(key))
    stapled = with_staple(m, st.der, st.next_update)
    assert stapled.digest != m.digest and stapled.to_proto("n").tls_certificate.ocsp_staple.inline_bytes == st.der
    assert with_staple(stapled, b"", None).digest == m.digest  # unstapled again: the original version


def _good_response(cert, names, signer) -> bytes:
    """A GOOD response for `cert`'s serial naming `names`' hashes, signed by `signer`."""
    from cryptography.hazmat.primitives import hashes, serialization

    req = x509_ocsp.load_der_ocsp_request(ocsp.request(cert, names.cert))
    return x509_ocsp.OCSPResponseBuilder().add_response_by_hash(
        req.issuer_name_hash, req.issuer_key_hash, cert.serial_number, req.hash_algorithm,
        x509_ocsp.OCSPCertStatus.GOOD, NOW, NOW + dt.timedelta(hours=1), None, None,
    ).responder_id(x509_ocsp.OCSPResponderEncoding.HASH, signer.cert).sign(signer.key, hashes.SHA256()).public_bytes(
        serialization.Encoding.DER)


@pytest.mark.parametrize("case", ["other_certificate", "other_ca", "other_issuer_hashes", "stale", "garbage",
                                  "unauthorized"])
def test_responses_that_must_not_be_stapled(pki, case):
    a, ca, leaf = pki
    cert, _ = leaf()
    if case == "other_certificate":
        other, _ = leaf()
        der, reason = respond(a, ocsp.request(other, ca.cert)), "wrong_certificate"
    elif case == "other_ca":
        # Same serial and hashes, signed by another environment's CA: a forged staple.
        der, reason = _good_response(cert, names=ca, signer=a.ca("dev")), "bad_signature"
    elif case == "other_issuer_hashes":
        # Signed by the real issuer, same serial, but naming another CA's hashes: docs/ocsp.md
        # promised a hash check that the code did not make.
        der, reason = _good_response(cert, names=a.ca("dev"), signer=ca), "wrong_certificate"
    elif case == "stale":
        der, reason = respond(a, ocsp.request(cert, ca.cert), at=NOW - dt.timedelta(hours=3)), "stale"
    elif case == "garbage":
        der, reason = b"\x30\x03\x0a\x01\x00junk", "malformed"
    else:
        der, reason = respond(Authority.generate(Layout(("prod",))), ocsp.request(cert, ca.cert)), \
            "responder_error"
    with pytest.raises(ocsp.StapleError) as e:
        ocsp.parse(der, cert, ca.cert, NOW)
    assert e.value.reason == reason


def test_issuer_answers_malformed_requests_with_an_ocsp_error(pki):
    a, _, _ = pki
    resp = x509_ocsp.load_der_ocsp_response(respond(a, b"not a request"))
    assert resp.response_status == x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_a_fresh_good_response_replaces_the_staple_only_when_it_matters():
    """Every poll got a newly signed response (new thisUpdate) and pushed a new secret version
    and an audit line although nothing had changed. Now: only with no staple, or with less
    than half a response's validity window left on the served one."""
    from sds_core.sds.stapling import needs_restaple

    fresh = ocsp.Staple(b"new", ocsp.GOOD, NOW, NOW + dt.timedelta(hours=1))
    assert needs_restaple(b"", None, fresh, NOW)                                          # nothing stapled
    assert not needs_restaple(b"old", NOW + dt.timedelta(minutes=50), fresh, NOW)          # plenty left
    assert needs_restaple(b"old", NOW + dt.timedelta(minutes=20), fresh, NOW)              # under half the window
    assert not needs_restaple(b"old", NOW + dt.timedelta(minutes=5),
                              ocsp.Staple(b"new", ocsp.GOOD, NOW, None), NOW)              # no nextUpdate: no fresher


def test_the_responder_says_unknown_for_a_serial_it_never_issued_and_signs_each_answer_once(pki):
    """It answered GOOD for 0xdeadbeef and signed a fresh response per request (12 clients got
    53,907 signatures in 12 s). Now: unknown for serials without the issuer's tag (checked by any
    replica, no shared state), and one signature per serial per half validity."""
    a, ca, leaf = pki
    cert, _ = leaf()
    forged = ca.sign(new_key("ec").public_key(), "y", ["y"], [], [], serial=0xDEADBEEF)
    unknown = x509_ocsp.load_der_ocsp_response(respond(a, ocsp.request(forged, ca.cert)))
    assert unknown.certificate_status == x509_ocsp.OCSPCertStatus.UNKNOWN
    at = dt.datetime.now(dt.UTC)  # not the module's NOW: the suite may have run for minutes since
    first = respond(a, ocsp.request(cert, ca.cert), at=at)
    assert x509_ocsp.load_der_ocsp_response(first).certificate_status == x509_ocsp.OCSPCertStatus.GOOD
    assert all(respond(a, ocsp.request(cert, ca.cert), at=at + dt.timedelta(minutes=i / 2)) == first
               for i in range(50)), "signed again within half the validity"
    later = respond(a, ocsp.request(cert, ca.cert), at=at + dt.timedelta(minutes=31))
    assert later != first  # past half the validity: a fresh response
    assert serials.issued_by(ca, cert.serial_number) and not serials.issued_by(a.ca("dev"), cert.serial_number)
