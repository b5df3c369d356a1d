"""``text/html`` from a SIP client → a plain ``<body/>`` plus, when there is formatting
worth keeping, a sanitised XEP-0071 XHTML-IM ``<html/>`` (RFC 7572 §7).

The HTML comes from the network and lands in XMPP clients that may render it, so only
XEP-0071 §7's recommended profile survives, and less of it: ``a`` (with an ``href`` of
http, https, mailto, xmpp, sip, sips or tel only), ``blockquote``, ``br``, ``cite``,
``code``, ``em``, ``li``, ``ol``, ``p``, ``span``, ``strong``, ``ul`` (``b``/``i`` become
``strong``/``em``). No attribute besides that ``href`` (no ``style``: XEP-0071 §8 lets a
sender's CSS do too much), no images (XEP-0071 §10: they leak the reader's address to
whoever serves them). Script, style and the like are removed with their content; every
other element is replaced by its text. The plain body is the document's text with line
breaks where blocks and ``<br>`` were: it is always sent (XEP-0071 §4 requires it).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from xml.etree.ElementTree import Element, SubElement

from gateway.sip.xmldoc import xml_text

NS_XHTML_IM = "http://jabber.org/protocol/xhtml-im"
NS_XHTML = "http://www.w3.org/1999/xhtml"
_KEPT = {"a", "blockquote", "br", "cite", "code", "em", "li", "ol", "p", "span", "strong",
         "ul"}
_RENAMED = {"b": "strong", "i": "em"}
_DROPPED_WITH_CONTENT = {"script", "style", "head", "title", "template", "object",
                         "iframe", "noscript", "svg", "math", "textarea", "select"}
_BLOCKS = {"p", "div", "li", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "ul",
           "ol", "pre", "table", "section", "article"}
_VOID = {"br", "img", "hr", "meta", "link", "input", "area", "base", "col", "embed",
         "source", "track", "wbr"}
_SAFE_SCHEMES = ("http:", "https:", "mailto:", "xmpp:", "sip:", "sips:", "tel:")
_SPACES = re.compile(r"[ \t\r\n\f\v]+")
MAX_ELEMENTS = 2000


class _Sanitiser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.body = Element(f"{{{NS_XHTML}}}body")
        self.stack: list[tuple[str, Element]] = [("", self.body)]
        self.dropping: list[str] = []
        self.text: list[str] = []
        self.kept = 0
        self.elements = 0

    def _append_text(self, text: str) -> None:
        current = self.stack[-1][1]
        if len(current):
            last = current[-1]
            last.tail = (last.tail or "") + text
        else:
            current.text = (current.text or "") + text

    def _break(self) -> None:
        if self.text and not self.text[-1].endswith("\n"):
            self.text.append("\n")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.dropping:
            if tag in _DROPPED_WITH_CONTENT:
                self.dropping.append(tag)
            return
        if tag in _DROPPED_WITH_CONTENT:
            self.dropping.append(tag)
            return
        if tag in _BLOCKS:
            self._break()
        if tag == "br":
            self.text.append("\n")
        name = _RENAMED.get(tag, tag)
        if name not in _KEPT or self.elements >= MAX_ELEMENTS:
            return
        self.elements += 1
        attributes: dict[str, str] = {}
        if name == "a":
            href = next((value or "" for key, value in attrs if key == "href"), "").strip()
            if href.lower().startswith(_SAFE_SCHEMES):
                attributes["href"] = xml_text(href)
        element = SubElement(self.stack[-1][1], f"{{{NS_XHTML}}}{name}", attributes)
        if name not in ("span", "p") or attributes:
            self.kept += 1
        if tag not in _VOID:
            self.stack.append((tag, element))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.dropping:
            if tag == self.dropping[-1]:
                self.dropping.pop()
            return
        if tag in _BLOCKS:
            self._break()
        for index in range(len(self.stack) - 1, 0, -1):
            if self.stack[index][0] == tag:
                del self.stack[index:]
                break

    def handle_data(self, data: str) -> None:
        if self.dropping:
            return
        text = xml_text(_SPACES.sub(" ", data))
        if not text:
            return
        if self.text and self.text[-1].endswith("\n"):
            text = text.lstrip(" ")
        self.text.append(text)
        self._append_text(text)


def html_to_message(html: str, language: str = "") -> tuple[str, Element | None]:
    """(plain text, XHTML-IM ``<html/>`` or None when nothing but text would be kept)."""
    sanitiser = _Sanitiser()
    try:
        sanitiser.feed(html)
        sanitiser.close()
    except (AssertionError, ValueError):  # html.parser's own complaints: keep the text
        sanitiser.kept = 0
    plain = "\n".join(line.strip() for line in "".join(sanitiser.text).split("\n")).strip()
    if not sanitiser.kept:
        return plain, None
    wrapper = Element(f"{{{NS_XHTML_IM}}}html")
    if language:
        sanitiser.body.set("{http://www.w3.org/XML/1998/namespace}lang", language)
    wrapper.append(sanitiser.body)
    return plain, wrapper
