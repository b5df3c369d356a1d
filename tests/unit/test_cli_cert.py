"""cert request / selfsigned / install."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth import devcerts
from gateway.cli.main import main

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"
XMPP_ADDR = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.5")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "conf" / "gateway.yaml"
    path.parent.mkdir()
    shutil.copy(EXAMPLE, path)
    return path


def test_request_rsa_with_every_domain(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "req"
    assert main(["-c", str(config), "cert", "request", "--out-dir", str(out),
                 "--extra-san", "xmpp.gateway.localhost"]) == 0
    csr = x509.load_pem_x509_csr((out / "gateway.csr").read_bytes())
    key = csr.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["gateway.localhost",
                                                      "xmpp.gateway.localhost"]
    assert [o.type_id for o in sans.get_values_for_type(x509.OtherName)] == [XMPP_ADDR]
    assert (out / "gateway.key").stat().st_mode & 0o777 == 0o600
    assert main(["-c", str(config), "cert", "request", "--out-dir", str(out)]) == 1  # no clobber


def test_request_ec_and_small_rsa_refused(config: Path, tmp_path: Path) -> None:
    assert main(["-c", str(config), "cert", "request", "--key-type", "ec", "--out-dir",
                 str(tmp_path / "ec")]) == 0
    csr = x509.load_pem_x509_csr((tmp_path / "ec" / "gateway.csr").read_bytes())
    assert isinstance(csr.public_key(), ec.EllipticCurvePublicKey)
    assert main(["-c", str(config), "cert", "request", "--rsa-bits", "1024", "--out-dir",
                 str(tmp_path / "small")]) == 2


def _issue(tmp_path: Path, domains: list[str], *, expired: bool = False):
    ca, ca_key = devcerts.make_ca("install test CA")
    now = dt.datetime.now(dt.UTC)
    kwargs = {"not_before": now - dt.timedelta(days=10),
              "not_after": now - dt.timedelta(days=1)} if expired else {}
    cert, key = devcerts.issue_certificate(ca, ca_key, domains, **kwargs)
    devcerts.write_key_and_cert(tmp_path / "new.crt", tmp_path / "new.key", cert, key)
    (tmp_path / "conf" / "ca.pem").write_bytes(devcerts.certificates_to_pem([ca]))
    return cert


def _use_ca(config: Path) -> None:
    config.write_text(config.read_text().replace("ca_file: ../certs/ca.crt", "ca_file: ca.pem")
                      .replace("use_system_cas: true", "use_system_cas: false")
                      .replace("../certs/gateway", "installed"))


def test_install_success_and_refusals(config: Path, tmp_path: Path, capsys) -> None:
    _use_ca(config)
    installed = config.parent / "installed.crt"
    _issue(tmp_path, ["other.example"])
    assert main(["-c", str(config), "cert", "install", str(tmp_path / "new.crt"),
                 str(tmp_path / "new.key")]) == 2
    assert "does not cover served domain gateway.localhost" in capsys.readouterr().err
    _issue(tmp_path, ["gateway.localhost"], expired=True)
    assert main(["-c", str(config), "cert", "install", str(tmp_path / "new.crt"),
                 str(tmp_path / "new.key")]) == 2
    assert "expired" in capsys.readouterr().err
    _issue(tmp_path, ["gateway.localhost"])
    other_key = devcerts.generate_private_key("ec")
    (tmp_path / "wrong.key").write_bytes(devcerts.key_to_pem(other_key))
    assert main(["-c", str(config), "cert", "install", str(tmp_path / "new.crt"),
                 str(tmp_path / "wrong.key")]) == 2
    assert "does not match" in capsys.readouterr().err
    assert not installed.exists()
    (config.parent / "ca.pem").write_bytes(devcerts.certificates_to_pem(
        [devcerts.make_ca("unrelated")[0]]))
    assert main(["-c", str(config), "cert", "install", str(tmp_path / "new.crt"),
                 str(tmp_path / "new.key")]) == 2
    assert "does not verify to a trusted root" in capsys.readouterr().err
    _issue(tmp_path, ["gateway.localhost"])
    assert main(["-c", str(config), "cert", "install", str(tmp_path / "new.crt"),
                 str(tmp_path / "new.key")]) == 0
    assert installed.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert (config.parent / "installed.key").stat().st_mode & 0o777 == 0o600


SRV_NAME = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.7")


def _sans(path: Path) -> x509.SubjectAlternativeName:
    cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_lab_ca_issues_for_the_gateway_and_for_partners(config: Path, capsys) -> None:
    """`cert ca` keeps its key; `cert issue` signs the gateway's certificate (where tls.*
    point) and partners' (crt, key, and a PEM with both for ejabberd), named by DNS-ID and
    SRV-ID (RFC 6120 §13.7.1.2, RFC 6125), each verifying with the CA for its domain."""
    from cryptography.x509.verification import PolicyBuilder, Store

    certs = config.parent.parent / "certs"
    assert main(["-c", str(config), "cert", "ca"]) == 0
    out = capsys.readouterr().out
    assert f"wrote the CA \"gateway.localhost lab CA\": {certs / 'ca.crt'}" in out
    assert "give " + str(certs / "ca.crt") + " to each partner's server" in out
    assert (certs / "ca.key").stat().st_mode & 0o777 == 0o600
    assert main(["-c", str(config), "cert", "ca"]) == 1  # partners may trust it already
    assert "use --force to replace it" in capsys.readouterr().err

    assert main(["-c", str(config), "cert", "issue"]) == 0
    assert "wrote the gateway's certificate" in capsys.readouterr().out
    sans = _sans(certs / "gateway.crt")
    assert sans.get_values_for_type(x509.DNSName) == ["gateway.localhost"]
    assert [o.type_id for o in sans.get_values_for_type(x509.OtherName)] == [SRV_NAME]
    assert (certs / "gateway.key").stat().st_mode & 0o777 == 0o600

    assert main(["-c", str(config), "cert", "issue", "fabrikam.example",
                 "conference.fabrikam.example", "--xmpp-addr"]) == 0
    out = capsys.readouterr().out
    assert 'ejabberd: certfiles: ["fabrikam.example.pem"]' in out
    assert 'ssl = { certificate = "fabrikam.example.crt"; key = "fabrikam.example.key" }' in out
    sans = _sans(certs / "fabrikam.example.crt")
    assert sans.get_values_for_type(x509.DNSName) == ["fabrikam.example",
                                                      "conference.fabrikam.example"]
    assert sorted(str(o.type_id.dotted_string) for o in
                  sans.get_values_for_type(x509.OtherName)) == sorted(
        [SRV_NAME.dotted_string, XMPP_ADDR.dotted_string] * 2)
    pem = (certs / "fabrikam.example.pem").read_bytes()
    assert b"BEGIN CERTIFICATE" in pem and b"PRIVATE KEY" in pem
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    for name, domain in (("gateway.crt", "gateway.localhost"),
                         ("fabrikam.example.crt", "fabrikam.example")):
        leaf = x509.load_pem_x509_certificates((certs / name).read_bytes())[0]
        verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(
            x509.DNSName(domain))
        verifier.verify(leaf, [])  # raises when it does not verify
    assert main(["-c", str(config), "cert", "issue", "fabrikam.example"]) == 1  # no clobber


def test_issue_needs_the_ca(config: Path, capsys) -> None:
    assert main(["-c", str(config), "cert", "issue", "fabrikam.example"]) == 1
    assert "make the CA first with `xmpp-gateway cert ca`" in capsys.readouterr().err


def test_request_says_what_next_and_import_takes_its_key(config: Path, tmp_path: Path,
                                                          capsys) -> None:
    """`cert request` keeps the new key apart (the one in use keeps working) and says what
    to do next; `cert import` of what the CA returns finds that key by itself."""
    _use_ca(config)
    assert main(["-c", str(config), "cert", "request"]) == 0
    out = capsys.readouterr().out
    pending = config.parent / "request"
    assert f"send {pending / 'gateway.csr'} to your CA" in out
    assert "xmpp-gateway cert import CERTIFICATE.pem --chain CHAIN.pem" in out
    assert "xmpp-gateway reload" in out
    ca, ca_key = devcerts.make_ca("public-like CA")
    (config.parent / "ca.pem").write_bytes(devcerts.certificates_to_pem([ca]))
    csr = x509.load_pem_x509_csr((pending / "gateway.csr").read_bytes())
    now = dt.datetime.now(dt.UTC)
    signed = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(ca.subject)
              .public_key(csr.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(hours=1))
              .not_valid_after(now + dt.timedelta(days=90))
              .add_extension(csr.extensions.get_extension_for_class(
                  x509.SubjectAlternativeName).value, critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                  ca.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    (tmp_path / "signed.crt").write_bytes(devcerts.certificates_to_pem([signed]))
    assert main(["-c", str(config), "cert", "import", str(tmp_path / "signed.crt")]) == 0
    assert "next: `xmpp-gateway reload`" in capsys.readouterr().out
    assert (config.parent / "installed.crt").read_bytes().startswith(b"-----BEGIN")


def test_import_refusal_names_its_own_option(config: Path, tmp_path: Path, capsys) -> None:
    _use_ca(config)
    _issue(tmp_path, ["gateway.localhost"])
    (config.parent / "ca.pem").write_bytes(devcerts.certificates_to_pem(
        [devcerts.make_ca("unrelated")[0]]))
    assert main(["-c", str(config), "cert", "import", str(tmp_path / "new.crt"),
                 str(tmp_path / "new.key")]) == 2
    err = capsys.readouterr().err
    assert "does not verify to a trusted root" in err
    assert "hint: give the CA's intermediate certificates with --chain FILE" in err


def _intermediate(root, root_key):
    """An intermediate CA under ``root``, as public CAs issue from."""
    key = devcerts.generate_private_key("ec")
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "Issuing CA R3")])
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(root.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                root_ski), critical=False)
            .sign(root_key, hashes.SHA256()))
    return cert, key


def test_import_a_public_ca_certificate_with_its_chain(config: Path, tmp_path: Path,
                                                        capsys) -> None:
    """The CA's root is trusted (system store, here tls.ca_file), its intermediate comes
    with the certificate: without it the import is refused and says which option brings
    it; with --chain (or a full-chain file) it is installed leaf first."""
    _use_ca(config)
    # A root that allows one intermediate below it (make_ca's roots allow none).
    root_key = devcerts.generate_private_key("ec")
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "Public Root X1")])
    now = dt.datetime.now(dt.UTC)
    root = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()),
                           critical=False)
            .sign(root_key, hashes.SHA256()))
    (config.parent / "ca.pem").write_bytes(devcerts.certificates_to_pem([root]))
    issuing, issuing_key = _intermediate(root, root_key)
    leaf, leaf_key = devcerts.issue_certificate(issuing, issuing_key, ["gateway.localhost"],
                                                key_type="ec",
                                                extended_key_usages=("serverAuth",))
    devcerts.write_key_and_cert(tmp_path / "leaf.crt", tmp_path / "leaf.key", leaf, leaf_key)
    (tmp_path / "chain.pem").write_bytes(devcerts.certificates_to_pem([issuing]))
    assert main(["-c", str(config), "cert", "import", str(tmp_path / "leaf.crt"),
                 str(tmp_path / "leaf.key")]) == 2
    assert "hint: give the CA's intermediate certificates with --chain FILE" in \
        capsys.readouterr().err
    assert main(["-c", str(config), "cert", "import", str(tmp_path / "leaf.crt"),
                 str(tmp_path / "leaf.key"), "--chain", str(tmp_path / "chain.pem")]) == 0
    installed = x509.load_pem_x509_certificates((config.parent / "installed.crt").read_bytes())
    assert installed == [leaf, issuing]  # leaf first, then the intermediate
