"""Address mapping between XMPP JIDs and SIP URIs (RFC 7247 §5).

The gateway's local users are SIP users (``sip:alice@contoso.example``) that XMPP sees as
``alice@contoso.example``; XMPP contacts (``bob@fabrikam.example``) are reachable from SIP as
``sip:bob@fabrikam.example``. The two address grammars differ in which characters a user
part may hold, so a mapping must escape in both directions and round-trip:

* XMPP → SIP (RFC 7247 §5.2): the localpart is XEP-0106-unescaped (a JID localpart cannot
  carry ``@ : / " & ' < >`` or space, so gateways use XEP-0106 ``\\40``-style escapes for
  them) and then percent-encoded where RFC 3261 §25.1's ``user`` rule does not allow the
  character raw.
* SIP → XMPP (RFC 7247 §5.3): the user part is percent-decoded and the characters a JID
  localpart must not contain are XEP-0106-escaped.

JIDs are :class:`gateway.xmpp.jid.Jid`, the gateway's one JID type: building one from a
SIP address enforces RFC 7622 (PRECIS localpart and resourcepart, the domain in its one
normal form; localparts are case-mapped, so ``sip:Alice@…`` and ``sip:alice@…`` are one
XMPP user, as RFC 7622 §3.3 compares them), so a SIP user name that no XMPP server would
accept — a control character,
a symbol PRECIS forbids — fails there with :class:`~gateway.xmpp.jid.JidError` naming
the character, and the request can be refused (400) instead of sending a ``jid-malformed``
address across S2S. SIP URIs carry hosts as ASCII (RFC 3261 §25.1), so an
internationalised domain goes into a SIP URI as its A-labels and comes back as the JID's
U-labels.

The XMPP resource of a SIP user is taken from a GRUU ``gr`` parameter when the SIP side
offers one (RFC 7247 §5.3 maps GRUUs to resources), else :data:`DEFAULT_RESOURCE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

from gateway.domain import DomainError, normalize_domain, to_a_labels
from gateway.xmpp.jid import Jid

DEFAULT_RESOURCE = "sip"

# XEP-0106 §3.2: the characters a localpart cannot hold, and their escapes.
_XEP0106_ESCAPES: dict[str, str] = {
    " ": "\\20",
    '"': "\\22",
    "&": "\\26",
    "'": "\\27",
    "/": "\\2f",
    ":": "\\3a",
    "<": "\\3c",
    ">": "\\3e",
    "@": "\\40",
}
_XEP0106_UNESCAPES: dict[str, str] = {v: k for k, v in _XEP0106_ESCAPES.items()} | {"\\5c": "\\"}

# RFC 3261 §25.1: user = 1*( unreserved / escaped / user-unreserved ), where
# unreserved = alphanum / mark and user-unreserved = & = + $ , ; ? /. Of those, ``;``,
# ``?`` and ``/`` are escaped anyway: raw, they read as the start of URI parameters or
# headers to many parsers (ours included: ``sip:who?@a.example`` came back as the user
# ``who`` with headers), and an escaped character is always allowed (RFC 3261 §19.1.2).
_SIP_USER_SAFE = "-_.!~*'()&=+$,"
# RFC 5627 §3 gr parameter value (RFC 3261 pvalue: param-unreserved / unreserved / escaped)
_GRUU_SAFE = "-_.!~*'()[]/:&+$"


class AddressError(ValueError):
    """A string that is not a usable JID or SIP URI for this gateway."""


def escape_localpart(raw: str) -> str:
    """XEP-0106 §4.2 escaping of a raw user name into a JID localpart."""
    out: list[str] = []
    for index, char in enumerate(raw):
        if char in _XEP0106_ESCAPES:
            out.append(_XEP0106_ESCAPES[char])
        elif char == "\\" and raw[index : index + 3].lower() in _XEP0106_UNESCAPES:
            out.append("\\5c")  # a backslash that would read as an escape sequence
        else:
            out.append(char)
    return "".join(out)


def unescape_localpart(localpart: str) -> str:
    """XEP-0106 §4.3 unescaping (only the defined sequences; others stay literal)."""
    out: list[str] = []
    index = 0
    while index < len(localpart):
        sequence = localpart[index : index + 3].lower()
        if localpart[index] == "\\" and sequence in _XEP0106_UNESCAPES:
            out.append(_XEP0106_UNESCAPES[sequence])
            index += 3
        else:
            out.append(localpart[index])
            index += 1
    return "".join(out)


@dataclass(frozen=True, slots=True)
class SipAddress:
    """The address-of-record part of a SIP URI that maps to a JID: user, host, and the GRUU
    ``gr`` parameter if any (RFC 5627)."""

    user: str  # percent-decoded
    host: str
    gruu: str = ""

    @property
    def domain(self) -> str:
        """The host in the gateway's one domain form (:func:`normalize_domain`: U-labels),
        for comparing with served domains and keying; the host as written when it is not
        a domain name at all (then it matches none)."""
        try:
            return normalize_domain(self.host)
        except DomainError:
            return self.host

    @property
    def uri(self) -> str:
        """``sip:user@host`` with the user percent-encoded (RFC 3261 §25.1)."""
        return f"sip:{quote(self.user, safe=_SIP_USER_SAFE)}@{self.host}"

    @property
    def gruu_uri(self) -> str:
        """:attr:`uri` with the ``gr`` parameter when there is one (RFC 5627 §3): how an
        XMPP resource travels in SIP (RFC 7572 §4)."""
        if not self.gruu:
            return self.uri
        return f"{self.uri};gr={quote(self.gruu, safe=_GRUU_SAFE)}"


def jid_to_sip(jid: str | Jid) -> SipAddress:
    """RFC 7247 §5.2: ``user@domain[/resource]`` → ``sip:user@domain`` (the domain in
    A-labels); the resource, if any, is kept as the GRUU (:attr:`SipAddress.gruu_uri`).
    Raises :class:`JidError` for text that is not a JID."""
    parsed = jid if isinstance(jid, Jid) else Jid.parse(jid)
    if not parsed.local:
        raise AddressError(f"JID {parsed.full!r} has no localpart; it names a server")
    return SipAddress(unescape_localpart(parsed.local), to_a_labels(parsed.domain),
                      parsed.resource)


def sip_to_jid(address: SipAddress, *, resource: str | None = None) -> Jid:
    """RFC 7247 §5.3: ``sip:user@host`` → ``user@host/resource``; the GRUU, when present,
    becomes the resource, else ``resource`` (default :data:`DEFAULT_RESOURCE`); pass
    ``resource=""`` for a bare JID. Raises :class:`JidError` (with the part and the
    reason) when the result is not a valid JID."""
    if not address.user:
        raise AddressError(f"SIP address {address.uri!r} has no user part")
    if resource is None:
        resource = address.gruu or DEFAULT_RESOURCE
    return Jid(escape_localpart(address.user), address.host, resource)


def _percent_decoded(text: str, uri: str) -> str:
    """RFC 3261 §19.1.2 escapes decoded as UTF-8 (RFC 3986 §2.5), strictly: bytes that are
    not UTF-8 would otherwise become U+FFFD, silently naming another user."""
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise AddressError(f"SIP URI {uri[:80]!r} has escapes that are not UTF-8") from None


def parse_sip_uri(uri: str) -> SipAddress:
    """Extract user, host and ``gr`` from a ``sip:``/``sips:`` URI (RFC 3261 §19.1.1),
    ignoring port, password, other parameters and headers."""
    text = uri.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    scheme, colon, rest = text.partition(":")
    if not colon or scheme.lower() not in ("sip", "sips"):
        raise AddressError(f"not a SIP URI: {uri!r}")
    hostport_and_params = rest
    user = ""
    userinfo, at, after = rest.partition("@")
    # A user part may hold a raw "?" (RFC 3261 user-unreserved) but no raw "@": the first
    # "@" ends it, unless what comes before is a host with URI headers (?name=value).
    question = userinfo.find("?")
    if at and not (question >= 0 and "=" in userinfo[question:]):
        user = _percent_decoded(userinfo.split(":", 1)[0], uri)
        hostport_and_params = after
    hostport_and_params = hostport_and_params.split("?", 1)[0]
    hostport, *params = hostport_and_params.split(";")
    if hostport.startswith("["):  # IPv6reference (RFC 3261 §25.1): "[" IPv6address "]"
        host, closing, _port = hostport.partition("]")
        if not closing:
            raise AddressError(f"SIP URI {uri[:80]!r} has an unterminated IPv6 host")
        host += "]"
    else:
        host = hostport.split(":", 1)[0]
    if not host or host == "[]":
        raise AddressError(f"SIP URI {uri[:80]!r} has no host")
    gruu = ""
    for param in params:
        name, _, value = param.partition("=")
        if name.lower() == "gr":
            gruu = _percent_decoded(value, uri)
    return SipAddress(user, host.lower(), gruu)
