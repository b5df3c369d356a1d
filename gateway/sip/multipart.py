"""Multipart bodies (RFC 2046 §5.1), sans-I/O: ``multipart/alternative`` is how a SIP
client sends one message as plain text and HTML (RFC 7572 §7), and how the gateway sends
an XMPP message written in several languages (one ``text/plain`` part per
``Content-Language``).

:func:`parse_multipart` is total (a list of :class:`BodyPart` or :class:`MultipartError`);
:func:`build_multipart` chooses a boundary that occurs in no part.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from gateway.sip.mime import (
    MediaType,
    MimeError,
    header,
    language_tag,
    parse_headers,
    parse_media_type,
    split_head,
)

MAX_PARTS = 16


class MultipartError(ValueError):
    """A multipart body we cannot read."""


@dataclass(frozen=True, slots=True)
class BodyPart:
    content_type: MediaType
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def language(self) -> str:
        return language_tag(header(self.headers, "Content-Language") or "")


def parse_multipart(media_type: MediaType, data: bytes) -> list[BodyPart]:
    """The parts of a multipart body whose Content-Type is ``media_type`` (its
    ``boundary`` parameter splits it; a part without Content-Type is ``text/plain``,
    RFC 2046 §5.1.1)."""
    boundary = media_type.params.get("boundary", "")
    if not boundary or len(boundary) > 70:  # RFC 2046 §5.1.1: 1 to 70 characters
        raise MultipartError("multipart body without a usable boundary")
    delimiter = b"--" + boundary.encode("ascii", "replace")
    chunks = data.split(delimiter)
    if len(chunks) < 3:
        raise MultipartError("multipart body without its boundaries")
    parts: list[BodyPart] = []
    closed = False
    for chunk in chunks[1:]:  # chunks[0] is the preamble
        if chunk.startswith(b"--"):
            closed = True  # the close-delimiter: what follows is the epilogue
            break
        if len(parts) >= MAX_PARTS:
            raise MultipartError(f"more than {MAX_PARTS} body parts")
        # the delimiter line ends with CRLF; the CRLF before the next one belongs to it
        chunk = chunk.split(b"\n", 1)[1] if b"\n" in chunk else b""
        if chunk.endswith(b"\r\n"):
            chunk = chunk[:-2]
        elif chunk.endswith(b"\n"):
            chunk = chunk[:-1]
        head, body = split_head(chunk) if not chunk.startswith((b"\r\n", b"\n")) else (
            b"", chunk.split(b"\n", 1)[1])
        try:
            headers = parse_headers(head)
            type_text = header(headers, "Content-Type")
            content_type = (parse_media_type(type_text) if type_text
                            else MediaType("text/plain", {"charset": "us-ascii"}))
        except MimeError as exc:
            raise MultipartError(str(exc)) from None
        parts.append(BodyPart(content_type, body, headers))
    if not closed:
        raise MultipartError("multipart body without its closing boundary")
    if not parts:
        raise MultipartError("multipart body without parts")
    return parts


def build_multipart(subtype: str, parts: list[BodyPart]) -> tuple[str, bytes]:
    """(Content-Type value, body) of a ``multipart/<subtype>`` holding ``parts``."""
    boundary = "gw-" + secrets.token_hex(12)
    while any(boundary.encode() in part.body for part in parts):
        boundary = "gw-" + secrets.token_hex(12)
    out = bytearray()
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: {part.content_type}\r\n".encode()
        for name, value in part.headers:
            if name.lower() != "content-type":
                out += f"{name}: {value}\r\n".encode()
        out += b"\r\n" + part.body + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return f'multipart/{subtype};boundary="{boundary}"', bytes(out)
