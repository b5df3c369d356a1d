"""Building keys, certificates and CSRs for XMPP servers (docs/admin-guide.md, "Certificates").

Used by ``xmpp-gateway cert selfsigned`` / ``cert request`` and by the test suite, which
needs many realistic certificates: a development CA, leaves whose identities are DNS-IDs,
SRV-IDs and id-on-xmppAddr (RFC 6120 §13.7.1.4, RFC 6125 §6, RFC 7590 §3.1), with or
without the clientAuth EKU (public CAs stop issuing it), expired or not
yet valid ones.

XMPP identities that have no native ``GeneralName`` type are ``otherName`` values whose
content is a DER-encoded string:

* id-on-xmppAddr (OID 1.3.6.1.5.5.7.8.5, RFC 6120 §13.7.1.4) — ``UTF8String`` with the
  domain;
* SRVName (OID 1.3.6.1.5.5.7.8.7, RFC 4985) — ``IA5String`` ``_xmpp-server.DOMAIN``
  (RFC 6125 §6.5.1 ``_service.domain`` form, no ``_tcp``).

RSA is the default key type (what CAs and older peers expect, at least 2048 bits);
EC P-256 is much faster to generate, which the tests use.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from gateway.auth.identity import (
    ID_ON_DNSSRV,
    ID_ON_XMPPADDR,
    InvalidDomainError,
    a_label_domain,
)

__all__ = [
    "DEFAULT_CA_VALIDITY",
    "DEFAULT_LEAF_VALIDITY",
    "EKU_BY_NAME",
    "ID_ON_DNSSRV",
    "ID_ON_XMPPADDR",
    "KEY_TYPES",
    "CertificateBuildError",
    "PrivateKey",
    "atomic_write",
    "build_csr",
    "certificates_to_pem",
    "der_string",
    "generate_private_key",
    "issue_certificate",
    "key_to_pem",
    "make_ca",
    "self_signed_certificate",
    "to_a_label",
    "write_key_and_cert",
    "xmpp_general_names",
]

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


#: Names accepted in ``extended_key_usages`` (dotted OIDs are accepted as well).
EKU_BY_NAME: dict[str, ObjectIdentifier] = {
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "timeStamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "OCSPSigning": ExtendedKeyUsageOID.OCSP_SIGNING,
}

KEY_TYPES = ("rsa", "ec")
MIN_RSA_BITS = 2048
DEFAULT_LEAF_VALIDITY = dt.timedelta(days=365)
DEFAULT_CA_VALIDITY = dt.timedelta(days=3650)
# Start a little in the past so a peer whose clock is slightly behind still accepts it.
CLOCK_SKEW = dt.timedelta(hours=1)

# DER universal tags of the string types used in XMPP otherNames.
_TAG_UTF8STRING = 0x0C
_TAG_IA5STRING = 0x16


class CertificateBuildError(ValueError):
    """A request for a key/certificate/CSR that cannot be honoured (why is in the message)."""


# --------------------------------------------------------------------------- keys


def generate_private_key(key_type: str = "rsa", key_size: int = 2048) -> PrivateKey:
    """A new private key: RSA (``key_size`` >= 2048 bits) or EC on P-256."""
    if key_type == "rsa":
        if key_size < MIN_RSA_BITS:
            raise CertificateBuildError(
                f"RSA key size {key_size} is too small (minimum {MIN_RSA_BITS} bits)"
            )
        return rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise CertificateBuildError(f"unknown key type {key_type!r} (expected one of {KEY_TYPES})")


# --------------------------------------------------------------------------- names


def der_string(tag: int, text: str) -> bytes:
    """DER TLV of a universal string type (the content of an XMPP ``otherName``)."""
    body = text.encode("utf-8" if tag == _TAG_UTF8STRING else "ascii")
    return bytes([tag]) + _der_length(len(body)) + body


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(encoded)]) + encoded


def to_a_label(domain: str) -> str:
    """``domain`` in A-label (ASCII) form; a leading ``*.`` wildcard label is kept.

    Certificates carry IDNs as A-labels (RFC 6125 §6.4.2); ``idna`` implements IDNA 2008
    with UTS #46 mapping, so ``Bücher.example`` becomes ``xn--bcher-kva.example``.
    """
    try:
        return a_label_domain(domain)
    except InvalidDomainError as exc:
        raise CertificateBuildError(str(exc)) from exc


def xmpp_general_names(
    domains: Iterable[str], *, xmpp_addrs: bool = True, srv_names: bool = False
) -> list[x509.GeneralName]:
    """subjectAltName entries naming XMPP server ``domains``.

    One dNSName per domain (RFC 6125 DNS-ID, wildcards kept as given); an id-on-xmppAddr
    ``UTF8String`` per non-wildcard domain when ``xmpp_addrs`` (RFC 6120 §13.7.1.4: the
    xmppAddr carries the domain, IDN as U-label is allowed but we keep A-labels for
    interoperability); an SRV-ID ``_xmpp-server.DOMAIN`` per non-wildcard domain when
    ``srv_names`` (RFC 7590 §3.1; RFC 4985 SRVNames hold no wildcards).
    """
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for raw in domains:
        domain = to_a_label(raw)
        if domain in seen:
            continue
        seen.add(domain)
        names.append(x509.DNSName(domain))
        if xmpp_addrs and not domain.startswith("*."):
            names.append(x509.OtherName(ID_ON_XMPPADDR, der_string(_TAG_UTF8STRING, domain)))
        if srv_names and not domain.startswith("*."):
            names.append(
                x509.OtherName(ID_ON_DNSSRV, der_string(_TAG_IA5STRING, f"_xmpp-server.{domain}"))
            )
    return names


def _subject(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _eku_oids(extended_key_usages: Sequence[str]) -> list[ObjectIdentifier]:
    oids = []
    for usage in extended_key_usages:
        if usage in EKU_BY_NAME:
            oids.append(EKU_BY_NAME[usage])
        elif usage.replace(".", "").isdigit():
            oids.append(ObjectIdentifier(usage))
        else:
            raise CertificateBuildError(
                f"unknown extended key usage {usage!r} (known: {', '.join(EKU_BY_NAME)})"
            )
    return oids


# --------------------------------------------------------------------------- certificates


def _validity(
    not_before: dt.datetime | None, not_after: dt.datetime | None, default: dt.timedelta
) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    start = not_before if not_before is not None else now - CLOCK_SKEW
    end = not_after if not_after is not None else now + default
    if end <= start:
        raise CertificateBuildError(f"not_after ({end}) is not after not_before ({start})")
    return start, end


def _leaf_key_usage(key: PrivateKey) -> x509.KeyUsage:
    # RSA key exchange (TLS 1.2 RSA kx) needs keyEncipherment; ECDSA keys only sign.
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=is_rsa,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(
    common_name: str = "xmpp-gateway development CA",
    *,
    key_type: str = "rsa",
    key_size: int = 2048,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed root CA (BasicConstraints CA:TRUE pathlen 0, keyCertSign/cRLSign)."""
    key = generate_private_key(key_type, key_size)
    start, end = _validity(not_before, not_after, DEFAULT_CA_VALIDITY)
    name = _subject(common_name)
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf_builder(
    domains: Sequence[str],
    key: PrivateKey,
    *,
    xmpp_addrs: bool,
    srv_names: bool,
    extended_key_usages: Sequence[str],
    not_before: dt.datetime | None,
    not_after: dt.datetime | None,
    common_name: str | None,
) -> tuple[x509.CertificateBuilder, x509.Name]:
    """The parts common to CA-issued and self-signed leaves, and the subject name."""
    if not domains:
        raise CertificateBuildError("a server certificate needs at least one domain")
    start, end = _validity(not_before, not_after, DEFAULT_LEAF_VALIDITY)
    public_key = key.public_key()
    cn = common_name if common_name is not None else to_a_label(domains[0])
    subject = _subject(cn)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                xmpp_general_names(domains, xmpp_addrs=xmpp_addrs, srv_names=srv_names)
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if extended_key_usages:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(_eku_oids(extended_key_usages)), critical=False
        )
    return builder, subject


