"""The context-aware serialiser (gateway.xmpp.xml): bytes as other servers expect them."""

from __future__ import annotations

from xml.etree.ElementTree import Element, SubElement

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.xmpp.errors import StreamError
from gateway.xmpp.parser import StanzaElement, StreamParser
from gateway.xmpp.xml import (
    XmlCharacterError,
    XmlNameError,
    check_element,
    escape_attr,
    escape_text,
    serialize,
    stream_header,
)

XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
HEADER = stream_header(from_="a.example", to="b.example", stream_id="s1")


def reparse(data: bytes) -> Element:
    items = StreamParser().feed(HEADER + data)
    assert isinstance(items[1], StanzaElement)
    return items[1].element


def test_stream_header_bytes() -> None:
    assert stream_header(from_="a.example", to="b.example", stream_id="i'd", lang="en") == (
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
        b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
        b"from='a.example' to='b.example' id='i&apos;d' version='1.0' xml:lang='en'>"
    )
    assert stream_header(from_=None, to=None, stream_id=None, version=None, dialback=False) == (
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
        b"xmlns:stream='http://etherx.jabber.org/streams'>"
    )


def test_default_namespace_is_implied_and_others_declared() -> None:
    message = Element("{jabber:server}message", {"to": "y@b.example", XML_LANG: "de"})
    SubElement(message, "{jabber:server}body").text = "hi"
    SubElement(message, "{urn:xmpp:receipts}request")
    assert serialize(message) == (
        b'<message to="y@b.example" xml:lang="de"><body>hi</body>'
        b'<request xmlns="urn:xmpp:receipts"/></message>'
    )


def test_children_of_a_foreign_namespace_inherit_it() -> None:
    iq = Element("{jabber:server}iq", {"type": "result", "id": "1"})
    query = SubElement(iq, "{jabber:iq:version}query")
    SubElement(query, "{jabber:iq:version}name").text = "gw"
    SubElement(query, "{jabber:server}back")  # back to the stream's namespace
    assert serialize(iq) == (
        b'<iq type="result" id="1"><query xmlns="jabber:iq:version"><name>gw</name>'
        b'<back xmlns="jabber:server"/></query></iq>'
    )


def test_stream_and_dialback_prefixes() -> None:
    error = StreamError("host-unknown", "no").to_element()
    assert serialize(error) == (
        b'<stream:error><host-unknown xmlns="urn:ietf:params:xml:ns:xmpp-streams"/>'
        b'<text xmlns="urn:ietf:params:xml:ns:xmpp-streams">no</text></stream:error>'
    )
    result = Element("{jabber:server:dialback}result", {"from": "a", "to": "b"})
    result.text = "k"
    assert serialize(result) == b'<db:result from="a" to="b">k</db:result>'


def test_namespaced_attribute_gets_a_private_prefix() -> None:
    element = Element("{jabber:server}message", {"{urn:x}flag": "1"})
    assert serialize(element) == b'<message xmlns:a1="urn:x" a1:flag="1"/>'
    assert reparse(serialize(element)).get("{urn:x}flag") == "1"


def test_escaping() -> None:
    assert escape_text("a<b>&c\"'") == "a&lt;b&gt;&amp;c\"'"
    assert escape_attr("a<b>&c\"'\n\t\r") == "a&lt;b&gt;&amp;c&quot;&apos;&#10;&#9;&#13;"
    # each special character alone, and values needing nothing (returned as they are)
    for char, escaped in {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                          "'": "&apos;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}.items():
        assert escape_attr(f"x{char}y") == f"x{escaped}y"
        if char in "&<>\r":  # a raw CR would reach the partner as LF (XML 1.0 §2.11)
            assert escape_text(f"x{char}y") == f"x{escaped}y"
        else:
            assert escape_text(f"x{char}y") == f"x{char}y"
    assert escape_attr("user@a.example/r") == "user@a.example/r"
    assert escape_text("") == ""
    message = Element("{jabber:server}message", {"to": "\"q\"\n"})
    SubElement(message, "{jabber:server}body").text = "1 < 2 && ]]> done"
    data = serialize(message)
    assert data == (b'<message to="&quot;q&quot;&#10;"><body>1 &lt; 2 &amp;&amp; ]]&gt; done'
                    b"</body></message>")
    again = reparse(data)
    assert again.get("to") == "\"q\"\n"
    assert again.findtext("{jabber:server}body") == "1 < 2 && ]]> done"


def test_mixed_content_keeps_tails() -> None:
    body = Element("{jabber:server}body")
    body.text = "a"
    SubElement(body, "{jabber:server}b").tail = "c"
    assert serialize(body) == b"<body>a<b/>c</body>"


_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"),
                max_size=30).filter(lambda s: all(c in "\t\n" or ord(c) >= 0x20 for c in s))
