"""Serialising stanzas and stream headers for an S2S stream.

Why our own serialiser rather than ``ElementTree.tostring``: on a stream the default
namespace (``jabber:server``) and the ``stream:``/``db:`` prefixes are declared once on the
stream header (RFC 6120 §4.8.5), so every stanza must be written *relative to that
context* — ``<message to=…>`` rather than ``<ns0:message xmlns:ns0='jabber:server'>``,
which some servers mishandle. The serialiser is also on the hot path of every relayed
stanza, so it is a small recursive function with no intermediate tree copies.
"""

from __future__ import annotations

import re
from xml.etree.ElementTree import Element

from gateway.xmpp.namespaces import NS_DIALBACK, NS_SERVER, NS_STREAMS, NS_XML, PREFIXES

STREAM_CLOSE = b"</stream:stream>"

# What XML 1.0 forbids (§2.2 Char: #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] |
# [#x10000-#x10FFFF]): the C0 controls other than tab/LF/CR, the surrogates (a Python str
# can hold a lone one, and UTF-8 cannot encode it) and U+FFFE/U+FFFF. Not even as a
# character reference (§4.1 WFC: Legal Character): a partner's parser (expat) rejects the
# whole stream at such a byte, so it must never be written.
FORBIDDEN_CHARS = "\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff"
_FORBIDDEN = re.compile(f"[{FORBIDDEN_CHARS}]")
REPLACEMENT = "\ufffd"  # what a forbidden character becomes in text and attribute values

# A carriage return is written as a reference in text too: a parser turns a raw CR (and
# CRLF) into LF (§2.11), so a body would not arrive as it was sent.
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_ATTR_ESCAPES = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "'": "&apos;",
        "\n": "&#10;",
        "\r": "&#13;",
        "\t": "&#9;",
    }
)


# ``str.translate`` with a mapping looks every character up in a dict (about 0.8 µs for a
# JID); almost every value needs no escaping at all, which one regex search tells at C
# speed (0.1 µs). This runs several times per relayed stanza, so the forbidden characters
# are in the same character class: valid text costs one search, as before.
_TEXT_SPECIAL = re.compile(f"[&<>\r{FORBIDDEN_CHARS}]")
_ATTR_SPECIAL = re.compile(f"[&<>\"'\n\r\t{FORBIDDEN_CHARS}]")


class XmlOutputError(ValueError):
    """Content the serialiser will not write as it is; ``where`` names the place
    (``"body"``, ``"attribute 'to' of message"``) for the error a caller gives."""

    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        self.where = where


class XmlCharacterError(XmlOutputError):
    """A character XML 1.0 cannot carry (:data:`FORBIDDEN_CHARS`), found by
    :func:`check_element` / :func:`check_text`: ``code_point`` at ``offset`` of ``where``."""

    def __init__(self, where: str, code_point: int, offset: int) -> None:
        super().__init__(f"{where} holds U+{code_point:04X} at offset {offset}, a character "
                         "XML 1.0 cannot carry", where)
        self.code_point = code_point
        self.offset = offset


class XmlNameError(XmlOutputError):
    """A tag or attribute name that is not an XML name (a program error: names are never
    user data), raised by :func:`serialize` and :func:`check_element`."""


def check_text(text: str, where: str) -> None:
    """Raise :class:`XmlCharacterError` if ``text`` holds a character XML 1.0 forbids."""
    found = _FORBIDDEN.search(text)
    if found is not None:
        raise XmlCharacterError(where, ord(found.group()), found.start())


def escape_text(text: str) -> str:
    """Character data as written: markup escaped, forbidden characters replaced by
    U+FFFD (see :func:`serialize` for why replaced rather than refused)."""
    if _TEXT_SPECIAL.search(text) is None:
        return text
    if _FORBIDDEN.search(text) is not None:
        text = _FORBIDDEN.sub(REPLACEMENT, text)
    return text.translate(_TEXT_ESCAPES)


def escape_attr(value: str) -> str:
    """An attribute value as written between quotes; forbidden characters replaced."""
    if _ATTR_SPECIAL.search(value) is None:
        return value
    if _FORBIDDEN.search(value) is not None:
        value = _FORBIDDEN.sub(REPLACEMENT, value)
    return value.translate(_ATTR_ESCAPES)


