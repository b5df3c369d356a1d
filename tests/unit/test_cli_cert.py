"""cert request / selfsigned / install."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from cryptography import x509
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