_NAMES = st.sampled_from(["body", "subject", "thread", "x", "item"])
_NS = st.sampled_from(["jabber:server", "urn:example:a", "urn:example:b"])


@st.composite
def elements(draw: st.DrawFn, depth: int = 0) -> Element:
    element = Element("{%s}%s" % (draw(_NS), draw(_NAMES)),  # noqa: UP031
                      draw(st.dictionaries(st.sampled_from(["to", "from", "id", "type"]), _TEXT,
                                           max_size=3)))
    if draw(st.booleans()):
        element.set(XML_LANG, "en")
    element.text = draw(_TEXT) or None
    if depth < 3:
        for child in draw(st.lists(elements(depth + 1), max_size=3)):
            child.tail = draw(_TEXT) or None
            element.append(child)
    return element


def _tree(element: Element) -> tuple:
    return (element.tag, sorted(element.attrib.items()), element.text or "",
            element.tail or "", [_tree(c) for c in element])


@settings(max_examples=200, deadline=None, derandomize=True)
@given(elements())
def test_serialize_then_parse_round_trips(element: Element) -> None:
    stanza = Element("{jabber:server}message", {"to": "y@b.example"})
    stanza.append(element)
    again = reparse(serialize(stanza))
    element.tail = None
    assert _tree(again) == _tree(stanza)
    assert serialize(again) == serialize(stanza)


def test_forbidden_characters_are_replaced_never_written() -> None:
    """Whatever the element holds, the bytes are XML 1.0: a character XML forbids (here
    NUL, ESC, a lone surrogate, U+FFFF) becomes U+FFFD in text and in attribute values,
    and a carriage return arrives as sent (written as a reference)."""
    message = Element("{jabber:server}message", {"to": "a\x00b@b.example", "id": "\ud800"})
    SubElement(message, "{jabber:server}body").text = "x\x1b[0m\uffff\r\ny"
    data = serialize(message)
    again = reparse(data)
    assert again.get("to") == "a\ufffdb@b.example" and again.get("id") == "\ufffd"
    assert again.findtext("{jabber:server}body") == "x\ufffd[0m\ufffd\r\ny"


def test_check_element_names_the_character_and_the_place() -> None:
    message = Element("{jabber:server}message", {"to": "y@b.example"})
    SubElement(message, "{jabber:server}body").text = "ok"
    check_element(message)  # nothing to refuse
    message.set("to", "a\x01@b.example")
    with pytest.raises(XmlCharacterError) as refused:
        check_element(message)
    assert (refused.value.code_point, refused.value.offset) == (1, 1)
    assert refused.value.where == "attribute 'to' of message"
    message.set("to", "y@b.example")
    message[0].text = "fine\x00"
    with pytest.raises(XmlCharacterError, match=r"body holds U\+0000 at offset 4"):
        check_element(message)


def test_a_name_that_is_not_an_xml_name_is_refused_not_written() -> None:
    for element in (Element("{jabber:server}bad name"), Element("{jabber:server}x", {"1a": "v"})):
        with pytest.raises(XmlNameError):
            serialize(element)
        with pytest.raises(XmlNameError):
            check_element(element)
