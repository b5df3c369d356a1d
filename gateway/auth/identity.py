"""Does a peer's certificate name the XMPP domain it claims? (RFC 6125, RFC 7590, XEP-0178)

Pure functions over a :class:`cryptography.x509.Certificate` — no TLS, no I/O — so the
S2S engine, ``check certs`` and the tests share one rule:

* **Identifiers considered** (RFC 6120 §13.7.2.1, RFC 7590 §3.1, RFC 6125 §6.4):
  DNS-ID (``dNSName``), SRV-ID (``SRVName`` otherName, RFC 4985) for the ``_xmpp-server``
  service, and ``id-on-xmppAddr`` (RFC 6120 §13.7.1.4). XEP-0368 §3 says direct TLS
  certificates are validated "the same way as for STARTTLS", so ``_xmpp-server`` SRV-IDs
  count on direct TLS too; an ``_xmpps-server`` SRV-ID is accepted only on a direct TLS
  connection (``direct_tls=True``), where it names exactly the service reached.
* **CN-ID fallback** only when the certificate carries *no* subjectAltName of the types
  DNS, SRV, URI or xmppAddr (RFC 6125 §6.4.4; a SAN of e-mail or IP only does not block
  it): a certificate with SANs is never accepted on its subject CN.
* **Wildcards** (RFC 6125 §6.4.3, with its SHOULD NOTs made hard rules): only a DNS-ID or
  CN-ID may hold one; it must be the complete left-most label (``*.example.com`` matches
  ``a.example.com`` but not ``example.com`` nor ``a.b.example.com``); partial-label
  wildcards (``f*o.example.com``, ``xn--*.example.com``, i.e. inside an A-label) never
  match; at least two labels must follow the wildcard (no ``*.com``).
* **Comparison** is case-insensitive on A-labels (RFC 6125 §6.4.2): internationalized
  names are converted with IDNA 2008 + UTS #46 (``idna``), so a U-label xmppAddr matches
  its A-label DNS-ID.

Trust (chain, expiry, revocation) is OpenSSL's job; :func:`describe_verify_error` turns its
error codes into precise reasons an administrator can act on ("certificate expired",
"issuer not trusted (...)").
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from gateway.domain import DomainError, to_a_labels
from gateway.xmpp.jid import Jid, JidError

#: id-on-xmppAddr, RFC 6120 §13.7.1.4.
ID_ON_XMPPADDR = ObjectIdentifier("1.3.6.1.5.5.7.8.5")
#: id-on-dnsSRV (SRVName), RFC 4985 §2.
ID_ON_DNSSRV = ObjectIdentifier("1.3.6.1.5.5.7.8.7")

XMPP_SERVER_SERVICE = "_xmpp-server"
XMPPS_SERVER_SERVICE = "_xmpps-server"  # XEP-0368 direct TLS

_TAG_UTF8STRING = 0x0C
# RFC 1123 §2.1 letter-digit-hyphen label (A-labels included); no leading/trailing hyphen.
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_TAG_IA5STRING = 0x16


class InvalidDomainError(ValueError):
    """A name that is not a valid (internationalized) domain name."""


def a_label_domain(name: str) -> str:
    """``name`` as a lower-case A-label domain without a trailing dot, the form in which
    certificates' names are compared (RFC 6125 §6.4.2).

    It is the gateway's one domain normal form (:func:`gateway.domain.normalize_domain`)
    written in A-labels, so a certificate is checked against exactly the domain the
    partner index and the JIDs name. A leading ``*.`` label is kept (for presented
    wildcards). Raises :class:`InvalidDomainError` for names IDNA 2008 rejects and for
    IP addresses in brackets (not DNS names).
    """
    name = name.strip()
    if name.startswith("*."):
        return "*." + a_label_domain(name[2:])
    try:
        ascii_name = to_a_labels(name)
    except DomainError as exc:
        raise InvalidDomainError(f"invalid domain name {name!r}: {exc}") from None
    if not all(_LDH_LABEL.fullmatch(label) for label in ascii_name.split(".")):
        raise InvalidDomainError(
            f"invalid domain name {name!r}: labels must be 1-63 letters, digits or hyphens"
        )
    return ascii_name


def _try_normalize(name: str) -> str | None:
    try:
        return a_label_domain(name)
    except InvalidDomainError:
        return None


def _xmpp_addr_domain(text: str) -> str | None:
    """The A-label domain an id-on-xmppAddr names when it is a server's JID (a domainpart
    alone, RFC 6120 §13.7.1.4), else None: a user's or resource's JID names no server."""
    try:
        jid = Jid.parse(text)
    except JidError:
        return None
    if jid.local or jid.resource:
        return None
    return _try_normalize(jid.domain)


# --------------------------------------------------------------------------- extraction


def decode_der_string(value: bytes, expected_tag: int) -> str | None:
    """The text of a DER string TLV (an ``otherName`` value), None if malformed."""
    if len(value) < 2 or value[0] != expected_tag:
        return None
    length, offset = value[1], 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or len(value) < 2 + count:
            return None
        length, offset = int.from_bytes(value[2 : 2 + count], "big"), 2 + count
    body = value[offset:]
    if len(body) != length:
        return None
    try:
        return body.decode("utf-8" if expected_tag == _TAG_UTF8STRING else "ascii")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True, slots=True)
class PresentedIdentities:
    """The identifiers a certificate presents, as found in it (RFC 6125 §1.8 terms).

    ``srv_ids`` are the domains of ``_xmpp-server`` SRV-IDs, ``xmpps_srv_ids`` those of
    ``_xmpps-server`` ones; ``other_srv_ids`` keeps any other SRVName verbatim (e.g.
    ``_xmpp-client.example``) for diagnostics. ``uri_ids`` matter only because their
    presence disables the CN fallback. ``problems`` lists what could not be parsed.
    """

    dns_ids: tuple[str, ...] = ()
    srv_ids: tuple[str, ...] = ()
    xmpps_srv_ids: tuple[str, ...] = ()
    other_srv_ids: tuple[str, ...] = ()
    xmpp_addrs: tuple[str, ...] = ()
    uri_ids: tuple[str, ...] = ()
    common_names: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def has_san_identifiers(self) -> bool:
        """True when a DNS/SRV/URI/xmppAddr SAN exists, which rules out CN-IDs."""
        return bool(
            self.dns_ids
            or self.srv_ids
            or self.xmpps_srv_ids
            or self.other_srv_ids
            or self.xmpp_addrs
            or self.uri_ids
        )

    def display(self) -> list[str]:
        """Every presented identifier once, in certificate order, for messages."""
        names: list[str] = []
        for name in (
            *self.dns_ids,
            *self.xmpp_addrs,
            *(f"{XMPP_SERVER_SERVICE}.{d}" for d in self.srv_ids),
            *(f"{XMPPS_SERVER_SERVICE}.{d}" for d in self.xmpps_srv_ids),
            *self.other_srv_ids,
            *self.uri_ids,
        ):
            if name not in names:
                names.append(name)
        if not self.has_san_identifiers:
            names.extend(f"CN={cn}" for cn in self.common_names if f"CN={cn}" not in names)
        return names


def presented_identities(cert: x509.Certificate) -> PresentedIdentities:
    """Extract the identifiers of ``cert`` that RFC 6125 / RFC 6120 §13.7 consider."""
    dns_ids: list[str] = []
    srv_ids: list[str] = []
    xmpps_srv_ids: list[str] = []
    other_srv_ids: list[str] = []
    xmpp_addrs: list[str] = []
    uri_ids: list[str] = []
    problems: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    except ValueError as exc:  # a malformed extension: report it, use no SAN identifiers
        san = None
        problems.append(f"unparseable extensions: {exc}")
    if san is not None:
        dns_ids.extend(san.get_values_for_type(x509.DNSName))
        uri_ids.extend(san.get_values_for_type(x509.UniformResourceIdentifier))
        for other in san.get_values_for_type(x509.OtherName):
            if other.type_id == ID_ON_XMPPADDR:
                text = decode_der_string(other.value, _TAG_UTF8STRING)
                if text is None:
                    problems.append("malformed id-on-xmppAddr (not a DER UTF8String)")
                else:
                    xmpp_addrs.append(text)
            elif other.type_id == ID_ON_DNSSRV:
                text = decode_der_string(other.value, _TAG_IA5STRING)
                if text is None:
                    problems.append("malformed SRVName (not a DER IA5String)")
                    continue
                service, _, domain = text.partition(".")
                if service.lower() == XMPP_SERVER_SERVICE and domain:
                    srv_ids.append(domain)
                elif service.lower() == XMPPS_SERVER_SERVICE and domain:
                    xmpps_srv_ids.append(domain)
                else:
                    other_srv_ids.append(text)
    try:
        common_names = [
            str(attr.value) for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
    except ValueError as exc:
        common_names = []
        problems.append(f"unparseable subject: {exc}")
    return PresentedIdentities(
        dns_ids=tuple(dns_ids),
        srv_ids=tuple(srv_ids),
        xmpps_srv_ids=tuple(xmpps_srv_ids),
        other_srv_ids=tuple(other_srv_ids),
        xmpp_addrs=tuple(xmpp_addrs),
        uri_ids=tuple(uri_ids),
        common_names=tuple(common_names),
        problems=tuple(problems),
    )


# --------------------------------------------------------------------------- matching


def wildcard_problem(presented: str) -> str | None:
    """Why a presented DNS name with a ``*`` can never match (None if it is acceptable).

    RFC 6125 §6.4.3: only a complete left-most ``*`` label is honoured here.
    """
    if "*" not in presented:
        return None
    labels = presented.split(".")
    if labels[0] != "*":
        return f"wildcard {presented} ignored: '*' must be the complete left-most label"
    if any("*" in label for label in labels[1:]):
        return f"wildcard {presented} ignored: '*' is only allowed in the left-most label"
    if len(labels) < 3:
        return f"wildcard {presented} ignored: too broad (needs two labels after '*')"
    return None


def dns_name_matches(presented: str, reference: str) -> bool:
    """RFC 6125 §6.4 match of one presented DNS-ID/CN-ID against a normalized reference."""
    normalized = _try_normalize(presented)
    if normalized is None:
        return False
    if "*" not in normalized:
        return normalized == reference
    if wildcard_problem(normalized) is not None:
        return False
    _, _, presented_rest = normalized.partition(".")
    ref_first, _, ref_rest = reference.partition(".")
    # '*' stands for exactly one whole, non-empty label: a.example.com, not example.com
    # nor a.b.example.com.
    return bool(ref_first) and ref_rest == presented_rest


def _exact_matches(presented: str, reference: str) -> bool:
    """SRV-ID comparison: no wildcards at all (RFC 6125 §6.5.1)."""
    if "*" in presented:
        return False
    return _try_normalize(presented) == reference


@dataclass(frozen=True, slots=True)
class IdentityCheck:
    """Outcome of :func:`check_identity`.

    ``matched`` is the presented identifier that matched, ``matched_type`` its kind
    (``"DNS-ID"``, ``"SRV-ID"``, ``"xmppAddr"`` or ``"CN-ID"``); ``reason`` is a log-ready
    sentence either way.
    """

    ok: bool
    domain: str
    reason: str
    matched: str | None = None
    matched_type: str | None = None
    presented: PresentedIdentities = field(default_factory=PresentedIdentities)

    def __bool__(self) -> bool:
        return self.ok


def check_identity(
    cert: x509.Certificate, domain: str, *, direct_tls: bool = False
) -> IdentityCheck:
    """Whether ``cert`` authenticates the XMPP server ``domain`` (RFC 6125 §6, RFC 7590).

    ``direct_tls``: the connection is XEP-0368 direct TLS, which additionally allows an
    ``_xmpps-server`` SRV-ID. Order of preference when several match: DNS-ID, SRV-ID,
    xmppAddr, then CN-ID (only without SAN identifiers).
    """
    ids = presented_identities(cert)
    try:
        reference = a_label_domain(domain)
    except InvalidDomainError as exc:
        return IdentityCheck(False, domain, f"cannot check identity: {exc}", presented=ids)
    if "*" in reference:
        return IdentityCheck(
            False, domain, f"cannot check identity: {domain!r} is not a domain", presented=ids
        )

    for name in ids.dns_ids:
        if dns_name_matches(name, reference):
            return _matched(domain, name, "DNS-ID", ids)
    srv_services = [(XMPP_SERVER_SERVICE, ids.srv_ids)]
    if direct_tls:
        srv_services.append((XMPPS_SERVER_SERVICE, ids.xmpps_srv_ids))
    for service, srv_domains in srv_services:
        for name in srv_domains:
            if _exact_matches(name, reference):
                return _matched(domain, f"{service}.{name}", "SRV-ID", ids)
    for name in ids.xmpp_addrs:
        if _xmpp_addr_domain(name) == reference:
            return _matched(domain, name, "xmppAddr", ids)
    if not ids.has_san_identifiers:
        for name in ids.common_names:
            if dns_name_matches(name, reference):
                return _matched(domain, name, "CN-ID", ids)

    return IdentityCheck(False, domain, _mismatch_reason(ids, domain, reference), presented=ids)


def _matched(domain: str, name: str, kind: str, ids: PresentedIdentities) -> IdentityCheck:
    return IdentityCheck(True, domain, f"{kind} {name} matches {domain}", name, kind, presented=ids)


def _mismatch_reason(ids: PresentedIdentities, domain: str, reference: str) -> str:
    shown = ids.display()
    expected = domain if reference == domain else f"{domain} ({reference})"
    reason = f"name mismatch (presented: {', '.join(shown) or 'no names'}; expected: {expected})"
    notes: list[str] = []
    for name in (*ids.dns_ids, *([] if ids.has_san_identifiers else ids.common_names)):
        problem = wildcard_problem(name)
        if problem:
            notes.append(problem)
    if ids.has_san_identifiers:
        cn_hits = [cn for cn in ids.common_names if dns_name_matches(cn, reference)]
        notes.extend(
            f"subject CN {cn} not used because the certificate has subjectAltNames "
            "(RFC 6125 §6.4.4)"
            for cn in cn_hits
        )
    if any(_exact_matches(name, reference) for name in ids.xmpps_srv_ids):
        notes.append(
            f"SRV-ID {XMPPS_SERVER_SERVICE}.{reference} is only accepted on a direct TLS "
            "connection (XEP-0368)"
        )
    notes.extend(ids.problems)
    if notes:
        reason += "; " + "; ".join(notes)
    return reason


# --------------------------------------------------------------------------- OpenSSL errors

# X509_V_ERR_* from OpenSSL 3's <openssl/x509_vfy.h>: code -> what it means to an admin.
_VERIFY_ERRORS: dict[int, str] = {
    1: "unspecified certificate verification error",
    2: "unable to get issuer certificate",
    3: "unable to get certificate revocation list",
    4: "unable to decrypt certificate signature",
    5: "unable to decrypt CRL signature",
    6: "unable to decode issuer public key",
    7: "certificate signature invalid",
    8: "CRL signature invalid",
    9: "certificate not yet valid",
    10: "certificate expired",
    11: "CRL not yet valid",
    12: "CRL expired",
    13: "malformed notBefore field",
    14: "malformed notAfter field",
    15: "malformed CRL lastUpdate field",
    16: "malformed CRL nextUpdate field",
    17: "out of memory during verification",
    18: "self-signed certificate",
    19: "self-signed certificate in chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    22: "certificate chain too long",
    23: "certificate revoked",
    24: "issuer certificate has no public key",
    25: "path length constraint exceeded",
    26: "unsupported certificate purpose",
    27: "certificate not trusted for this purpose",
    28: "certificate rejected",
    29: "subject issuer mismatch",
    30: "authority key identifier does not match issuer subject key identifier",
    31: "authority key identifier issuer/serial does not match",
    32: "issuer key usage does not include certificate signing",
    33: "unable to get CRL issuer certificate",
    34: "unhandled critical extension",
    35: "key usage does not include CRL signing",
    36: "unhandled critical CRL extension",
    37: "invalid non-CA certificate (has CA markings)",
    38: "proxy path length constraint exceeded",
    39: "key usage does not include digital signature",
    40: "proxy certificates not allowed",
    41: "invalid or inconsistent certificate extension",
    42: "invalid or inconsistent certificate policy extension",
    43: "no explicit policy",
    44: "different CRL scope",
    45: "unsupported extension feature",
    46: "RFC 3779 resource not subset of parent's resources",
    47: "permitted subtree violation (name constraints)",
    48: "excluded subtree violation (name constraints)",
    49: "name constraints minimum and maximum not supported",
    50: "application verification failure",
    51: "unsupported name constraint type",
    52: "unsupported or invalid name constraint syntax",
    53: "unsupported or invalid name syntax",
    54: "CRL path validation error",
    55: "path loop",
    56: "Suite B: certificate version invalid",
    57: "Suite B: invalid public key algorithm",
    58: "Suite B: invalid ECC curve",
    59: "Suite B: invalid signature algorithm",
    60: "Suite B: curve not allowed for this LOS",
    61: "Suite B: cannot sign P-384 with P-256",
    62: "hostname mismatch",
    63: "email address mismatch",
    64: "IP address mismatch",
    65: "no matching DANE TLSA records",
    66: "end-entity key too small",
    67: "CA key too small",
    68: "CA signature digest algorithm too weak",
    69: "invalid certificate verification context",
    70: "issuer certificate lookup error",
    71: "certificate transparency required, but no valid SCTs found",
    72: "proxy subject name violation",
    73: "OCSP verification needed",
    74: "OCSP verification failed",
    75: "OCSP unknown certificate",
    76: "unsupported signature algorithm",
    77: "subject signature algorithm and issuer public key algorithm mismatch",
    78: "certificate signature algorithm inconsistent with its tbsCertificate",
    79: "invalid CA certificate",
    80: "pathLenConstraint on a non-CA certificate",
    81: "pathLenConstraint present without keyCertSign key usage",
    82: "keyCertSign key usage on a non-CA certificate",
    83: "issuer name empty",
    84: "subject name empty",
    85: "missing authority key identifier",
    86: "missing subject key identifier",
    87: "empty subject alternative name extension",
    88: "subject empty and subjectAltName not critical",
    89: "CA basicConstraints not critical",
    90: "authority key identifier marked critical",
    91: "subject key identifier marked critical",
    92: "CA certificate without key usage extension",
    93: "extensions require certificate version 3",
    94: "EC key with explicit parameters",
}

# Codes that, to an administrator, all mean: the chain does not end at a CA we trust.
_UNTRUSTED_ISSUER = {2, 18, 19, 20, 21, 27}


def _subject_text(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string() or "(empty subject)"
    except ValueError:
        return "(unparseable subject)"


def _issuer_text(cert: x509.Certificate) -> str:
    try:
        return cert.issuer.rfc4514_string() or "(empty issuer)"
    except ValueError:
        return "(unparseable issuer)"


def _when(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _position(depth: int) -> str:
    return "peer certificate" if depth == 0 else f"CA certificate at depth {depth}"


def _eku_text(cert: x509.Certificate) -> str:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "no extended key usage"
    except ValueError:
        return "unparseable extended key usage"
    names = {
        ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
        ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    }
    listed = ", ".join(names.get(oid, oid.dotted_string) for oid in eku)
    return f"extended key usage: {listed}"


def describe_verify_error(openssl_errno: int, depth: int, cert: object) -> str:
    """A precise, log-ready reason for an OpenSSL X509 verify error.

    ``cert`` is the certificate OpenSSL complained about (the one at ``depth`` in the
    chain), as a ``cryptography`` certificate or a pyOpenSSL ``X509`` — what a verify
    callback receives. The message starts with the category an administrator looks for
    (``certificate expired``, ``certificate not yet valid``, ``issuer not trusted``,
    ``certificate revoked``, ``unsupported certificate purpose``, ...) followed by the
    details that let an administrator fix it (dates, subject, issuer).
    """
    if not isinstance(cert, x509.Certificate):
        to_cryptography = getattr(cert, "to_cryptography", None)
        if to_cryptography is None:
            raise TypeError(f"expected an X.509 certificate, got {type(cert).__name__}")
        cert = to_cryptography()
    assert isinstance(cert, x509.Certificate)
    subject, issuer, where = _subject_text(cert), _issuer_text(cert), _position(depth)
    code = openssl_errno

    if code == 10:
        return (
            f"certificate expired ({where} {subject} expired on {_when(cert.not_valid_after_utc)})"
        )
    if code == 9:
        return (
            f"certificate not yet valid ({where} {subject} is valid from "
            f"{_when(cert.not_valid_before_utc)})"
        )
    if code in (2, 20):
        return (
            f"issuer not trusted (issuer {issuer} of {where} {subject} is not among the "
            "trusted CAs; add it to tls.ca_file or have the peer send its full chain)"
        )
    if code == 21:
        return (
            f"issuer not trusted (cannot verify {where} {subject}: its issuer {issuer} was "
            "not sent and is not a trusted CA; incomplete chain?)"
        )
    if code == 18:
        return f"issuer not trusted (self-signed {where} {subject})"
    if code == 19:
        return (
            f"issuer not trusted (self-signed certificate {subject} at depth {depth} in the "
            "chain is not a trusted root)"
        )
    if code == 27:
        return f"issuer not trusted (root {subject} is not trusted for this purpose)"
    if code == 23:
        return f"certificate revoked ({where} {subject}, serial {cert.serial_number:X})"
    if code == 26:
        return f"unsupported certificate purpose ({where} {subject}; {_eku_text(cert)})"
    if code == 7:
        return (
            f"certificate signature invalid ({where} {subject} is not signed by its "
            f"issuer {issuer})"
        )
    if code in (66, 67):
        return f"key too small ({where} {subject}: {_VERIFY_ERRORS[code]})"
    text = _VERIFY_ERRORS.get(code, "unknown verification error")
    return f"{text} ({where} {subject}; OpenSSL X509 verify error {code})"


def is_untrusted_issuer_error(openssl_errno: int) -> bool:
    """True for the verify errors that mean "chain does not end at a trusted CA"."""
    return openssl_errno in _UNTRUSTED_ISSUER
