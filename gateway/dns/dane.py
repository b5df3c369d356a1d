"""DANE for outbound S2S (RFC 7673 on RFC 6698 / RFC 7671): TLSA records as pure data and
the pure decision whether a peer's certificate chain satisfies them.

TLSA records are only worth anything when DNSSEC vouches for them: the resolver asks a
*validating* resolver (``dns.dnssec``) and believes its AD bit (RFC 6840 §5.8), and the
records come here with ``secure`` saying so. The base name is the SRV target's
``_port._tcp.host`` when the SRV answer itself was secure (RFC 7673 §3), else there is no
DANE for that target.

Per partner the policy is (``dane:`` in the partner entry, as Prosody's ``use_dane``
but per partner):

- ``off``: no TLSA lookup; certificates are checked as without DANE (PKIX);
- ``opportunistic``: when secure, usable TLSA records exist the chain must match one of
  them (a mismatch refuses the target: RFC 7673 §3.3); without them PKIX as before;
- ``required``: secure, usable TLSA records must exist and match.

What a matching record authenticates (RFC 7671): DANE-EE (usage 3) the leaf's key, with
no name or validity check (§5.1); DANE-TA (2) a trust anchor in the presented chain that
the leaf chains up to, plus the name check (§5.2); PKIX-EE (1) and PKIX-TA (0) add their
match to ordinary PKIX validation, which must pass too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.config.model import DanePolicy

__all__ = ["DaneExpectation", "DanePolicy", "DaneVerdict", "TlsaAnswer", "TlsaRecord",
           "precheck", "tlsa_name", "verify"]

PKIX_TA, PKIX_EE, DANE_TA, DANE_EE = 0, 1, 2, 3
USAGE_NAMES = {PKIX_TA: "PKIX-TA", PKIX_EE: "PKIX-EE", DANE_TA: "DANE-TA", DANE_EE: "DANE-EE"}


@dataclass(frozen=True, slots=True)
class TlsaRecord:
    usage: int  # 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE
    selector: int  # 0 full certificate, 1 SubjectPublicKeyInfo
    matching_type: int  # 0 exact, 1 SHA-256, 2 SHA-512
    data: bytes

    @property
    def usable(self) -> bool:
        """RFC 6698 §2.1 / RFC 7671 §4.1: records with unknown parameters are ignored."""
        return self.usage in USAGE_NAMES and self.selector in (0, 1) \
            and self.matching_type in (0, 1, 2)

    def describe(self) -> str:
        return (f"{self.usage} {self.selector} {self.matching_type} "
                f"{self.data.hex()[:16]}…")

    def matches(self, certificate_der: bytes) -> bool:
        if self.selector == 0:
            selected = certificate_der
        else:
            try:
                key = x509.load_der_x509_certificate(certificate_der).public_key()
            except ValueError:
                return False
            selected = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        if self.matching_type == 1:
            selected = hashlib.sha256(selected).digest()
        elif self.matching_type == 2:
            selected = hashlib.sha512(selected).digest()
        return selected == self.data


@dataclass(frozen=True, slots=True)
class TlsaAnswer:
    """What DNS said at ``name`` (``_5269._tcp.xmpp.example.org``)."""

    name: str
    records: tuple[TlsaRecord, ...]
    secure: bool  # the validating resolver set AD (for the SRV answer and this one)
    note: str = ""  # why there is no DANE here (insecure SRV, no records …), for the log

    @property
    def usable(self) -> tuple[TlsaRecord, ...]:
        return tuple(r for r in self.records if r.usable) if self.secure else ()


@dataclass(frozen=True, slots=True)
class DaneExpectation:
    """What the outbound stream checks the peer's chain against once TLS is up."""

    policy: DanePolicy
    answer: TlsaAnswer


@dataclass(frozen=True, slots=True)
class DaneVerdict:
    ok: bool  # may the connection go on
    authenticated: bool  # DANE itself authenticated the peer (DANE-EE / DANE-TA matched)
    reason: str


def precheck(expectation: DaneExpectation) -> DaneVerdict | None:
    """Before connecting: a refusal when ``required`` cannot be met (no secure, usable
    records); None when the target may be tried."""
    answer = expectation.answer
    if expectation.policy is DanePolicy.REQUIRED and not answer.usable:
        why = answer.note or ("the answer is not DNSSEC-validated" if not answer.secure
                              else "no usable TLSA records")
        return DaneVerdict(False, False, f"DANE required but no usable TLSA at {answer.name}: "
                                         f"{why}")
    return None


def verify(expectation: DaneExpectation | None, chain_der: list[bytes], *, pkix_ok: bool,
           name_ok: bool) -> DaneVerdict:
    """Whether the peer's presented chain (leaf first) satisfies the TLSA records.

    ``pkix_ok``: OpenSSL validated the chain against the trust store; ``name_ok``: the
    leaf names the peer's domain (RFC 6125). Without usable records DANE says nothing
    (ok, not authenticated) unless the policy requires it.
    """
    if expectation is None or expectation.policy is DanePolicy.OFF:
        return DaneVerdict(True, False, "DANE off")
    refused = precheck(expectation)
    if refused is not None:
        return refused
    answer = expectation.answer
    records = answer.usable
    if not records:
        return DaneVerdict(True, False, f"no DANE at {answer.name}: "
                                        f"{answer.note or 'no secure, usable TLSA records'}")
    if not chain_der:
        return DaneVerdict(False, False, "DANE: the peer presented no certificate")
    certificates = _parse(chain_der)
    for record in records:
        if record.usage in (DANE_EE, PKIX_EE):
            if not record.matches(chain_der[0]):
                continue
            if record.usage == DANE_EE:
                return DaneVerdict(True, True, f"DANE-EE TLSA {record.describe()} at "
                                               f"{answer.name} matches the certificate")
            if pkix_ok and name_ok:
                return DaneVerdict(True, False, f"PKIX-EE TLSA at {answer.name} matches")
            continue
        for index, der in enumerate(chain_der):
            if not record.matches(der) or not _chains_up(certificates, index):
                continue
            if record.usage == DANE_TA and name_ok:
                return DaneVerdict(True, True, f"DANE-TA TLSA {record.describe()} at "
                                               f"{answer.name} matches the chain")
            if record.usage == PKIX_TA and pkix_ok and name_ok:
                return DaneVerdict(True, False, f"PKIX-TA TLSA at {answer.name} matches")
    return DaneVerdict(False, False, f"DANE: the certificate matches none of the "
                                     f"{len(records)} TLSA records at {answer.name}")


def _parse(chain_der: list[bytes]) -> list[x509.Certificate | None]:
    parsed: list[x509.Certificate | None] = []
    for der in chain_der:
        try:
            parsed.append(x509.load_der_x509_certificate(der))
        except ValueError:
            parsed.append(None)
    return parsed


def _chains_up(certificates: list[x509.Certificate | None], anchor: int) -> bool:
    """Each certificate from the leaf up to ``anchor`` is signed by the next one: a
    trust anchor merely *shown* next to an unrelated leaf authenticates nothing."""
    for index in range(anchor):
        child, parent = certificates[index], certificates[index + 1]
        if child is None or parent is None:
            return False
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            return False
    return True


def tlsa_name(host: str, port: int) -> str:
    """RFC 6698 §3: the TLSA owner name of a service."""
    return f"_{port}._tcp.{host.rstrip('.')}"