# XML 1.0 §2.3 Name without ':' (namespaces give the prefix; the local part is an NCName).
_NAME_START = ("A-Z_a-z\xc0-\xd6\xd8-\xf6\xf8-\u02ff\u0370-\u037d\u037f-\u1fff"
               "\u200c\u200d\u2070-\u218f\u2c00-\u2fef\u3001-\ud7ff\uf900-\ufdcf"
               "\ufdf0-\ufffd\U00010000-\U000effff")
_NCNAME = re.compile(f"[{_NAME_START}][{_NAME_START}\\-.0-9\xb7\u0300-\u036f"
                     "\u203f-\u2040]*")
# Attribute names seen valid (bounded: after a parse, names come from the network).
_VALID_ATTRIBUTES: set[str] = {"from", "to", "type", "id"}


def _check_name(name: str, where: str) -> None:
    if _NCNAME.fullmatch(name) is None:
        raise XmlNameError(f"{name!r} is not an XML name ({where})", where)


def _attribute_name(key: str, tag_local: str) -> None:
    if key in _VALID_ATTRIBUTES:
        return
    local = _split(key)[1] if key[:1] == "{" else key
    _check_name(local, f"attribute of {tag_local}")
    if len(_VALID_ATTRIBUTES) < _TAG_CACHE_LIMIT:
        _VALID_ATTRIBUTES.add(key)


def check_element(element: Element) -> None:
    """Raise :class:`XmlCharacterError` for the first character XML 1.0 forbids in
    ``element`` (text, tails, attribute values; depth first), or :class:`XmlNameError`
    for a name that is not an XML name.

    :func:`serialize` never writes such a character (it replaces it); this is for the
    places that can still refuse what a user sent instead of delivering it altered: the
    SIP side calls it before answering a request ``202``, so that a request that cannot
    become a valid stanza gets ``400`` naming the character (RFC 3261 §21.4.1)."""
    # One search over every value and text joined (what almost every stanza needs); the
    # walk that names the place only when it finds something.
    strings: list[str] = []
    for node in element.iter():
        tag = node.tag
        if tag not in _VALID_TAGS:
            _check_name(_split(tag)[1], "element name")
            if len(_VALID_TAGS) < _TAG_CACHE_LIMIT:
                _VALID_TAGS.add(tag)
        attributes = node.attrib
        if attributes:
            for key in attributes:
                if key not in _VALID_ATTRIBUTES:
                    _attribute_name(key, _split(tag)[1])
            strings.extend(attributes.values())
    strings.extend(element.itertext())
    if _FORBIDDEN.search("".join(strings)) is not None:
        _locate_forbidden(element)


def _locate_forbidden(element: Element) -> None:
    """Raise :class:`XmlCharacterError` for the first forbidden character, depth first."""
    local = _split(element.tag)[1]
    for key, value in element.attrib.items():
        check_text(value, f"attribute {_split(key)[1]!r} of {local}")
    if element.text:
        check_text(element.text, local)
    for child in element:
        _locate_forbidden(child)
        if child.tail:
            check_text(child.tail, local)


_VALID_TAGS: set[str] = set()


def _split(tag: str) -> tuple[str, str]:
    if tag[:1] == "{":
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


# (tag, namespace in scope) -> (start of the start tag, name for the end tag, namespace
# in scope for the children): a stanza has a handful of distinct tags, each written for
# every stanza. Bounded: tags come from the network.
_TAGS: dict[tuple[str, str], tuple[str, str, str]] = {}
_TAG_CACHE_LIMIT = 4096


def _tag_parts(tag: str, default_ns: str) -> tuple[str, str, str]:
    ns, local = _split(tag)
    _check_name(local, "element name")
    prefix = PREFIXES.get(ns) if ns in (NS_STREAMS, NS_DIALBACK) else None
    if prefix:
        name = f"{prefix}:{local}"
        parts = ("<" + name, name, default_ns)
    elif ns != default_ns:
        parts = (f'<{local} xmlns="{escape_attr(ns)}"', local, ns)
    else:
        parts = ("<" + local, local, ns)
    if len(_TAGS) < _TAG_CACHE_LIMIT:
        _TAGS[(tag, default_ns)] = parts
    return parts


