"""Checks before a certificate is put in place (``xmpp-gateway cert install``)."""

from __future__ import annotations

import contextlib
import datetime as dt
import warnings
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from gateway.auth.devcerts import atomic_write, certificates_to_pem, key_to_pem
from gateway.auth.identity import check_identity
from gateway.config.model import GatewayConfig

EXPIRY_WARNING = dt.timedelta(days=30)


class CertificateRefused(Exception):
    """Why a certificate cannot be used; ``needs_chain`` when its chain does not reach a
    trusted root (each command says what to do about it in its own options)."""

    def __init__(self, message: str, *, needs_chain: bool = False) -> None:
        super().__init__(message)
        self.needs_chain = needs_chain


def _load_certs(path: Path) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CertificateRefused(f"{path}: not a PEM certificate file ({exc})") from None
    return certs


def _trust_store(config: GatewayConfig) -> list[x509.Certificate]:
    roots: list[x509.Certificate] = []
    if config.tls.ca_file is not None and Path(config.tls.ca_file).exists():
        roots += _load_certs(Path(config.tls.ca_file))
    if config.tls.use_system_cas:
        import ssl

        paths = ssl.get_default_verify_paths()
        if paths.cafile and Path(paths.cafile).exists():
            with contextlib.suppress(ValueError), warnings.catch_warnings():
                # Some system bundles hold legacy roots with non-positive serials.
                warnings.simplefilter("ignore")
                roots += x509.load_pem_x509_certificates(Path(paths.cafile).read_bytes())
    return roots


def verify_chain(config: GatewayConfig, leaf: x509.Certificate,
                 intermediates: list[x509.Certificate]) -> None:
    """Raise CertificateRefused unless leaf + intermediates verify to a trusted root."""
    roots = _trust_store(config)
    if not roots:
        raise CertificateRefused("no trusted roots configured (tls.ca_file / system CAs) "
                                 "to verify the chain against")
    now = dt.datetime.now(dt.UTC)
    # The chain alone: verified for a name the leaf carries, so that a name mismatch
    # (reported on its own, with the names) is not reported twice as a chain problem.
    try:
        names = leaf.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    name = next((n for n in names if "*" not in n), config.domains[0].encode("idna").decode())
    verifier = PolicyBuilder().store(Store(roots)).time(now).build_server_verifier(
        x509.DNSName(name))
    try:
        verifier.verify(leaf, [c for c in intermediates if c != leaf])
    except VerificationError as exc:
        raise CertificateRefused(f"the chain does not verify to a trusted root ({exc})",
                                 needs_chain=True) from None


def check_and_install(config: GatewayConfig, cert_path: Path, key_path: Path | None,
                      chain_path: Path | None) -> list[str]:
    certs = _load_certs(cert_path)
    leaf, intermediates = certs[0], certs[1:]
    if chain_path is not None:
        intermediates += _load_certs(chain_path)
    key_path = key_path or Path(config.tls.key)
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CertificateRefused(f"cannot read private key {key_path}: {exc}") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != \
            leaf.public_key().public_bytes(serialization.Encoding.DER, public):
        raise CertificateRefused(f"the key {key_path} does not match the certificate {cert_path}")
    now = dt.datetime.now(dt.UTC)
    if leaf.not_valid_after_utc <= now:
        raise CertificateRefused(f"the certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
    if leaf.not_valid_before_utc > now:
        raise CertificateRefused(
            f"the certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d}")
    for domain in config.domains:
        identity = check_identity(leaf, domain)
        if not identity.ok:
            raise CertificateRefused(f"it does not cover served domain {domain}: "
                                     f"{identity.reason}")
    verify_chain(config, leaf, intermediates)
    report = []
    if leaf.not_valid_after_utc - now < EXPIRY_WARNING:
        report.append(f"warning: the certificate expires on {leaf.not_valid_after_utc:%Y-%m-%d}")
    atomic_write(Path(config.tls.certificate), certificates_to_pem([leaf, *intermediates]))
    atomic_write(Path(config.tls.key), key_to_pem(key), mode=0o600)  # type: ignore[arg-type]
    report.append(f"installed {config.tls.certificate} and {config.tls.key}; "
                  "next: `xmpp-gateway reload` to use them, then `xmpp-gateway check certs`")
    return report
