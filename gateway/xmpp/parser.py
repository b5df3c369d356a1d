"""Hardened incremental parser for XMPP streams (sans-I/O: bytes in, items out).

An XMPP stream is one long XML document whose depth-1 children are the stanzas
(RFC 6120 §4). We parse it with Python's expat binding because it is incremental, fast
and ships with CPython, and harden it the way defusedxml does, plus what RFC 6120 §11.1
("restricted XML") demands:

- no DTD at all (so no entity declarations, no billion laughs, no external entities),
  no processing instructions, no comments → ``<restricted-xml/>``;
- an XML declaration naming an encoding other than UTF-8 → ``<unsupported-encoding/>``
  (RFC 6120 §11.6);
- limits (RFC 6120 §13.12): stanza size, nesting depth, attribute count and length →
  ``<policy-violation/>``. The stanza size limit also bounds what expat may buffer for an
  unfinished token (a start tag that never ends), so memory per stream stays bounded.

The output items are :class:`StreamHeader`, :class:`StanzaElement` (an
``xml.etree.ElementTree.Element`` with ``{namespace}local`` tags) and :class:`StreamEnd`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING
from xml.etree.ElementTree import Element
from xml.parsers import expat
from xml.sax.saxutils import quoteattr

from gateway.xmpp.namespaces import NS_DIALBACK, NS_STREAMS

if TYPE_CHECKING:
    from gateway.config.model import Limits

# expat reports names as "uri}local" with this separator; we prepend "{" to get the
# ElementTree spelling "{uri}local" without any further string work.
_SEP = "}"
_STREAM_TAG = "{" + NS_STREAMS + "}stream"  # ElementTree spelling
# Bytes handed to expat per call. Small on purpose: when a call ends inside a token, expat
# copies the rest into an internal buffer of twice the call's size and never shrinks it
# (expat 2.5 XML_Parse), so the chunk size bounds what every idle stream keeps: 2 KiB
# chunks cost about 2 % of parser speed and save up to ~30 KiB per stream after a full
# 16 KiB TLS record; it also bounds how far that buffer can grow before we check limits.
_CHUNK = 2 * 1024


@dataclass(frozen=True, slots=True)
class ParserLimits:
    max_stanza_bytes: int = 512 * 1024
    max_depth: int = 32  # depth of a stanza's tree, the stanza itself being 1
    max_attributes: int = 64
    max_attribute_bytes: int = 16 * 1024

    @classmethod
    def from_limits(cls, limits: Limits) -> ParserLimits:
        return cls(
            max_stanza_bytes=limits.max_stanza_bytes,
            max_depth=limits.max_depth,
            max_attributes=limits.max_attributes,
            max_attribute_bytes=limits.max_attribute_bytes,
        )


class XmlStreamError(Exception):
    """The peer's XML cannot be accepted; ``condition`` is the RFC 6120 §4.9.3 stream error."""

    def __init__(self, condition: str, text: str) -> None:
        super().__init__(f"<{condition}/>: {text}")
        self.condition = condition
        self.text = text


@dataclass(frozen=True, slots=True)
class StreamHeader:
    """The opening ``<stream:stream>`` tag (RFC 6120 §4.7)."""

    attrs: dict[str, str]
    # prefix → namespace URI declared on the header; the default namespace under "".
    namespaces: dict[str, str] = field(default_factory=dict)

    @property
    def to(self) -> str | None:
        return self.attrs.get("to")

    @property
    def from_(self) -> str | None:
        return self.attrs.get("from")

    @property
    def id(self) -> str | None:
        return self.attrs.get("id")

    @property
    def version(self) -> str | None:
        return self.attrs.get("version")

    @property
    def default_ns(self) -> str | None:
        return self.namespaces.get("")


@dataclass(frozen=True, slots=True)
class StanzaElement:
    """A complete depth-1 element (stanza or stream-level element) and its size in bytes."""

    element: Element
    size: int


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The peer's ``</stream:stream>``."""


ParsedItem = StreamHeader | StanzaElement | StreamEnd


@lru_cache(maxsize=4096)  # the same few names recur in every stanza
def _name(expat_name: str) -> str:
    # expat gives "uri}local", "uri}local}prefix" (namespace_prefixes) or "local".
    if _SEP not in expat_name:
        return expat_name
    uri, _, rest = expat_name.partition(_SEP)
    return "{" + uri + _SEP + rest.partition(_SEP)[0]


