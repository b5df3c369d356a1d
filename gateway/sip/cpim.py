"""Message/CPIM (RFC 3862), sans-I/O: what Linphone (``cpim_in_basic_chat_rooms_enabled``),
Flexisip-based services and IMDN (RFC 5438 §6) wrap instant messages in.

A CPIM body inside a SIP MESSAGE (whose own ``Content-Type: message/cpim`` is the outer
MIME header, RFC 3862 §2) is::

    From: <sip:alice@contoso.example>          message headers (§3, §4)
    To: <sip:bob@fabrikam.example>
    DateTime: 2026-12-04T18:00:00Z
    NS: imdn <urn:ietf:params:imdn>             a namespace prefix (§4.5)
    imdn.Message-ID: 34jk324j                   a header in that namespace
    imdn.Disposition-Notification: positive-delivery, display

    Content-Type: text/plain;charset=UTF-8      encapsulated MIME headers
    Content-Length: 5

    hello                                       the encapsulated content

:func:`parse_cpim` is total (a :class:`CpimMessage` or :class:`CpimError`);
:func:`build_cpim` writes what it reads back (a hypothesis property checks the round trip).
Header names are matched case-insensitively on input (RFC 3862 §3.1 makes them
case-sensitive, but senders differ in spelling and nothing else would be meant).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gateway.sip.mime import (
    MediaType,
    MimeError,
    clean_header_value,
    decimal,
    header,
    language_tag,
    parse_headers,
    parse_media_type,
    split_head,
)

CPIM_TYPE = "message/cpim"
NS_IMDN = "urn:ietf:params:imdn"  # RFC 5438 §6.1 namespace of the IMDN headers
# RFC 3862 §4.1 [Formal-name] "<" URI ">", the name tokens or a quoted String (§3.2),
# which may hold "<" and backslash escapes
_ADDRESS = re.compile(r'^\s*(?:"(?:[^"\\]|\\.)*"\s*|[^"<>]*)<([^<>]*)>\s*$')
_NS_VALUE = re.compile(r"^\s*(?:([A-Za-z0-9_-]+)\s+)?<([^<>]*)>\s*$")
# RFC 3339 §5.6 date-time; a time zone is required (CPIM DateTime, RFC 3862 §4.4)
_DATETIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?"
    r"([Zz]|[+-]\d{2}:\d{2})$")


class CpimError(ValueError):
    """A ``message/cpim`` body we cannot read."""


@dataclass(frozen=True, slots=True)
class CpimMessage:
    sender: str  # the URI of From (RFC 3862 §4.1), without the angle brackets
    recipient: str  # the URI of the first To (§4.2)
    content_type: MediaType
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)  # message headers as sent
    content_headers: list[tuple[str, str]] = field(default_factory=list)
    namespaces: dict[str, str] = field(default_factory=dict)  # prefix → URN

    @property
    def datetime(self) -> datetime | None:
        value = header(self.headers, "DateTime")
        return parse_datetime(value) if value is not None else None

    @property
    def subject(self) -> str | None:
        """The first ``Subject`` (RFC 3862 §4.5) without its ``;lang=`` parameter."""
        value = header(self.headers, "Subject")
        if value is None:
            return None
        if value.startswith(";"):
            _, _, value = value.partition(" ")
        return value

    @property
    def content_language(self) -> str:
        return language_tag(header(self.content_headers, "Content-Language") or "")

    def ns_header(self, namespace: str, name: str) -> str | None:
        """The value of header ``name`` in ``namespace`` (by URN, whatever prefix the sender
        bound it to, §3.3), None when absent."""
        for prefix, urn in self.namespaces.items():
            if urn == namespace and prefix:
                found = header(self.headers, f"{prefix}.{name}")
                if found is not None:
                    return found
        return None

    @property
    def imdn_message_id(self) -> str | None:
        return self.ns_header(NS_IMDN, "Message-ID")

    @property
    def disposition_notification(self) -> frozenset[str]:
        """What IMDN the sender asks for (RFC 5438 §6.2): ``positive-delivery``,
        ``negative-delivery``, ``display``, ``processing``."""
        value = self.ns_header(NS_IMDN, "Disposition-Notification") or ""
        return frozenset(part.strip().lower() for part in value.split(",") if part.strip())


def parse_address(value: str) -> str:
    """The URI of a CPIM ``From``/``To`` value: ``[Formal-name] <URI>`` (§4.1)."""
    found = _ADDRESS.match(value)
    if found is None or not found.group(1).strip():
        raise CpimError(f"not a CPIM address: {value[:80]!r}")
    return found.group(1).strip()


def parse_datetime(value: str) -> datetime | None:
    """An RFC 3339 date-time as an aware datetime, None when it is not one."""
    found = _DATETIME.match(value.strip())
    if found is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = found.groups()
    text = f"{year}-{month}-{day}T{hour}:{minute}:{second}"
    text += (fraction or "")[:7]  # fromisoformat takes at most microseconds
    text += "+00:00" if zone in ("Z", "z") else zone
    try:
        moment = datetime.fromisoformat(text)
        moment.astimezone(UTC)  # 0001-01-01T00:00+01:00 is before year 1 in UTC
    except (ValueError, OverflowError):
        return None
    return moment


def format_datetime(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, whole seconds (what Linphone writes)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_cpim(data: bytes) -> CpimMessage:
    """Read a ``message/cpim`` body (see the module docstring)."""
    head, rest = split_head(data)
    if not rest and b":" not in head:
        raise CpimError("no CPIM message headers")
    try:
        headers = parse_headers(head)
        content_head, body = split_head(rest)
        content_headers = parse_headers(content_head)
    except MimeError as exc:
        raise CpimError(str(exc)) from None
    namespaces: dict[str, str] = {}
    for name, value in headers:
        if name.lower() == "ns":
            found = _NS_VALUE.match(value)
            if found is None:
                raise CpimError(f"bad NS header {value[:80]!r}")
            namespaces.setdefault(found.group(1) or "", found.group(2).strip())
    sender = header(headers, "From")
    recipient = header(headers, "To")
    if sender is None or recipient is None:
        raise CpimError("CPIM message without From or To")  # both required, §4.1, §4.2
    type_text = header(content_headers, "Content-Type")
    if type_text is None:
        raise CpimError("CPIM content without Content-Type")
    try:
        content_type = parse_media_type(type_text)
    except MimeError as exc:
        raise CpimError(str(exc)) from None
    length_text = header(content_headers, "Content-Length")
    if length_text is not None:
        length = decimal(length_text)
        if length is None or length > len(body):
            raise CpimError(f"bad CPIM Content-Length {length_text[:20]!r}")
        body = body[:length]
    return CpimMessage(parse_address(sender), parse_address(recipient), content_type, body,
                       headers, content_headers, namespaces)


def build_cpim(sender: str, recipient: str, content_type: str, body: bytes, *,
               moment: datetime | None = None, message_id: str = "",
               disposition: tuple[str, ...] = (), subject: str = "",
               language: str = "") -> bytes:
    """A ``message/cpim`` body from ``sender`` to ``recipient`` (URIs) wrapping ``body``;
    with ``message_id``/``disposition`` the RFC 5438 §6 IMDN headers (the namespace
    declared with the prefix ``imdn``, as every implementation spells it)."""
    for uri in (sender, recipient):
        if any(c in uri for c in "<>\r\n"):
            raise CpimError(f"not a URI for a CPIM address: {uri[:80]!r}")
    lines = [f"From: <{sender}>", f"To: <{recipient}>",
             f"DateTime: {format_datetime(moment or datetime.now(UTC))}"]
    if subject:
        lines.append(f"Subject: {clean_header_value(subject)}")
    if message_id or disposition:
        lines.append(f"NS: imdn <{NS_IMDN}>")
    if message_id:
        lines.append(f"imdn.Message-ID: {clean_header_value(message_id)}")
    if disposition:
        lines.append(f"imdn.Disposition-Notification: {', '.join(disposition)}")
    content = [f"Content-Type: {content_type}"]
    language = language_tag(language)
    if language:
        content.append(f"Content-Language: {language}")
    content.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n" + "\r\n".join(content) + "\r\n\r\n").encode(
        "utf-8") + body
