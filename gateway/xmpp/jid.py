"""The gateway's one JID type: an XMPP address in its enforced form (RFC 7622).

Every part of the gateway that holds an address — S2S routing, the SIP mapping, the
authorization store, certificates' xmppAddr — goes through :meth:`Jid.parse` (or the
constructor), so one address has one spelling everywhere and nothing the gateway writes
carries a JID that a receiving server would refuse as ``jid-malformed``.

RFC 7622 §3.1 splits the text (the first ``/`` starts the resourcepart, then the first
``@`` ends the localpart) and each part is enforced on its own:

* **localpart** (§3.3): the PRECIS UsernameCaseMapped profile (RFC 8265 §3.3), plus the
  eight characters §3.3.1 forbids on top of it: ``" & ' / : < > @``;
* **domainpart** (§3.2): IDNA2008 with UTS #46 mapping, U-labels, one trailing dot
  removed, or an IP literal — :func:`gateway.domain.normalize_domain`, the one normal
  form for domains;
* **resourcepart** (§3.4): the PRECIS OpaqueString profile (RFC 8265 §4.2);
* each part at most 1023 octets of UTF-8 (§3.1).

PRECIS forbids controls, surrogates and non-characters, so an enforced JID is always
valid XML 1.0 text too. The profiles come from ``precis-i18n`` (RFC 8264/8265 over the
interpreter's Unicode database).

Routing parses the addresses of every stanza, so parsing is cached by the text (the same
few addresses recur), and ASCII parts — nearly all of them — skip the PRECIS machinery
through a check that gives the same answer (a test compares the two).
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from typing import Final, NoReturn

from precis_i18n import get_profile

from gateway.domain import DomainError, normalize_domain

__all__ = ["Jid", "JidError", "bare_jid", "domain_of"]

MAX_PART_OCTETS: Final = 1023  # RFC 7622 §3.1, for each of the three parts
# RFC 7622 §3.3.1: allowed by UsernameCaseMapped, forbidden in a localpart.
LOCALPART_EXCLUDED: Final = frozenset("\"&'/:<>@")
# Texts longer than this are parsed without the cache, so that a peer sending long,
# distinct addresses cannot make the cache hold megabytes.
_CACHED_LENGTH: Final = 512

_USERNAME = get_profile("UsernameCaseMapped")
_OPAQUE = get_profile("OpaqueString")

# precis-i18n's reason codes (``DISALLOWED/...``) in words.
_PRECIS_REASONS: Final = {
    "spaces": "a space",
    "controls": "a control character",
    "symbols": "a symbol",
    "punctuation": "non-ASCII punctuation",
    "has_compat": "a compatibility character",
    "unassigned": "an unassigned code point",
    "precis_ignorable_properties": "a default-ignorable code point or non-character",
    "other": "a code point outside PRECIS's classes (a surrogate or private use?)",
    "old_hangul_jamo": "a conjoining Hangul jamo",
    "bidi_rule": "a mix of right-to-left and left-to-right text (RFC 5893 Bidi rule)",
    "not_idempotent": "text that does not stay the same when enforced again",
}


class JidError(ValueError):
    """The text is not a valid JID (an XMPP server answers ``jid-malformed``).

    ``str()`` names the JID and the reason; ``part`` says which part was wrong
    (``"localpart"``, ``"domainpart"``, ``"resourcepart"`` or ``"jid"`` for the whole) and
    ``reason`` is the reason alone, for callers that word their own message (a SIP 400).
    """

    def __init__(self, text: str, part: str, reason: str) -> None:
        shown = text if len(text) <= 80 else text[:77] + "..."
        super().__init__(f"JID {shown!r}: {reason}" if text else reason)
        self.part = part
        self.reason = reason


class Jid:
    """A JID in its enforced (canonical) form; immutable, hashable, compared by its text.

    ``Jid(local, domain, resource)`` and :meth:`Jid.parse` enforce RFC 7622 and either
    return the canonical form or raise :class:`JidError`: an instance is always valid.
    ``local`` and ``resource`` are ``""`` when absent; ``bare`` and ``full`` are the
    texts without and with the resource.
    """

    __slots__ = ("bare", "domain", "full", "local", "resource")

    local: str
    domain: str
    resource: str
    bare: str
    full: str

    def __new__(cls, local: str, domain: str, resource: str = "") -> Jid:
        if len(local) + len(domain) + len(resource) > _CACHED_LENGTH:
            return _from_parts(local, domain, resource)
        return _cached_from_parts(local, domain, resource)

    @staticmethod
    def parse(text: str) -> Jid:
        """The JID ``text`` names, enforced; :class:`JidError` says why it is not one."""
        if len(text) > _CACHED_LENGTH:
            return _parse(text)
        return _cached_parse(text)

    def bare_jid(self) -> Jid:
        """This JID without its resource."""
        return self if not self.resource else _cached_from_parts(self.local, self.domain, "")

    def with_resource(self, resource: str) -> Jid:
        """The same bare JID with ``resource`` (enforced) as resourcepart."""
        return Jid(self.local, self.domain, resource)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"Jid is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"Jid is immutable (cannot delete {name!r})")

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Jid.parse, (self.full,))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Jid):
            return self.full == other.full
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.full)

    def __str__(self) -> str:
        return self.full

    def __repr__(self) -> str:
        return f"Jid({self.full!r})"


def bare_jid(text: str) -> str:
    """The bare text of the JID ``text`` (enforced); :class:`JidError` if it is not one."""
    return Jid.parse(text).bare


def domain_of(text: str) -> str:
    """The domainpart of the JID ``text`` (canonical); :class:`JidError` if not a JID."""
    return Jid.parse(text).domain


# --------------------------------------------------------------------------- building


def _parse(text: str) -> Jid:
    if not isinstance(text, str):
        raise JidError("", "jid", f"a JID must be text, not {type(text).__name__}")
    if not text:
        raise JidError("", "jid", "empty JID")
    rest, slash, resource = text.partition("/")
    if slash and not resource:
        raise JidError(text, "resourcepart", "empty resourcepart after '/'")
    local, at, domain = rest.partition("@")
    if not at:
        local, domain = "", rest
    elif not local:
        raise JidError(text, "localpart", "empty localpart before '@'")
    return _build(text, local, domain, resource, slash == "/")


def _from_parts(local: str, domain: str, resource: str) -> Jid:
    if not isinstance(local, str) or not isinstance(domain, str) or not isinstance(
        resource, str
    ):
        raise JidError("", "jid", "the parts of a JID must be text")
    shown = f"{local}@{domain}" if local else domain
    return _build(f"{shown}/{resource}" if resource else shown, local, domain, resource,
                  bool(resource))


def _build(text: str, local: str, domain: str, resource: str, has_resource: bool) -> Jid:
    local = _enforce_local(text, local) if local else ""
    if not domain:
        raise JidError(text, "domainpart", "empty domainpart")
    try:
        domain = normalize_domain(domain)
    except DomainError as exc:
        raise JidError(text, "domainpart", f"domainpart {domain!r}: {exc}") from None
    if len(domain.encode()) > MAX_PART_OCTETS:  # IP literals and DNS names are far shorter
        raise JidError(text, "domainpart", "domainpart longer than 1023 octets")
    resource = _enforce_resource(text, resource) if has_resource else ""
    bare = f"{local}@{domain}" if local else domain
    full = f"{bare}/{resource}" if resource else bare
    if full == text:
        full = text  # one string object for the text and the canonical form
    jid = object.__new__(Jid)
    setter = object.__setattr__
    setter(jid, "local", local)
    setter(jid, "domain", domain)
    setter(jid, "resource", resource)
    setter(jid, "bare", bare if resource else full)
    setter(jid, "full", full)
    return jid


_cached_parse = lru_cache(maxsize=65536)(_parse)
_cached_from_parts = lru_cache(maxsize=16384)(_from_parts)


def _ascii_local(local: str) -> str | None:
    """The enforced form of an ASCII localpart, or None to leave it to PRECIS.

    For ASCII, UsernameCaseMapped allows exactly the printable characters but space
    (RFC 8264 §9.11 ASCII7 is PVALID) and maps them to lower case; width mapping,
    normalisation and the Bidi rule change nothing in ASCII."""
    if (local.isascii() and local.isprintable() and " " not in local
            and LOCALPART_EXCLUDED.isdisjoint(local)):
        return local.lower()
    return None


def _enforce_local(text: str, local: str) -> str:
    enforced = _ascii_local(local)
    if enforced is None:
        try:
            enforced = _USERNAME.enforce(local)
        except UnicodeEncodeError as exc:
            _precis_refusal(text, "localpart", "UsernameCaseMapped", exc)
        excluded = sorted(LOCALPART_EXCLUDED.intersection(enforced))
        if excluded:
            index = enforced.index(excluded[0])
            raise JidError(text, "localpart",
                           f"the localpart has {_describe(excluded[0])} at position {index}, "
                           "which RFC 7622 §3.3.1 forbids in a localpart "
                           "(escape it with XEP-0106: \\22 \\26 \\27 \\2f \\3a \\3c \\3e \\40)")
    if len(enforced.encode()) > MAX_PART_OCTETS:
        raise JidError(text, "localpart", "localpart longer than 1023 octets")
    return enforced


def _enforce_resource(text: str, resource: str) -> str:
    if resource.isascii() and resource.isprintable():
        enforced = resource  # OpaqueString: ASCII printable, space included, unchanged
    else:
        try:
            enforced = _OPAQUE.enforce(resource)
        except UnicodeEncodeError as exc:
            _precis_refusal(text, "resourcepart", "OpaqueString", exc)
    if len(enforced.encode()) > MAX_PART_OCTETS:
        raise JidError(text, "resourcepart", "resourcepart longer than 1023 octets")
    return enforced


def _precis_refusal(text: str, part: str, profile: str, exc: UnicodeEncodeError) -> NoReturn:
    code = exc.reason.rpartition("/")[2]
    what = _PRECIS_REASONS.get(code)
    if code == "empty":
        reason = f"the {part} is empty once enforced (PRECIS {profile})"
    elif 0 <= exc.start < len(exc.object) and code not in ("bidi_rule", "not_idempotent"):
        char = exc.object[exc.start]
        reason = (f"the {part} has {what or code} ({_describe(char)}) at position "
                  f"{exc.start}, which PRECIS {profile} (RFC 8265) forbids")
    else:
        reason = f"the {part} has {what or code}, which PRECIS {profile} (RFC 8265) forbids"
    raise JidError(text, part, reason) from None


def _describe(char: str) -> str:
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X} {name}" if name else f"U+{ord(char):04X}"
