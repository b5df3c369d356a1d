"""MIME pieces that SIP message bodies are made of: media types with parameters (RFC 2045
§5.1) and header blocks (RFC 2045 §3, RFC 5322 §2.2), sans-I/O.

Shared by the CPIM codec (whose encapsulated content starts with MIME headers, RFC 3862
§2) and the multipart codec (each body part starts with its own, RFC 2046 §5.1). Every
function is total: it returns a value or raises :class:`MimeError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

# RFC 2045 §5.1: token := 1*<any (US-ASCII) CHAR except SPACE, CTLs, or tspecials>
_TSPECIALS = frozenset('()<>@,;:\\"/[]?=')
MAX_HEADER_LINES = 64


class MimeError(ValueError):
    """Bytes or text that are not the MIME structure they claim to be."""


def _is_token(text: str) -> bool:
    return bool(text) and all(33 <= ord(c) < 127 and c not in _TSPECIALS for c in text)


@dataclass(frozen=True, slots=True)
class MediaType:
    """``type/subtype`` lower-cased, and its parameters (names lower-cased, values as
    given, quotes removed)."""

    type: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def charset(self) -> str:
        return self.params.get("charset", "").lower()

    def __str__(self) -> str:
        parts = [self.type]
        for name, value in self.params.items():
            parts.append(f"{name}={value}" if _is_token(value) else f'{name}="{_quote(value)}"')
        return ";".join(parts)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


@lru_cache(maxsize=1024)  # the same few Content-Type values, once per message; the result
def parse_media_type(text: str) -> MediaType:  # is not to be changed (it is shared)
    """RFC 2045 §5.1 ``type "/" subtype *(";" parameter)``; quoted-string values may hold
    ``;`` and escaped quotes."""
    head, rest = _cut(text)
    kind, slash, sub = head.strip().partition("/")
    if not slash or not _is_token(kind.strip()) or not _is_token(sub.strip()):
        raise MimeError(f"not a media type: {text[:80]!r}")
    params: dict[str, str] = {}
    while rest:
        item, rest = _cut(rest)
        name, equals, value = item.partition("=")
        name = name.strip().lower()
        if not equals or not _is_token(name):
            if item.strip():
                raise MimeError(f"bad media type parameter {item[:40]!r}")
            continue
        value = value.strip()
        if value.startswith('"'):
            if len(value) < 2 or not value.endswith('"'):
                raise MimeError(f"unterminated quoted parameter {item[:40]!r}")
            value = _unquote(value[1:-1])
        params.setdefault(name, value)
    return MediaType(f"{kind.strip().lower()}/{sub.strip().lower()}", params)


def _cut(text: str) -> tuple[str, str]:
    """(text before the first ``;`` outside quotes, text after it)."""
    quoted = escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            return text[:index], text[index + 1:]
    return text, ""


def _unquote(text: str) -> str:
    out: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            out.append(char)
    return "".join(out)


def split_head(data: bytes) -> tuple[bytes, bytes]:
    """(header block, rest) at the first empty line (CRLF CRLF, or bare LF LF as lenient
    senders write it); the whole input is the header block when there is none."""
    crlf, lf = data.find(b"\r\n\r\n"), data.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf <= lf):
        return data[:crlf], data[crlf + 4:]
    if lf >= 0:
        return data[:lf], data[lf + 2:]
    return data, b""


def parse_headers(block: bytes) -> list[tuple[str, str]]:
    """``Name: value`` lines (UTF-8; folded lines unfolded, RFC 5322 §2.2.3), in order,
    names as written."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        raise MimeError("header block is not UTF-8") from None
    headers: list[tuple[str, str]] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line:
            continue
        if line[0] in " \t":
            if not headers:
                raise MimeError("continuation line before any header")
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or any(c in name for c in " \t"):
            raise MimeError(f"malformed header line {line[:60]!r}")
        headers.append((name, value.strip()))
        if len(headers) > MAX_HEADER_LINES:
            raise MimeError("too many header lines")
    return headers


def decimal(text: str, digits: int = 10) -> int | None:
    """``text`` (surrounding white space allowed) as a number of 1 to ``digits`` ASCII
    digits, None otherwise: ``str.isdigit`` also accepts "²" and "٣", which ``int``
    then refuses or reads as another number."""
    value = text.strip(" \t")
    if 0 < len(value) <= digits and value.isascii() and value.isdigit():
        return int(value)
    return None


def header(headers: list[tuple[str, str]], name: str) -> str | None:
    """The first value of header ``name`` (case-insensitive), None when absent."""
    wanted = name.lower()
    for key, value in headers:
        if key.lower() == wanted:
            return value
    return None


# RFC 3261 §20.13 language-tag (primary-tag *( "-" subtag ), 1 to 8 characters each),
# which BCP 47 tags (RFC 6120 §4.7.4: xml:lang) also are
_LANGUAGE_TAG = re.compile(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*")


@lru_cache(maxsize=256)  # a handful of languages, once per message
def language_tag(value: str) -> str:
    """The first language of a ``Content-Language`` or ``xml:lang`` value, "" when it
    is not a language tag: such a value is not carried (the message is)."""
    first = value.partition(",")[0].strip(" \t")
    return first if _LANGUAGE_TAG.fullmatch(first) else ""


def clean_header_value(text: str, limit: int = 256) -> str:
    """A header value made of ``text``: no CR, LF or other control characters (they would
    end the header or the head: header injection), whitespace runs folded to one space,
    at most ``limit`` characters."""
    cleaned = "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in text)
    return " ".join(cleaned.split())[:limit]
