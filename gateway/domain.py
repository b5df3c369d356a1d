"""Domain names as the gateway keys and compares them: one canonical text form per domain.

RFC 7622 §3.2 (XMPP address format, domainpart): a domainpart is an IP literal, an IPv4
address or a fully qualified domain name; internationalised names are compared in their
IDNA2008 U-label form (non-ASCII labels as Unicode, lower case), with one trailing dot
removed (§3.2, "the trailing dot ... MUST be stripped"). UTS #46 mapping (non-transitional)
turns user input such as ``Bücher.Example.`` or ``xn--bcher-kva.example`` into that form.

Everything that keys on or compares a domain — the partner index, the served-domain check,
stream headers (``from``/``to``), dialback, JIDs (:class:`gateway.xmpp.jid.Jid`) whether
they arrive over XMPP or are mapped from SIP URIs (whose hosts are usually A-labels), the
authorization store — calls :func:`normalize_domain`, so one domain always has one
spelling and one store key. Where the wire wants ASCII (certificates compare A-labels,
RFC 6125 §6.4.2), :func:`to_a_labels` converts that one form. Normalising runs on every stream
header and JID, hence the cache and the ASCII fast path (the common case:
already-lower-case LDH names skip the IDNA machinery entirely).
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

import idna

__all__ = ["DomainError", "normalize_domain", "to_a_labels"]

MAX_DOMAIN_OCTETS = 253  # RFC 1035 §2.3.4: 255 on the wire = 253 in dotted text form
MAX_LABEL_OCTETS = 63

# A label that needs no IDNA processing: LDH, no leading/trailing hyphen (RFC 5890 §2.3.1
# NR-LDH label); "--" in positions 3-4 means an A-label or a reserved label: slow path.
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_DOTTED_NUMBERS = re.compile(r"[0-9.]+")
# The idna package's wording for the common mistakes, made consistent with ours.
_IDNA_REASONS = {
    "Empty Label": "empty label (two dots in a row, or a leading dot)",
    "Label too long": f"a label is longer than {MAX_LABEL_OCTETS} octets",
    "Domain too long": f"domain is longer than {MAX_DOMAIN_OCTETS} octets",
}


class DomainError(ValueError):
    """The text is not a usable XMPP domainpart; ``str()`` is the reason, for messages."""


def _fast_ascii(text: str) -> str | None:
    """Canonical form of an ASCII name that needs no IDNA processing, else None."""
    if not text.isascii():
        return None
    lowered = text.lower()
    labels = lowered.split(".")
    for label in labels:
        if not _LDH_LABEL.fullmatch(label) or label[2:4] == "--":
            return None
    if len(lowered) > MAX_DOMAIN_OCTETS or labels[-1].isdigit():
        return None  # let the slow path explain
    return lowered


def _ip_literal(text: str) -> str | None:
    """Canonical form of an IP-literal domainpart (RFC 7622 §3.2), or None if not one."""
    if text.startswith("[") and text.endswith("]"):
        try:
            return f"[{ipaddress.IPv6Address(text[1:-1]).compressed}]"
        except ValueError:
            raise DomainError(f"{text[1:-1]!r} in brackets is not an IPv6 address") from None
    if ":" in text:
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise DomainError("a domain must not contain ':' (ports go elsewhere)") from None
        raise DomainError("an IPv6 address must be written in brackets, e.g. [2001:db8::1]")
    if _DOTTED_NUMBERS.fullmatch(text):
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            raise DomainError(f"{text!r} is neither an IPv4 address nor a domain name") from None
    return None


def _idna_u_label_form(text: str) -> str:
    """UTS #46 mapping + IDNA2008 checks, returned as U-labels (lower case)."""
    for label in text.split("."):
        if label[:4].lower() == "xn--":
            try:
                idna.decode(label)
            except idna.IDNAError:
                raise DomainError(f"label {label!r} is not a valid A-label (punycode)") from None
    try:
        a_form = idna.encode(text, uts46=True, transitional=False).decode("ascii")
        if len(a_form) > MAX_DOMAIN_OCTETS:
            raise DomainError(
                f"domain is too long ({len(a_form)} octets in A-label form, "
                f"at most {MAX_DOMAIN_OCTETS})"
            )
        if a_form.rsplit(".", 1)[-1].isdigit():
            raise DomainError("the last label of a domain name must not be all digits")
        return idna.decode(a_form)
    except idna.IDNAError as exc:
        reason = _IDNA_REASONS.get(str(exc), str(exc) or type(exc).__name__)
        raise DomainError(reason[0].lower() + reason[1:]) from None


@lru_cache(maxsize=4096)
def normalize_domain(text: str) -> str:
    """Return the canonical form of a domain (RFC 7622 §3.2) or raise :class:`DomainError`.

    - lower case, IDNA2008 U-labels (``xn--bcher-kva.example`` → ``bücher.example``);
    - one trailing dot removed; empty labels, labels over 63 octets, names over 253
      octets and code points IDNA2008 disallows (``_``, spaces, ...) are refused;
    - IPv4 addresses are kept as they are, IPv6 literals (``[2001:db8::1]``) are kept in
      brackets in their compressed form.

    :class:`DomainError` is a :class:`ValueError` whose text is the reason only, so that
    callers can say which input it was about.
    """
    if not isinstance(text, str):
        raise DomainError(f"a domain must be text, not {type(text).__name__}")
    name = text[:-1] if text.endswith(".") else text
    if not name:
        raise DomainError("empty domain")
    fast = _fast_ascii(name)
    if fast is not None:
        return fast
    if any(ch.isspace() for ch in name):
        raise DomainError("a domain must not contain white space")
    literal = _ip_literal(name)
    if literal is not None:
        return literal
    if name.endswith("."):
        raise DomainError("empty label (more than one trailing dot)")
    return _idna_u_label_form(name)


@lru_cache(maxsize=4096)
def to_a_labels(text: str) -> str:
    """The domain ``text`` in its canonical form (:func:`normalize_domain`) with each
    non-ASCII label as its A-label (``Bücher.example`` → ``xn--bcher-kva.example``), for
    the places that need ASCII: certificate names (RFC 6125 §6.4.2) and DNS. IP literals
    are returned as :func:`normalize_domain` gives them. Raises :class:`DomainError`."""
    canonical = normalize_domain(text)
    if canonical.isascii():
        return canonical
    return idna.encode(canonical, uts46=False).decode("ascii")
