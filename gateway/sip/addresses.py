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

Domains are compared case-insensitively (RFC 7622 §3.2, RFC 3261 §19.1.4), so they are
lowered; localparts keep their case here, case folding belongs to the stores that compare.

The XMPP resource of a SIP user is taken from a GRUU ``gr`` parameter when the SIP side
offers one (RFC 7247 §5.3 maps GRUUs to resources), else :data:`DEFAULT_RESOURCE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, unquote

import idna

from gateway.domain import DomainError, normalize_domain

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


@dataclass(frozen=True, slots=True)
class Jid:
    """A parsed JID (RFC 7622 §3.1 structure; no PRECIS enforcement here)."""

    local: str
    domain: str
    resource: str = ""

    @property
    def bare(self) -> str:
        return f"{self.local}@{self.domain}" if self.local else self.domain

    @property
    def full(self) -> str:
        return f"{self.bare}/{self.resource}" if self.resource else self.bare

    def __str__(self) -> str:
        return self.full


@lru_cache(maxsize=65536)  # the same few addresses, parsed for every stanza; Jid is frozen
def parse_jid(text: str) -> Jid:
    """Split ``local@domain/resource`` (RFC 7622 §3.1: the first ``/`` starts the resource,
    the ``@`` before it ends the localpart). Domain is lowered."""
    if not text:
        raise AddressError("empty JID")
    rest, slash, resource = text.partition("/")
    if slash and not resource:
        raise AddressError(f"JID {text!r} has an empty resource")
    local, at, domain = rest.rpartition("@")
    if not at:
        local, domain = "", rest
    elif not local:
        raise AddressError(f"JID {text!r} has an empty localpart")
    if not domain or domain.startswith(".") or ".." in domain:
        raise AddressError(f"JID {text!r} has no valid domain")
    if "@" in local:
        raise AddressError(f"JID {text!r} has more than one '@' before the resource")
    return Jid(local, domain.rstrip(".").lower(), resource)


def bare_jid(text: str) -> str:
    """The bare form of a JID string, with the domain lowered."""
    return parse_jid(text).bare


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
    def uri(self) -> str:
        """``sip:user@host`` with the user percent-encoded (RFC 3261 §25.1) and the host
        in A-labels (RFC 3261 §19.1.1 hostnames are LDH; IDNA2008, RFC 5891)."""
        return f"sip:{quote(self.user, safe=_SIP_USER_SAFE)}@{sip_host(self.host)}"

    @property
    def gruu_uri(self) -> str:
        """:attr:`uri` with the ``gr`` parameter when there is one (RFC 5627 §3): how an
        XMPP resource travels in SIP (RFC 7572 §4: a full JID becomes a GRUU)."""
        if not self.gruu:
            return self.uri
        return f"{self.uri};gr={quote(self.gruu, safe=_GRUU_SAFE)}"


@lru_cache(maxsize=4096)
def sip_host(domain: str) -> str:
    """A domain as a SIP URI writes it: ASCII (A-labels) for internationalised names,
    unchanged for ASCII names and IP literals."""
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        raise AddressError(f"domain {domain!r} has no A-label form") from None


@lru_cache(maxsize=4096)
def jid_domain(host: str) -> str:
    """A SIP host as a JID domainpart: A-labels become U-labels (RFC 7622 §3.2 compares
    internationalised domains in their U-label form), lower case."""
    lowered = host.lower()
    if "xn--" not in lowered:
        return lowered
    try:
        return normalize_domain(lowered)
    except DomainError:
        return lowered


def jid_to_sip(jid: str | Jid) -> SipAddress:
    """RFC 7247 §5.2: ``user@domain[/resource]`` → ``sip:user@domain``; the resource, if
    any, is kept as the GRUU (:attr:`SipAddress.gruu_uri`, RFC 7572 §4)."""
    parsed = jid if isinstance(jid, Jid) else parse_jid(jid)
    if not parsed.local:
        raise AddressError(f"JID {parsed.full!r} has no localpart; it names a server")
    return SipAddress(unescape_localpart(parsed.local), parsed.domain, parsed.resource)


def sip_to_jid(address: SipAddress, *, resource: str | None = None) -> Jid:
    """RFC 7247 §5.3: ``sip:user@host`` → ``user@host/resource``; the GRUU, when present,
    becomes the resource, else ``resource`` (default :data:`DEFAULT_RESOURCE`); pass
    ``resource=""`` for a bare JID."""
    if not address.user:
        raise AddressError(f"SIP address {address.uri!r} has no user part")
    if resource is None:
        resource = address.gruu or DEFAULT_RESOURCE
    return Jid(escape_localpart(address.user), jid_domain(address.host), resource)


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
        user = unquote(userinfo.split(":", 1)[0])
        hostport_and_params = after
    hostport_and_params = hostport_and_params.split("?", 1)[0]
    hostport, *params = hostport_and_params.split(";")
    host = hostport
    host = host[: host.index("]") + 1] if host.startswith("[") else host.split(":", 1)[0]
    if not host:
        raise AddressError(f"SIP URI {uri!r} has no host")
    gruu = ""
    for param in params:
        name, _, value = param.partition("=")
        if name.lower() == "gr":
            gruu = unquote(value)
    return SipAddress(user, host.lower(), gruu)
