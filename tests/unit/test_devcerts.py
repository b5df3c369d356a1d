"""Certificates built by gateway.auth.devcerts: contents, OpenSSL verification, files."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import crypto

from gateway.auth.devcerts import (
    ID_ON_DNSSRV,
    ID_ON_XMPPADDR,
    CertificateBuildError,
    build_csr,
    generate_private_key,
    issue_certificate,
    make_ca,
    self_signed_certificate,
    write_key_and_cert,
)


@pytest.fixture(scope="module")
def ca() -> tuple[x509.Certificate, object]:
    return make_ca("test CA", key_type="ec")


def _san(cert: x509.Certificate | x509.CertificateSigningRequest) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def _openssl_verify(trusted: list[x509.Certificate], leaf: x509.Certificate) -> None:
    store = crypto.X509Store()
    for cert in trusted:
        store.add_cert(crypto.X509.from_cryptography(cert))
    crypto.X509StoreContext(store, crypto.X509.from_cryptography(leaf)).verify_certificate()


def test_ca_is_a_ca(ca) -> None:
    cert, _ = ca
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert cert.issuer == cert.subject


def test_leaf_names_and_extensions(ca) -> None:
    ca_cert, ca_key = ca
    cert, key = issue_certificate(
        ca_cert,
        ca_key,
        ["a.example", "*.b.example", "Bücher.example"],
        srv_names=True,
        key_type="ec",
    )
    san = _san(cert)
    assert san.get_values_for_type(x509.DNSName) == [
        "a.example",
        "*.b.example",
        "xn--bcher-kva.example",
    ]
    others = {(o.type_id, o.value) for o in san.get_values_for_type(x509.OtherName)}
    assert (ID_ON_XMPPADDR, b"\x0c\x09a.example") in others
    assert (ID_ON_DNSSRV, b"\x16\x16_xmpp-server.a.example") in others
    # no xmppAddr / SRV-ID built from a wildcard
    assert not any(b"*" in value for _, value in others)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert cert.public_key() == key.public_key()
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert cert.subject.rfc4514_string() == "CN=a.example"
    _openssl_verify([ca_cert], cert)


def test_eku_choices(ca) -> None:
    ca_cert, ca_key = ca
    server_only, _ = issue_certificate(
        ca_cert, ca_key, ["a.example"], extended_key_usages=("serverAuth",), key_type="ec"
    )
    eku = server_only.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    no_eku, _ = issue_certificate(
        ca_cert, ca_key, ["a.example"], extended_key_usages=(), key_type="ec"
    )
    with pytest.raises(x509.ExtensionNotFound):
        no_eku.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    with pytest.raises(CertificateBuildError, match="unknown extended key usage 'bogus'"):
        issue_certificate(ca_cert, ca_key, ["a.example"], extended_key_usages=("bogus",))


def test_no_xmpp_addrs_and_custom_cn(ca) -> None:
    ca_cert, ca_key = ca
    cert, _ = issue_certificate(
        ca_cert,
        ca_key,
        ["a.example"],
        xmpp_addrs=False,
        common_name="other.example",
        key_type="ec",
    )
    assert _san(cert).get_values_for_type(x509.OtherName) == []
    assert cert.subject.rfc4514_string() == "CN=other.example"


def test_validity_window_is_honoured(ca) -> None:
    ca_cert, ca_key = ca
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    end = dt.datetime(2020, 6, 1, tzinfo=dt.UTC)
    cert, _ = issue_certificate(
        ca_cert, ca_key, ["a.example"], not_before=start, not_after=end, key_type="ec"
    )
    assert cert.not_valid_before_utc == start
    assert cert.not_valid_after_utc == end
    with pytest.raises(crypto.X509StoreContextError, match="certificate has expired"):
        _openssl_verify([ca_cert], cert)
    with pytest.raises(CertificateBuildError, match="is not after"):
        issue_certificate(ca_cert, ca_key, ["a.example"], not_before=end, not_after=start)


def test_self_signed_is_its_own_trust_anchor() -> None:
    cert, _key = self_signed_certificate(["c.example", "d.example"], key_type="ec")
    assert cert.issuer == cert.subject
    assert _san(cert).get_values_for_type(x509.DNSName) == ["c.example", "d.example"]
    _openssl_verify([cert], cert)
    with pytest.raises(crypto.X509StoreContextError):
        _openssl_verify([], cert)


def test_rsa_default_and_minimum() -> None:
    key = generate_private_key()
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    with pytest.raises(CertificateBuildError, match="too small"):
        generate_private_key("rsa", 1024)
    with pytest.raises(CertificateBuildError, match="unknown key type 'dsa'"):
        generate_private_key("dsa")
    with pytest.raises(CertificateBuildError, match="at least one domain"):
        self_signed_certificate([], key_type="ec")


def test_csr_contents() -> None:
    key = generate_private_key("ec")
    csr = build_csr(key, ["a.example", "b.example"], extra_sans=["xmpp.a.example", "a.example"])
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=a.example"
    san = _san(csr)
    assert san.get_values_for_type(x509.DNSName) == ["a.example", "b.example", "xmpp.a.example"]
    addrs = [o.value for o in san.get_values_for_type(x509.OtherName)]
    assert addrs == [b"\x0c\x09a.example", b"\x0c\x09b.example"]


def test_write_key_and_cert(tmp_path: Path, ca) -> None:
    ca_cert, ca_key = ca
    cert, key = issue_certificate(ca_cert, ca_key, ["a.example"], key_type="ec")
    cert_path, key_path = tmp_path / "sub" / "gw.crt", tmp_path / "sub" / "gw.key"
    write_key_and_cert(cert_path, key_path, cert, key, chain=[ca_cert])
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    loaded = x509.load_pem_x509_certificates(cert_path.read_bytes())
    assert loaded == [cert, ca_cert]
    loaded_key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert loaded_key.public_key() == cert.public_key()
    # encrypted key
    write_key_and_cert(cert_path, key_path, cert, key, passphrase=b"s3cret")
    assert b"ENCRYPTED PRIVATE KEY" in key_path.read_bytes()
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert serialization.load_pem_private_key(key_path.read_bytes(), b"s3cret")
    assert sorted(p.name for p in cert_path.parent.iterdir()) == ["gw.crt", "gw.key"]
