"""RFC 6125 / RFC 7590 identity checks on real certificates, and OpenSSL verify errors."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import crypto

from gateway.auth.devcerts import issue_certificate, make_ca, self_signed_certificate
from gateway.auth.identity import (
    ID_ON_DNSSRV,
    ID_ON_XMPPADDR,
    a_label_domain,
    check_identity,
    describe_verify_error,
    is_untrusted_issuer_error,
    presented_identities,
)

CA_CERT, CA_KEY = make_ca("identity test CA", key_type="ec")


def _utf8(text: str) -> bytes:
    body = text.encode()
    return bytes([0x0C, len(body)]) + body


def _ia5(text: str) -> bytes:
    body = text.encode("ascii")
    return bytes([0x16, len(body)]) + body


def xmpp_addr(domain: str) -> x509.OtherName:
    return x509.OtherName(ID_ON_XMPPADDR, _utf8(domain))


def srv_id(name: str) -> x509.OtherName:
    return x509.OtherName(ID_ON_DNSSRV, _ia5(name))


def cert_with(
    sans: Sequence[x509.GeneralName] | None, common_name: str = "cn.example"
) -> x509.Certificate:
    """A CA-signed certificate with exactly these SANs (None = no SAN extension)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else [])
        )
        .issuer_name(CA_CERT.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(CA_KEY, hashes.SHA256())


def dns(*names: str) -> list[x509.GeneralName]:
    return [x509.DNSName(n) for n in names]


# --------------------------------------------------------------------------- DNS-ID


def test_dns_id_matches_case_insensitively_and_ignores_trailing_dot() -> None:
    cert = cert_with(dns("xmpp.A.example"))
    result = check_identity(cert, "XMPP.a.example.")
    assert result.ok and result
    assert result.matched == "xmpp.A.example" and result.matched_type == "DNS-ID"
    assert result.reason == "DNS-ID xmpp.A.example matches XMPP.a.example."


def test_mismatch_reason_lists_presented_and_expected() -> None:
    cert, _ = issue_certificate(CA_CERT, CA_KEY, ["a.example", "xmpp.a.example"], key_type="ec")
    result = check_identity(cert, "b.example")
    assert not result.ok and not result
    assert result.matched is None
    assert result.reason == (
        "name mismatch (presented: a.example, xmpp.a.example; expected: b.example)"
    )


@pytest.mark.parametrize(
    ("presented", "reference", "ok"),
    [
        ("*.example.com", "a.example.com", True),
        ("*.EXAMPLE.com", "A.example.COM", True),
        ("*.example.com", "xn--bcher-kva.example.com", True),  # whole A-label, fine
        ("*.example.com", "example.com", False),  # '*' is exactly one label
        ("*.example.com", "a.b.example.com", False),  # only one label
        ("f*o.example.com", "foo.example.com", False),  # partial-label wildcard
        ("*o.example.com", "foo.example.com", False),
        ("xn--*.example.com", "xn--bcher-kva.example.com", False),  # inside an A-label
        ("a.*.example.com", "a.b.example.com", False),  # not left-most
        ("*.*.example.com", "a.b.example.com", False),
        ("*.com", "example.com", False),  # too broad
    ],
)
def test_wildcard_rules(presented: str, reference: str, ok: bool) -> None:
    result = check_identity(cert_with(dns(presented)), reference)
    assert result.ok is ok, result.reason
    if ok:
        assert result.matched == presented and result.matched_type == "DNS-ID"


def test_rejected_wildcard_is_explained() -> None:
    result = check_identity(cert_with(dns("f*o.example.com")), "foo.example.com")
    assert result.reason == (
        "name mismatch (presented: f*o.example.com; expected: foo.example.com); "
        "wildcard f*o.example.com ignored: '*' must be the complete left-most label"
    )


# --------------------------------------------------------------------------- SRV-ID, xmppAddr


def test_srv_id_for_xmpp_server() -> None:
    cert = cert_with([srv_id("_xmpp-server.b.example"), *dns("other.example")])
    result = check_identity(cert, "b.example")
    assert result.ok and result.matched_type == "SRV-ID"
    assert result.matched == "_xmpp-server.b.example"
    # also valid on direct TLS (XEP-0368 §3: validated as for STARTTLS)
    assert check_identity(cert, "b.example", direct_tls=True).ok


def test_srv_id_of_another_service_does_not_match() -> None:
    cert = cert_with([srv_id("_xmpp-client.b.example")])
    result = check_identity(cert, "b.example")
    assert not result.ok
    assert result.reason == (
        "name mismatch (presented: _xmpp-client.b.example; expected: b.example)"
    )
    assert presented_identities(cert).other_srv_ids == ("_xmpp-client.b.example",)


def test_xmpps_server_srv_id_only_on_direct_tls() -> None:
    cert = cert_with([srv_id("_xmpps-server.b.example")])
    on_starttls = check_identity(cert, "b.example")
    assert not on_starttls.ok
    assert "only accepted on a direct TLS connection" in on_starttls.reason
    on_direct = check_identity(cert, "b.example", direct_tls=True)
    assert on_direct.ok and on_direct.matched == "_xmpps-server.b.example"


def test_srv_id_never_takes_a_wildcard() -> None:
    cert = cert_with([srv_id("_xmpp-server.*.example.com")])
    assert not check_identity(cert, "a.example.com").ok


def test_xmpp_addr_matches() -> None:
    cert = cert_with([xmpp_addr("c.example")])
    result = check_identity(cert, "C.example")
    assert result.ok and result.matched_type == "xmppAddr" and result.matched == "c.example"
    assert not check_identity(cert_with([xmpp_addr("*.example.com")]), "a.example.com").ok


def test_dns_id_is_preferred_when_several_match() -> None:
    cert, _ = issue_certificate(CA_CERT, CA_KEY, ["a.example"], srv_names=True, key_type="ec")
    assert check_identity(cert, "a.example").matched_type == "DNS-ID"


def test_devcerts_certificate_presents_all_identifier_types() -> None:
    cert, _ = issue_certificate(
        CA_CERT, CA_KEY, ["a.example", "*.b.example"], srv_names=True, key_type="ec"
    )
    ids = presented_identities(cert)
    assert ids.dns_ids == ("a.example", "*.b.example")
    assert ids.srv_ids == ("a.example",)
    assert ids.xmpp_addrs == ("a.example",)
    assert ids.common_names == ("a.example",)
    assert ids.has_san_identifiers
    assert check_identity(cert, "conference.b.example").ok


# --------------------------------------------------------------------------- CN fallback


def test_cn_used_only_without_san() -> None:
    result = check_identity(cert_with(None, common_name="d.example"), "d.example")
    assert result.ok and result.matched_type == "CN-ID" and result.matched == "d.example"
    wildcard_cn = cert_with(None, common_name="*.d.example")
    assert check_identity(wildcard_cn, "x.d.example").ok
    assert not check_identity(wildcard_cn, "d.example").ok


def test_no_cn_fallback_when_sans_exist() -> None:
    cert = cert_with(dns("other.example"), common_name="d.example")
    result = check_identity(cert, "d.example")
    assert not result.ok
    assert result.reason == (
        "name mismatch (presented: other.example; expected: d.example); "
        "subject CN d.example not used because the certificate has subjectAltNames "
        "(RFC 6125 §6.4.4)"
    )


@pytest.mark.parametrize(
    "sans",
    [
        [xmpp_addr("other.example")],
        [srv_id("_xmpp-server.other.example")],
        [x509.UniformResourceIdentifier("xmpp:other.example")],
    ],
)
def test_every_identifier_san_type_disables_cn(sans: list[x509.GeneralName]) -> None:
    assert not check_identity(cert_with(sans, common_name="d.example"), "d.example").ok


def test_non_identifier_sans_keep_cn_fallback() -> None:
    cert = cert_with([x509.RFC822Name("admin@d.example")], common_name="d.example")
    result = check_identity(cert, "d.example")
    assert result.ok and result.matched_type == "CN-ID"


def test_cn_shown_when_it_is_all_there_is() -> None:
    result = check_identity(cert_with(None, common_name="d.example"), "e.example")
    assert result.reason == "name mismatch (presented: CN=d.example; expected: e.example)"
    nothing = check_identity(cert_with([x509.RFC822Name("a@b.example")], ""), "e.example")
    assert nothing.reason == "name mismatch (presented: no names; expected: e.example)"


# --------------------------------------------------------------------------- IDN


def test_idn_compared_as_a_labels() -> None:
    cert, _ = issue_certificate(CA_CERT, CA_KEY, ["Bücher.example"], key_type="ec")
    for reference in ("bücher.example", "BÜCHER.example", "xn--bcher-kva.example"):
        result = check_identity(cert, reference)
        assert result.ok, reference
        assert result.matched == "xn--bcher-kva.example"
    mismatch = check_identity(cert, "bucher.example")
    assert not mismatch.ok


def test_u_label_xmpp_addr_matches_a_label_reference() -> None:
    cert = cert_with([xmpp_addr("bücher.example")])
    result = check_identity(cert, "xn--bcher-kva.example")
    assert result.ok and result.matched == "bücher.example"


def test_mismatch_shows_a_label_of_an_idn_reference() -> None:
    result = check_identity(cert_with(dns("a.example")), "bücher.example")
    assert result.reason == (
        "name mismatch (presented: a.example; expected: bücher.example (xn--bcher-kva.example))"
    )


def test_invalid_reference_domain() -> None:
    result = check_identity(cert_with(dns("a.example")), "a..example\u0000")
    assert not result.ok
    assert result.reason.startswith("cannot check identity")
    assert not check_identity(cert_with(dns("*.example.com")), "*.example.com").ok
    assert not check_identity(cert_with(dns("a_b.example")), "a_b.example").ok
    assert not check_identity(cert_with(dns("-a.example")), "-a.example").ok
    assert a_label_domain("*.Bücher.Example.") == "*.xn--bcher-kva.example"


def test_malformed_other_names_are_reported_not_matched() -> None:
    bad = x509.OtherName(ID_ON_XMPPADDR, _ia5("d.example"))  # wrong string type
    result = check_identity(cert_with([bad]), "d.example")
    assert not result.ok
    assert "malformed id-on-xmppAddr" in result.reason


# --------------------------------------------------------------------------- verify errors


def _verify_error(
    trusted: Sequence[x509.Certificate],
    leaf: x509.Certificate,
    chain: Sequence[x509.Certificate] = (),
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> tuple[int, int, x509.Certificate]:
    """Run real OpenSSL chain verification and return (errno, depth, failing cert)."""
    store = crypto.X509Store()
    for cert in trusted:
        store.add_cert(crypto.X509.from_cryptography(cert))
    if crls:
        for crl in crls:
            store.add_crl(crl)
        store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
    context = crypto.X509StoreContext(
        store,
        crypto.X509.from_cryptography(leaf),
        [crypto.X509.from_cryptography(c) for c in chain],
    )
    with pytest.raises(crypto.X509StoreContextError) as info:
        context.verify_certificate()
    code, depth, _ = info.value.errors
    return code, depth, info.value.certificate.to_cryptography()


def test_expired_certificate() -> None:
    leaf, _ = issue_certificate(
        CA_CERT,
        CA_KEY,
        ["a.example"],
        key_type="ec",
        not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        not_after=dt.datetime(2021, 3, 4, 5, 6, 7, tzinfo=dt.UTC),
    )
    code, depth, cert = _verify_error([CA_CERT], leaf)
    assert (code, depth) == (10, 0)
    assert describe_verify_error(code, depth, cert) == (
        "certificate expired (peer certificate CN=a.example expired on 2021-03-04 05:06:07 UTC)"
    )


def test_not_yet_valid_certificate_given_as_pyopenssl_object() -> None:
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=30)
    leaf, _ = issue_certificate(
        CA_CERT,
        CA_KEY,
        ["a.example"],
        key_type="ec",
        not_before=start,
        not_after=start + dt.timedelta(days=1),
    )
    code, depth, _ = _verify_error([CA_CERT], leaf)
    assert code == 9
    message = describe_verify_error(code, depth, crypto.X509.from_cryptography(leaf))
    assert message == (
        "certificate not yet valid (peer certificate CN=a.example is valid from "
        f"{start.strftime('%Y-%m-%d %H:%M:%S')} UTC)"
    )


def test_unknown_issuer() -> None:
    other_ca, other_key = make_ca("Other CA", key_type="ec")
    leaf, _ = issue_certificate(other_ca, other_key, ["a.example"], key_type="ec")
    code, depth, cert = _verify_error([CA_CERT], leaf)
    assert code == 20 and is_untrusted_issuer_error(code)
    message = describe_verify_error(code, depth, cert)
    assert message.startswith(
        "issuer not trusted (issuer CN=Other CA of peer certificate CN=a.example is not among"
    )


def test_self_signed_peer_and_untrusted_root_in_chain() -> None:
    leaf, _ = self_signed_certificate(["s.example"], key_type="ec")
    code, depth, cert = _verify_error([CA_CERT], leaf)
    assert code == 18
    assert describe_verify_error(code, depth, cert) == (
        "issuer not trusted (self-signed peer certificate CN=s.example)"
    )
    other_ca, other_key = make_ca("Other CA", key_type="ec")
    leaf, _ = issue_certificate(other_ca, other_key, ["a.example"], key_type="ec")
    code, depth, cert = _verify_error([CA_CERT], leaf, chain=[other_ca])
    assert (code, depth) == (19, 1)
    assert describe_verify_error(code, depth, cert) == (
        "issuer not trusted (self-signed certificate CN=Other CA at depth 1 in the chain "
        "is not a trusted root)"
    )


def test_revoked_certificate() -> None:
    leaf, _ = issue_certificate(CA_CERT, CA_KEY, ["a.example"], key_type="ec")
    now = dt.datetime.now(dt.UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(CA_CERT.subject)
        .last_update(now - dt.timedelta(hours=1))
        .next_update(now + dt.timedelta(days=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(leaf.serial_number)
            .revocation_date(now - dt.timedelta(minutes=5))
            .build()
        )
        .sign(CA_KEY, hashes.SHA256())
    )
    code, depth, cert = _verify_error([CA_CERT], leaf, crls=[crl])
    assert code == 23
    assert describe_verify_error(code, depth, cert) == (
        f"certificate revoked (peer certificate CN=a.example, serial {leaf.serial_number:X})"
    )


def test_purpose_message_names_the_ekus() -> None:
    leaf, _ = issue_certificate(
        CA_CERT, CA_KEY, ["a.example"], extended_key_usages=("serverAuth",), key_type="ec"
    )
    assert describe_verify_error(26, 0, leaf) == (
        "unsupported certificate purpose (peer certificate CN=a.example; "
        "extended key usage: serverAuth)"
    )


def test_other_codes_name_the_openssl_error() -> None:
    leaf, _ = issue_certificate(CA_CERT, CA_KEY, ["a.example"], key_type="ec")
    assert describe_verify_error(22, 0, leaf) == (
        "certificate chain too long (peer certificate CN=a.example; OpenSSL X509 verify error 22)"
    )
    assert describe_verify_error(999, 2, leaf).startswith(
        "unknown verification error (CA certificate at depth 2"
    )
    with pytest.raises(TypeError):
        describe_verify_error(10, 0, "not a certificate")