def _write(element: Element, default_ns: str, out: list[str]) -> None:
    start, name, child_default = (_TAGS.get((element.tag, default_ns))
                                  or _tag_parts(element.tag, default_ns))
    out.append(start)
    extra = 0
    for key, value in element.attrib.items():
        if key not in _VALID_ATTRIBUTES:
            _attribute_name(key, name)
        if key[:1] == "{":
            attr_ns, attr_local = _split(key)
            if attr_ns == NS_XML:
                out.append(f' xml:{attr_local}="{escape_attr(value)}"')
            else:  # a namespaced attribute: declare a private prefix for it
                extra += 1
                out.append(
                    f' xmlns:a{extra}="{escape_attr(attr_ns)}"'
                    f' a{extra}:{attr_local}="{escape_attr(value)}"'
                )
        else:
            out.append(f' {key}="{escape_attr(value)}"')
    text = element.text
    if not text and len(element) == 0:
        out.append("/>")
    else:
        out.append(">")
        if text:
            out.append(escape_text(text))
        for child in element:
            _write(child, child_default, out)
            if child.tail:
                out.append(escape_text(child.tail))
        out.append(f"</{name}>")


class PreparedStanza(Element):
    """A stanza that carries its own serialisation, :attr:`wire`, written by its builder
    while building the tree.

    Why: the SIP → XMPP path builds one small stanza per relayed message, and walking
    that tree again to serialise it (:func:`_write`: a call per element, a lookup and an
    escape check per attribute) cost several times what writing the same text from the
    builder's own strings does — the largest single share of the Python work per
    message. The tree is still there for everything that reads the stanza (routing,
    contact rules, error replies); :func:`serialize` returns :attr:`wire` in the
    ``jabber:server`` stream context the builder wrote it for.

    The builder must write exactly what :func:`serialize` would (the same escaping and
    replacement of forbidden characters: build the text with :func:`escape_attr` and
    :func:`escape_text`), and nobody changes the stanza afterwards: copies (error replies,
    ``strip_status``) are plain elements, and :meth:`set` drops :attr:`wire` so that a
    changed attribute is never sent unwritten.
    """

    __slots__ = ("wire",)

    def __init__(self, tag: str, attrib: dict[str, str], wire: bytes) -> None:
        super().__init__(tag, attrib)
        self.wire: bytes | None = wire

    def set(self, key: str, value: str, /) -> None:
        self.wire = None
        super().set(key, value)


def serialize(element: Element, default_ns: str = NS_SERVER) -> bytes:
    """UTF-8 bytes of ``element`` as written inside a stream whose default namespace is
    ``default_ns`` and which declares the ``stream:`` and ``db:`` prefixes.

    Valid XML 1.0 by construction, whatever the element holds: a character XML forbids
    in text or in an attribute value is written as U+FFFD. Replaced, not refused, because
    this is the last step before a stream many users share: an exception here would lose
    the stanza deep inside the S2S machinery, and the character itself would make the
    partner close the stream (RFC 6120 §11.1 restricted XML; expat stops at it). Places
    that can still tell the sender refuse earlier with :func:`check_element` (the SIP
    side: 400 before 202), so a replacement here means a path that forgot to check.
    A tag or attribute name that is not an XML name raises :class:`XmlNameError`: names
    come from the program, there is nothing sensible to replace them with."""
    if type(element) is PreparedStanza and element.wire is not None and default_ns == NS_SERVER:
        return element.wire
    out: list[str] = []
    _write(element, default_ns, out)
    return "".join(out).encode()


def stream_header(
    *,
    from_: str | None,
    to: str | None,
    stream_id: str | None,
    version: str | None = "1.0",
    lang: str | None = None,
    default_ns: str = NS_SERVER,
    dialback: bool = True,
) -> bytes:
    """The opening ``<stream:stream>`` tag (RFC 6120 §4.7).

    ``xmlns:db`` is always declared by default: XEP-0220 §2.1 makes its presence the signal
    that we support dialback, and Prosody/ejabberd use it to decide whether to offer it.
    """
    parts = [
        "<?xml version='1.0'?><stream:stream",
        f" xmlns='{escape_attr(default_ns)}'",
        f" xmlns:stream='{NS_STREAMS}'",
    ]
    if dialback:
        parts.append(f" xmlns:db='{NS_DIALBACK}'")
    for key, value in (("from", from_), ("to", to), ("id", stream_id), ("version", version)):
        if value:
            parts.append(f" {key}='{escape_attr(value)}'")
    if lang:
        parts.append(f" xml:lang='{escape_attr(lang)}'")
    parts.append(">")
    return "".join(parts).encode()
