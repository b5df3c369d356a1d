"""DANE (RFC 7673 / RFC 7671): the pure TLSA match, and the outbound core checking it as
soon as TLS is up (bytes between two cores, no DNS: the records are given)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.auth import devcerts
from gateway.dns.dane import (
    DaneExpectation,
    DanePolicy,
    TlsaAnswer,
    TlsaRecord,
    precheck,
    tlsa_name,
    verify,
)
from gateway.xmpp.events import PairAuthenticated, PairFailed
from gateway.xmpp.outbound import OutboundStream
from testbed.pki import Pki
from tests.unit.s2s_world import CoreServer, World, partner

NAME = "_5269._tcp.xmpp.b.example"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(Path(tmp_path_factory.mktemp("pki")))


def der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.DER)


def spki_sha256(certificate: x509.Certificate) -> bytes:
    return hashlib.sha256(certificate.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).digest()


def expect(policy: DanePolicy, *records: TlsaRecord, secure: bool = True) -> DaneExpectation:
    return DaneExpectation(policy, TlsaAnswer(NAME, records, secure))


@pytest.fixture(scope="module")
def chain() -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
    """(leaf for b.example, its CA, an unrelated CA)."""
    ca, ca_key = devcerts.make_ca("DANE test CA", key_type="ec")
    other, _ = devcerts.make_ca("someone else", key_type="ec")
    leaf, _key = devcerts.issue_certificate(ca, ca_key, ["b.example"], key_type="ec")
    return leaf, ca, other


def test_dane_ee_spki_match_authenticates_without_pkix(chain: tuple) -> None:
    leaf, ca, _ = chain
    record = TlsaRecord(3, 1, 1, spki_sha256(leaf))
    verdict = verify(expect(DanePolicy.REQUIRED, record), [der(leaf), der(ca)],
                     pkix_ok=False, name_ok=False)  # RFC 7671 §5.1: no name, no PKIX
    assert verdict.ok and verdict.authenticated and "DANE-EE" in verdict.reason


@pytest.mark.parametrize("selector, mtype", [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2)])
def test_every_selector_and_matching_type(chain: tuple, selector: int, mtype: int) -> None:
    leaf = chain[0]
    data = der(leaf) if selector == 0 else leaf.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    data = {0: data, 1: hashlib.sha256(data).digest(), 2: hashlib.sha512(data).digest()}[mtype]
    assert TlsaRecord(3, selector, mtype, data).matches(der(leaf))
    assert not TlsaRecord(3, selector, mtype, data).matches(der(chain[1]))


def test_wrong_record_refuses_even_when_pkix_is_fine(chain: tuple) -> None:
    leaf, ca, other = chain
    verdict = verify(expect(DanePolicy.OPPORTUNISTIC, TlsaRecord(3, 1, 1, spki_sha256(other))),
                     [der(leaf), der(ca)], pkix_ok=True, name_ok=True)
    assert not verdict.ok and verdict.reason == (
        f"DANE: the certificate matches none of the 1 TLSA records at {NAME}")


def test_dane_ta_needs_the_chain_and_the_name(chain: tuple) -> None:
    leaf, ca, other = chain
    record = TlsaRecord(2, 0, 1, hashlib.sha256(der(ca)).digest())
    good = verify(expect(DanePolicy.REQUIRED, record), [der(leaf), der(ca)], pkix_ok=False,
                  name_ok=True)
    assert good.ok and good.authenticated and "DANE-TA" in good.reason
    assert not verify(expect(DanePolicy.REQUIRED, record), [der(leaf), der(ca)],
                      pkix_ok=False, name_ok=False).ok
    # The anchor shown next to a leaf it did not sign authenticates nothing.
    stranger, _ = devcerts.issue_certificate(other, devcerts.make_ca("x", key_type="ec")[1],
                                             ["b.example"], key_type="ec")
    assert not verify(expect(DanePolicy.REQUIRED, record), [der(stranger), der(ca)],
                      pkix_ok=False, name_ok=True).ok


def test_pkix_usages_add_to_pkix(chain: tuple) -> None:
    leaf, ca, _ = chain
    ee = TlsaRecord(1, 0, 1, hashlib.sha256(der(leaf)).digest())
    ta = TlsaRecord(0, 0, 1, hashlib.sha256(der(ca)).digest())
    for record in (ee, ta):
        ok = verify(expect(DanePolicy.REQUIRED, record), [der(leaf), der(ca)], pkix_ok=True,
                    name_ok=True)
        assert ok.ok and not ok.authenticated
        assert not verify(expect(DanePolicy.REQUIRED, record), [der(leaf), der(ca)],
                          pkix_ok=False, name_ok=True).ok


def test_without_usable_secure_records(chain: tuple) -> None:
    leaf = chain[0]
    record = TlsaRecord(3, 1, 1, spki_sha256(leaf))
    insecure = expect(DanePolicy.OPPORTUNISTIC, record, secure=False)
    verdict = verify(insecure, [der(leaf)], pkix_ok=True, name_ok=True)
    assert verdict.ok and not verdict.authenticated  # PKIX as before
    unusable = expect(DanePolicy.OPPORTUNISTIC, TlsaRecord(4, 1, 1, b"x"))
    assert verify(unusable, [der(leaf)], pkix_ok=True, name_ok=True).ok
    required = expect(DanePolicy.REQUIRED, record, secure=False)
    refused = precheck(required)
    assert refused is not None and not refused.ok
    assert refused.reason == (f"DANE required but no usable TLSA at {NAME}: "
                              "the answer is not DNSSEC-validated")
    assert precheck(expect(DanePolicy.REQUIRED, record)) is None
    assert verify(None, [], pkix_ok=False, name_ok=False).ok


def test_tlsa_name() -> None:
    assert tlsa_name("xmpp.b.example.", 5269) == NAME


# ---------------------------------------------------------------------------- in the core


def dane_world(pki: Pki, record_for: str, policy: DanePolicy, *,
               trusts: bool) -> tuple[World, OutboundStream]:
    """a.example connects to b.example with TLSA records of ``record_for``'s certificate;
    ``trusts``: whether a.example's CA store knows b.example's CA (PKIX)."""
    world = World()
    a = world.add(CoreServer("a.example", [partner("b.example", "required", "required",
                                                   dialback=False)],
                             pki.tls_settings("a.example", trusts_peers=trusts)))
    world.add(CoreServer("b.example", [partner("a.example", "required", "required",
                                               dialback=False)],
                         pki.tls_settings("b.example")))
    certificate = x509.load_pem_x509_certificate(
        Path(pki.tls_settings(record_for).certificate).read_bytes())
    expectation = expect(policy, TlsaRecord(3, 1, 1, spki_sha256(certificate)))
    out = OutboundStream(a.ctx, local_domain="a.example", remote_domain="b.example",
                         partner=a.ctx.partner_for("b.example"), now=world.now,
                         dane_expectation=expectation)
    world.connect(a, out, world.servers["b.example"])
    world.run()
    return world, out


def test_matching_tlsa_authenticates_a_certificate_pkix_would_refuse(pki: Pki) -> None:
    world, out = dane_world(pki, "b.example", DanePolicy.REQUIRED, trusts=False)
    assert str(out.method) == "SASL over TLS"
    assert out.dane_verdict is not None and out.dane_verdict.authenticated
    assert world.of("a.example", PairAuthenticated)


def test_wrong_tlsa_refuses_the_target(pki: Pki) -> None:
    world, out = dane_world(pki, "a.example", DanePolicy.REQUIRED, trusts=True)
    assert out.closed and not out.pairs
    [failed] = world.of("a.example", PairFailed)
    assert failed.reason == f"DANE: the certificate matches none of the 1 TLSA records at {NAME}"
    # Nothing went over TLS: the stream header before STARTTLS is the last thing sent.
    assert world.plaintext_to("b.example").endswith(
        b'<starttls xmlns="urn:ietf:params:xml:ns:xmpp-tls"/>')