def _qualified_name(expat_name: str) -> str:
    """The name as written ("stream:stream"), from expat's "uri}local}prefix"."""
    parts = expat_name.split(_SEP)
    return f"{parts[2]}:{parts[1]}" if len(parts) == 3 else parts[-1]


class StreamParser:
    """Incremental parser for one XML stream; :meth:`reset` after a stream restart.

    :meth:`release` frees the expat parser of an idle stream (about 13 KiB with pyexpat's
    buffers); the next :meth:`feed` re-creates one and primes it with the stream's header
    as it was declared (tag prefix and namespace declarations), which is all the context a
    depth-1 element depends on (RFC 6120 §4.8.5: stanzas inherit the header's namespaces).
    """

    # Set by _new_parser (each document) and _create_expat (each expat parser).
    _parser: expat.XMLParserType | None
    _offset: int  # stream byte offset = expat's CurrentByteIndex + this
    _replaying: bool
    _header_qname: str | None  # e.g. "stream:stream", for _recreate
    _items: list[ParsedItem]
    _stack: list[Element]
    _chunks: list[str]  # text since the last tag (see _flush_text)
    _header_seen: bool
    _namespaces: dict[str, str]
    _fed: int  # bytes given to this stream's expat parsers
    _boundary: int  # byte offset where the current unfinished top-level item began
    _failed: XmlStreamError | None

    def __init__(self, limits: ParserLimits | None = None) -> None:
        self.limits = limits or ParserLimits()
        self._new_parser()

    @property
    def released(self) -> bool:
        """True while the expat parser is released (see :meth:`release`)."""
        return self._parser is None

    # ------------------------------------------------------------------ public API

    def feed(self, data: bytes) -> list[ParsedItem]:
        """Parse ``data``; return the items it completed. Raises :class:`XmlStreamError`."""
        if self._failed is not None:
            raise self._failed
        items: list[ParsedItem] = []
        self._items = items
        try:
            parser = self._parser or self._recreate()
            for start in range(0, len(data), _CHUNK):
                chunk = data[start : start + _CHUNK]
                self._fed += len(chunk)
                parser.Parse(chunk, False)
                self._check_pending()
        except XmlStreamError as exc:
            self._failed = exc
            raise
        except expat.ExpatError as exc:
            self._failed = self._expat_error(exc)
            raise self._failed from None
        except RecursionError:
            self._failed = XmlStreamError("policy-violation", "nesting too deep")
            raise self._failed from None
        finally:
            self._items = []  # the caller owns the items; an idle stream keeps none alive
        return items

    def reset(self) -> None:
        """Start a fresh document: after STARTTLS and SASL the stream restarts (RFC 6120
        §5.4.3.3, §6.4.6) and the peer sends a new header."""
        self._new_parser()

    def release(self) -> bool:
        """Free the expat parser if the stream is between items (header seen, no stanza or
        token in progress); True if released. Nothing observable changes: sizes, limits
        and items are the same as if the parser had been kept."""
        parser = self._parser
        if (parser is None or self._failed is not None or self._header_qname is None
                or self._stack or self._chunks):
            return False
        # After Parse returns, CurrentByteIndex is the end of the last token expat
        # processed: short of what was fed, expat still buffers part of a token.
        if parser.CurrentByteIndex + self._offset != self._fed:
            return False
        self._parser = None
        return True

    # ------------------------------------------------------------------ internals

    def _recreate(self) -> expat.XMLParserType:
        """A new expat parser inside the stream's document: fed a copy of the header's
        start tag (not reported again), positions shifted so that byte counts go on."""
        assert self._header_qname is not None
        declarations = "".join(
            f" xmlns{':' + prefix if prefix else ''}={quoteattr(uri)}"
            for prefix, uri in self._namespaces.items())
        prefix = f"<{self._header_qname}{declarations}>".encode()
        fed, boundary = self._fed, self._boundary
        parser = self._create_expat()
        self._replaying = True
        try:
            parser.Parse(prefix, False)
        finally:
            self._replaying = False
        # CurrentByteIndex counts the replayed header; stream offsets must not.
        self._offset = fed - len(prefix)
        self._fed, self._boundary = fed, boundary
        return parser

    def _new_parser(self) -> None:
        self._create_expat()
        self._offset = 0
        self._replaying = False
        self._header_qname = None
        self._items = []
        self._stack = []
        self._chunks = []
        self._header_seen = False
        self._namespaces = {}
        self._fed = 0
        self._boundary = 0
        self._failed = None

    def _create_expat(self) -> expat.XMLParserType:
        parser = expat.ParserCreate("UTF-8", _SEP)
        # pyexpat's text buffer is allocated per parser and lives as long as the stream:
        # 1 KiB instead of the default 8 KiB is 7 KiB less per idle session, at no cost in
        # speed (longer texts arrive in pieces, joined once in _flush_text).
        parser.buffer_size = 1024
        parser.buffer_text = True
        parser.ordered_attributes = True
        parser.specified_attributes = True
        parser.namespace_prefixes = True  # prefixes count in the size of an end tag
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._text
        parser.StartNamespaceDeclHandler = self._ns_decl
        parser.XmlDeclHandler = self._xml_decl
        parser.StartDoctypeDeclHandler = self._forbidden_dtd
        parser.EntityDeclHandler = self._forbidden_entity
        parser.ExternalEntityRefHandler = self._forbidden_external
        parser.ProcessingInstructionHandler = self._forbidden_pi
        parser.CommentHandler = self._forbidden_comment
        parser.SkippedEntityHandler = self._forbidden_skipped
        self._parser = parser
        return parser

    def _check_pending(self) -> None:
        # Bytes since the last complete item: a stanza in progress, or a token that expat
        # is still buffering. Either way it is what an attacker could make us hold.
        if self._fed - self._boundary > self.limits.max_stanza_bytes + 1024:
            raise XmlStreamError(
                "policy-violation",
                f"stanza larger than {self.limits.max_stanza_bytes} bytes",
            )

    def _position(self) -> int:
        assert self._parser is not None  # only called from expat's handlers
        return self._parser.CurrentByteIndex + self._offset

    def _ns_decl(self, prefix: str | None, uri: str | None) -> None:
        if not self._header_seen:
            self._namespaces[prefix or ""] = uri or ""

    def _xml_decl(self, version: str | None, encoding: str | None, standalone: int) -> None:
        if encoding and encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
            raise XmlStreamError("unsupported-encoding", f"only UTF-8 is allowed, not {encoding}")

    def _start(self, name: str, attributes: list[str]) -> None:
        limits = self.limits
        if len(attributes) > 2 * limits.max_attributes:
            raise XmlStreamError(
                "policy-violation",
                f"more than {limits.max_attributes} attributes on <{_name(name)}>",
            )
        attrib: dict[str, str] = {}
        for index in range(0, len(attributes), 2):
            value = attributes[index + 1]
            if len(value) > limits.max_attribute_bytes:
                raise XmlStreamError(
                    "policy-violation",
                    f"attribute longer than {limits.max_attribute_bytes} bytes",
                )
            attrib[_name(attributes[index])] = value
        if self._chunks:
            self._flush_text()
        if self._replaying:  # the header's copy in _recreate: already reported
            return
        tag = _name(name)
        if not self._header_seen:
            self._on_header(tag, attrib)
            self._header_qname = _qualified_name(name)
            return
        if tag == _STREAM_TAG:
            # A second header without a restart would otherwise be buffered as a "stanza"
            # until the size limit; it is a schema violation (RFC 6120 §4.7, §11.4).
            raise XmlStreamError("invalid-xml", "unexpected second stream header")
        stack = self._stack
        if len(stack) >= limits.max_depth:
            raise XmlStreamError(
                "policy-violation", f"elements nested deeper than {limits.max_depth}"
            )
        element = Element(tag, attrib)
        if stack:
            stack[-1].append(element)
        else:
            self._boundary = self._position()
        stack.append(element)

    def _on_header(self, tag: str, attrib: dict[str, str]) -> None:
        if tag != _STREAM_TAG:
            if tag.endswith("}stream") or tag == "stream":
                raise XmlStreamError(
                    "invalid-namespace", f"the stream element must be in {NS_STREAMS}"
                )
            raise XmlStreamError("bad-format", f"expected <stream:stream>, got <{tag}>")
        self._header_seen = True
        self._boundary = self._fed
        self._items.append(StreamHeader(attrib, dict(self._namespaces)))

    def _end(self, name: str) -> None:
        if self._chunks:
            self._flush_text()
        stack = self._stack
        if not stack:  # closing the stream element itself
            self._items.append(StreamEnd())
            self._boundary = self._fed
            return
        element = stack.pop()
        if not stack:
            # CurrentByteIndex points at the '<' of the end tag, or just past an empty
            # element (<presence/>). Count the end tag with its prefix (</db:result>) so
            # that sizes, and so the size limit, are exact.
            end = self._position()
            parts = name.split(_SEP)  # [uri, local, prefix] / [uri, local] / [local]
            qname_length = len(parts[1]) + len(parts[2]) + 1 if len(parts) == 3 else len(
                parts[-1]
            )
            if len(element) or element.text:
                end += qname_length + 3  # "</" qname ">"
            else:
                # <x/> (the position is already past it) or <x></x>: look at the bytes.
                assert self._parser is not None
                context = self._parser.GetInputContext() or b""
                if context[:2] == b"</" and context[2 + qname_length : 3 + qname_length] == b">":
                    end += qname_length + 3
            self._items.append(StanzaElement(element, max(end - self._boundary, 0)))
            self._boundary = end
            self._check_complete_size()

    def _check_complete_size(self) -> None:
        item = self._items[-1]
        if isinstance(item, StanzaElement) and item.size > self.limits.max_stanza_bytes:
            raise XmlStreamError(
                "policy-violation", f"stanza larger than {self.limits.max_stanza_bytes} bytes"
            )

    def _text(self, data: str) -> None:
        stack = self._stack
        if not stack:
            if data.strip():
                raise XmlStreamError("bad-format", "text outside of a stanza")
            # Whitespace keepalive between stanzas (RFC 6120 §4.6.1).
            self._boundary = self._position() + len(data.encode())
            return
        self._chunks.append(data)

    def _flush_text(self) -> None:
        """Attach the text collected since the last tag: joined once, so a long text that
        arrives in many pieces costs linear time, not quadratic."""
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else "".join(chunks)
        chunks.clear()
        current = self._stack[-1]
        if len(current):
            last = current[-1]
            last.tail = (last.tail or "") + data
        else:
            current.text = (current.text or "") + data

    @staticmethod
    def _forbidden_dtd(*_: object) -> None:
        raise XmlStreamError("restricted-xml", "document type declarations are not allowed")

    @staticmethod
    def _forbidden_entity(*_: object) -> None:
        raise XmlStreamError("restricted-xml", "entity declarations are not allowed")

    @staticmethod
    def _forbidden_external(*_: object) -> int:
        raise XmlStreamError("restricted-xml", "external entities are not allowed")

    @staticmethod
    def _forbidden_pi(*_: object) -> None:
        raise XmlStreamError("restricted-xml", "processing instructions are not allowed")

    @staticmethod
    def _forbidden_comment(*_: object) -> None:
        raise XmlStreamError("restricted-xml", "comments are not allowed")

    @staticmethod
    def _forbidden_skipped(*_: object) -> None:
        raise XmlStreamError("restricted-xml", "entity references are not allowed")

    @staticmethod
    def _expat_error(exc: expat.ExpatError) -> XmlStreamError:
        message = expat.errors.messages.get(exc.code, str(exc))
        if exc.code == expat.errors.codes.get(expat.errors.XML_ERROR_UNBOUND_PREFIX):
            return XmlStreamError("invalid-namespace", f"{message} (line {exc.lineno})")
        return XmlStreamError(
            "not-well-formed", f"{message} at line {exc.lineno}, column {exc.offset}"
        )


