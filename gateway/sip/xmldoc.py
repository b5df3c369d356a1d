"""Small XML documents from SIP bodies (IMDN, isComposing), read safely: expat with no DTD
(so no entity tricks), a depth bound, every failure one :class:`XmlDocumentError`.

The bodies are already bounded by the SIP parser's body limit; the tree built here is a
plain :class:`xml.etree.ElementTree.Element` with ``{namespace}name`` tags.
"""

from __future__ import annotations

import re
from xml.etree.ElementTree import Element, SubElement
from xml.parsers import expat

MAX_DEPTH = 16


class XmlDocumentError(ValueError):
    """A body that is not a well-formed, DTD-free XML document."""


class _Builder:
    def __init__(self) -> None:
        self.root: Element | None = None
        self.stack: list[Element] = []

    def start(self, name: str, attributes: dict[str, str]) -> None:
        if len(self.stack) >= MAX_DEPTH:
            raise XmlDocumentError("document nested too deeply")
        element = (Element(name, attributes) if not self.stack
                   else SubElement(self.stack[-1], name, attributes))
        if self.root is None:
            self.root = element
        self.stack.append(element)

    def end(self, _name: str) -> None:
        self.stack.pop()

    def data(self, text: str) -> None:
        if self.stack:
            element = self.stack[-1]
            if len(element):
                last = element[-1]
                last.tail = (last.tail or "") + text
            else:
                element.text = (element.text or "") + text


def _refuse(*_args: object) -> None:
    raise XmlDocumentError("document has a DTD (refused: no entities allowed)")


def parse_document(body: bytes) -> Element:
    """The root element of ``body``."""
    builder = _Builder()
    parser = expat.ParserCreate(namespace_separator="}")
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.StartElementHandler = lambda name, attrs: builder.start(_tag(name), attrs)
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(body, True)
    except XmlDocumentError:
        raise
    except expat.ExpatError as exc:
        raise XmlDocumentError(f"not well-formed XML: {exc}") from None
    except RecursionError:
        raise XmlDocumentError("document nested too deeply") from None
    except (LookupError, ValueError) as exc:
        # pyexpat looks a declared encoding up among Python's codecs: one it cannot use
        # (encoding="rot13", "utf-7", "x-unknown") raises these, not ExpatError
        raise XmlDocumentError(f"unusable encoding: {exc}") from None
    if builder.root is None:
        raise XmlDocumentError("empty document")
    return builder.root


def _tag(name: str) -> str:
    """expat writes ``namespace}local``; ElementTree's form is ``{namespace}local``."""
    return "{" + name if "}" in name else name


def child_text(element: Element, tag: str) -> str | None:
    found = element.find(tag)
    return None if found is None else (found.text or "").strip()


# XML 1.0 §2.2 Char: #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF]
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """``text`` with every character XML 1.0 cannot carry (C0 controls, lone surrogates,
    U+FFFE/U+FFFF) replaced by U+FFFD: what a SIP user typed must reach XMPP, and a
    document with such a character is not XML at all (RFC 6120 §11.1)."""
    if _NOT_XML_CHAR.search(text) is None:
        return text
    return _NOT_XML_CHAR.sub("\ufffd", text)