def issue_certificate(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    domains: Sequence[str],
    *,
    xmpp_addrs: bool = True,
    srv_names: bool = False,
    extended_key_usages: Sequence[str] = ("serverAuth", "clientAuth"),
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    key_type: str = "rsa",
    key_size: int = 2048,
    common_name: str | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """A server certificate for ``domains`` signed by ``ca_cert``/``ca_key``.

    ``extended_key_usages=()`` leaves the EKU extension out (any purpose);
    ``("serverAuth",)`` is the new public-CA profile.
    ``not_before``/``not_after`` are not clamped to the CA's validity, so tests can build
    expired and not-yet-valid certificates.
    """
    key = generate_private_key(key_type, key_size)
    builder, _subject = _leaf_builder(
        domains,
        key,
        xmpp_addrs=xmpp_addrs,
        srv_names=srv_names,
        extended_key_usages=extended_key_usages,
        not_before=not_before,
        not_after=not_after,
        common_name=common_name,
    )
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        builder.issuer_name(ca_cert.subject)
        .add_extension(_leaf_key_usage(key), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def self_signed_certificate(
    domains: Sequence[str],
    *,
    xmpp_addrs: bool = True,
    srv_names: bool = False,
    extended_key_usages: Sequence[str] = ("serverAuth", "clientAuth"),
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    key_type: str = "rsa",
    key_size: int = 2048,
    common_name: str | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """A single self-signed server certificate (its own trust anchor, for development).

    It carries no KeyUsage extension: OpenSSL refuses to treat a certificate as its own
    issuer when a KeyUsage without keyCertSign is present, and keyCertSign on a CA:FALSE
    certificate would contradict RFC 5280 §4.2.1.3.
    """
    key = generate_private_key(key_type, key_size)
    builder, subject = _leaf_builder(
        domains,
        key,
        xmpp_addrs=xmpp_addrs,
        srv_names=srv_names,
        extended_key_usages=extended_key_usages,
        not_before=not_before,
        not_after=not_after,
        common_name=common_name,
    )
    cert = builder.issuer_name(subject).sign(key, hashes.SHA256())
    return cert, key


def build_csr(
    key: PrivateKey,
    domains: Sequence[str],
    *,
    xmpp_addrs: bool = True,
    srv_names: bool = False,
    extra_sans: Sequence[str] = (),
    common_name: str | None = None,
    organization: str | None = None,
) -> x509.CertificateSigningRequest:
    """A CSR for ``domains``: CN = the first domain, a dNSName (and
    id-on-xmppAddr) SAN for every domain, plus ``extra_sans`` as additional dNSNames."""
    if not domains:
        raise CertificateBuildError("a CSR needs at least one domain")
    names = xmpp_general_names(domains, xmpp_addrs=xmpp_addrs, srv_names=srv_names)
    present = {n.value for n in names if isinstance(n, x509.DNSName)}
    for extra in extra_sans:
        label = to_a_label(extra)
        if label not in present:
            present.add(label)
            names.append(x509.DNSName(label))
    cn = common_name if common_name is not None else to_a_label(domains[0])
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_subject(cn, organization))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


# --------------------------------------------------------------------------- files


def key_to_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted with the best available scheme when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def certificates_to_pem(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``rename``.

    A reader (a hot reload) sees either the old or the new file, never a
    half-written one; the temporary file is created with ``mode`` from the start, so a
    private key is never readable by others, not even briefly.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_key_and_cert(
    cert_path: Path,
    key_path: Path,
    cert: x509.Certificate,
    key: PrivateKey,
    *,
    chain: Sequence[x509.Certificate] = (),
    passphrase: bytes | None = None,
) -> None:
    """Write the key (PEM, mode 0600) and the certificate file (leaf then ``chain``, PEM)."""
    atomic_write(Path(key_path), key_to_pem(key, passphrase), mode=0o600)
    atomic_write(Path(cert_path), certificates_to_pem([cert, *chain]), mode=0o644)