def parse_written(written: Sequence[bytes], default_ns: str) -> list[Element]:
    """The elements whose serialisations on a stream with default namespace ``default_ns``
    (gateway.xmpp.xml.serialize) are ``written``, one each: the inverse of writing them.

    Stream management keeps what it sent as the bytes written, not as element trees (a
    tree per unacknowledged stanza is several objects for the cyclic garbage collector
    to walk, per stanza relayed); the rare paths that need the stanzas again (a bounce,
    a re-send over a new link) parse them back here, all with one parser (a window of
    thousands after a lost link). The header supplies the context the bytes were written
    in (RFC 6120 §4.8.5); limits are set by the data itself, since these are our own
    bytes. Raises :class:`XmlStreamError` unless each item is one element (a program
    error)."""
    if not written:
        return []
    size = max(len(data) for data in written) + 1
    parser = StreamParser(ParserLimits(max_stanza_bytes=size, max_depth=size,
                                       max_attributes=size, max_attribute_bytes=size))
    header = (f"<stream:stream xmlns={quoteattr(default_ns)} xmlns:stream='{NS_STREAMS}' "
              f"xmlns:db='{NS_DIALBACK}'>").encode()
    items = parser.feed(header)
    elements = []
    for data in written:
        items = parser.feed(data)
        if len(items) != 1 or not isinstance(items[0], StanzaElement) or parser._stack:
            raise XmlStreamError("internal-server-error", f"not one element: {data[:80]!r}")
        elements.append(items[0].element)
    return elements
