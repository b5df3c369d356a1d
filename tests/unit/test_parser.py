"""The hardened incremental stream parser and the serialiser."""

from __future__ import annotations

from pathlib import Path
from xml.etree.ElementTree import Element

import pytest

from gateway.xmpp.parser import (
    ParserLimits,
    StanzaElement,
    StreamEnd,
    StreamHeader,
    StreamParser,
    XmlStreamError,
)
from gateway.xmpp.xml import serialize, stream_header

HEADER = stream_header(from_="a.example", to="b.example", stream_id="s1")
TRANSCRIPT = HEADER + (
    b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/>"
    b"</starttls></stream:features> "
    b"<message from='x@a.example/r' to='y@b.example' xml:lang='en'><body>a &amp; b &lt; c"
    b"</body><thread>t1</thread></message>\n"
    b"<db:result from='a.example' to='b.example'>key</db:result></stream:stream>"
)


def parse_all(chunks: list[bytes]) -> list:
    parser = StreamParser()
    items = []
    for chunk in chunks:
        items += parser.feed(chunk)
    return items


def test_transcript() -> None:
    items = parse_all([TRANSCRIPT])
    assert [type(i) for i in items] == [
        StreamHeader,
        StanzaElement,
        StanzaElement,
        StanzaElement,
        StreamEnd,
    ]
    header = items[0]
    assert (header.from_, header.to, header.id, header.version) == (
        "a.example",
        "b.example",
        "s1",
        "1.0",
    )
    assert header.namespaces["db"] == "jabber:server:dialback"
    message = items[2].element
    assert message.get("{http://www.w3.org/XML/1998/namespace}lang") == "en"
    assert message.findtext("{jabber:server}body") == "a & b < c"
    assert serialize(message) == (
        b'<message from="x@a.example/r" to="y@b.example" xml:lang="en"><body>a &amp; b &lt; c'
        b"</body><thread>t1</thread></message>"
    )
    assert (
        serialize(items[3].element) == b'<db:result from="a.example" to="b.example">key</db:result>'
    )


def test_every_split_point_gives_the_same_result() -> None:
    whole = [serialize(i.element) for i in parse_all([TRANSCRIPT]) if isinstance(i, StanzaElement)]
    for cut in range(1, len(TRANSCRIPT)):
        items = parse_all([TRANSCRIPT[:cut], TRANSCRIPT[cut:]])
        assert [serialize(i.element) for i in items if isinstance(i, StanzaElement)] == whole


def test_reset_for_a_restarted_stream() -> None:
    parser = StreamParser()
    parser.feed(HEADER)
    parser.reset()
    [header] = parser.feed(HEADER)
    assert isinstance(header, StreamHeader)


def test_size_counts_the_whole_stanza() -> None:
    stanza = b"<message to='y@b.example'><body>hello</body></message>"
    items = parse_all([HEADER, stanza])
    assert items[1].size == len(stanza)


@pytest.mark.parametrize(
    "limits, data, text",
    [
        (ParserLimits(max_depth=3), b"<a><b><c><d/></c></b></a>", "nested deeper than 3"),
        (ParserLimits(max_attributes=4), b"<a v='0' w='0' x='1' y='2' z='3'/>", "more than 4 attr"),
        (ParserLimits(max_attribute_bytes=10), b"<a x='" + b"y" * 11 + b"'/>", "longer than 10"),
        (ParserLimits(max_stanza_bytes=100), b"<a>" + b"z" * 2000, "larger than 100 bytes"),
    ],
)
def test_limits(limits: ParserLimits, data: bytes, text: str) -> None:
    parser = StreamParser(limits)
    parser.feed(HEADER)
    with pytest.raises(XmlStreamError) as info:
        parser.feed(data)
    assert info.value.condition == "policy-violation" and text in info.value.text


def test_limits_are_exact() -> None:
    parser = StreamParser(ParserLimits(max_depth=3, max_attributes=4))
    parser.feed(HEADER)
    assert len(parser.feed(b"<a w='0' x='1' y='2' z='3'><b><c/></b></a>")) == 1


def test_deep_nesting_is_refused_early() -> None:
    parser = StreamParser()
    parser.feed(HEADER)
    with pytest.raises(XmlStreamError):
        parser.feed(b"<a>" * 10_000)


def test_whitespace_keepalives_do_not_accumulate() -> None:
    parser = StreamParser(ParserLimits(max_stanza_bytes=100))
    parser.feed(HEADER)
    for _ in range(1000):
        assert parser.feed(b" ") == []


def test_text_outside_stanzas_is_bad_format() -> None:
    parser = StreamParser()
    parser.feed(HEADER)
    with pytest.raises(XmlStreamError) as info:
        parser.feed(b"hello")
    assert info.value.condition == "bad-format"


def test_non_utf8_declaration() -> None:
    with pytest.raises(XmlStreamError) as info:
        StreamParser().feed(b"<?xml version='1.0' encoding='ISO-8859-1'?><stream:stream/>")
    assert info.value.condition == "unsupported-encoding"


def test_error_is_sticky() -> None:
    parser = StreamParser()
    with pytest.raises(XmlStreamError):
        parser.feed(b"<!-- x -->")
    with pytest.raises(XmlStreamError):
        parser.feed(HEADER)


def test_wrong_stream_namespace() -> None:
    with pytest.raises(XmlStreamError) as info:
        StreamParser().feed(b"<stream:stream xmlns:stream='urn:wrong'>")
    assert info.value.condition == "invalid-namespace"


CORPUS = sorted((Path(__file__).parent / "corpus").glob("*.xml"))


def items_of(data: bytes, cuts: list[int], limits: ParserLimits | None = None) -> list:
    parser = StreamParser(limits)
    items = []
    previous = 0
    for cut in [*cuts, len(data)]:
        items += parser.feed(data[previous:cut])
        previous = cut
    return items


def summary(items: list) -> list:
    """Comparable form: headers by attributes, stanzas by bytes and size, ends."""
    out: list = []
    for item in items:
        if isinstance(item, StreamHeader):
            out.append(("header", item.attrs, item.namespaces))
        elif isinstance(item, StanzaElement):
            out.append(("stanza", serialize(item.element), item.size))
        else:
            out.append(("end",))
    return out


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_corpus_transcript_at_every_split_point(path: Path) -> None:
    data = path.read_bytes()
    whole = summary(items_of(data, []))
    assert whole[0][0] == "header" and whole[-1] == ("end",)
    for cut in range(1, len(data)):
        assert summary(items_of(data, [cut])) == whole, f"split at byte {cut}"


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_corpus_transcript_byte_by_byte(path: Path) -> None:
    data = path.read_bytes()
    assert summary(items_of(data, list(range(1, len(data))))) == summary(items_of(data, []))


def test_split_inside_a_multibyte_character() -> None:
    text = "Grüße 😀".encode()
    data = HEADER + b"<message to='y@b.example'><body>" + text + b"</body></message>"
    for cut in range(len(HEADER), len(data)):
        [_, stanza] = items_of(data, [cut])
        assert stanza.element.findtext("{jabber:server}body") == "Grüße 😀"


def test_stanza_sizes_add_up_across_keepalives() -> None:
    data = HEADER + b"<a/>  \n<bb x='1'/>\t<c>t</c>"
    [_, a, bb, c] = items_of(data, [])
    assert (a.size, bb.size, c.size) == (4, 11, 8)


def test_namespaces_and_prefixes() -> None:
    data = HEADER + (
        b"<s:message xmlns:s='jabber:server' to='y@b.example'><s:body>x</s:body></s:message>"
        b"<iq to='b.example' type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>"
        b"<message to='y@b.example'><x:event xmlns:x='urn:example:x' x:attr='v'/></message>"
    )
    [header, message, iq, third] = items_of(data, [])
    assert header.namespaces == {"": "jabber:server", "stream": "http://etherx.jabber.org/streams",
                                 "db": "jabber:server:dialback"}
    assert header.default_ns == "jabber:server"
    assert message.element.tag == "{jabber:server}message"
    assert message.element[0].tag == "{jabber:server}body"
    assert iq.element[0].tag == "{urn:xmpp:ping}ping"
    event = third.element[0]
    assert event.tag == "{urn:example:x}event" and event.get("{urn:example:x}attr") == "v"


def test_unbound_prefix_is_invalid_namespace() -> None:
    parser = StreamParser()
    parser.feed(HEADER)
    with pytest.raises(XmlStreamError) as info:
        parser.feed(b"<q:message/>")
    assert info.value.condition == "invalid-namespace"


def test_xml_lang_on_header_and_stanza() -> None:
    header = stream_header(from_="a.example", to="b.example", stream_id=None, lang="de")
    [parsed, stanza] = items_of(header + b"<message xml:lang='en'/>", [])
    xml_lang = "{http://www.w3.org/XML/1998/namespace}lang"
    assert parsed.attrs[xml_lang] == "de"
    assert stanza.element.get(xml_lang) == "en"


def test_escapes_and_character_references() -> None:
    [_, stanza] = items_of(
        HEADER + b"<message a='&lt;&amp;&gt;&quot;&apos;&#x41;&#66;'><body>&#x1F600;&amp;</body>"
                 b"<![CDATA[<raw>&]]></message>", [])
    element = stanza.element
    assert element.get("a") == "<&>\"'AB"
    assert element.findtext("{jabber:server}body") == "😀&"
    assert element[0].tail == "<raw>&"


def test_stream_end_and_nothing_after_it() -> None:
    parser = StreamParser()
    assert isinstance(parser.feed(HEADER + b"</stream:stream>")[-1], StreamEnd)
    with pytest.raises(XmlStreamError) as info:
        parser.feed(b"<message/>")
    assert info.value.condition == "not-well-formed"


def test_reset_accepts_a_new_header_mid_buffer_state() -> None:
    parser = StreamParser()
    parser.feed(HEADER + b"<message><bo")  # half a stanza when the stream restarts
    parser.reset()
    header2 = stream_header(from_="a.example", to="b.example", stream_id="s2")
    [header, stanza] = parser.feed(header2 + b"<message/>")
    assert header.id == "s2" and stanza.size == len(b"<message/>")


def test_second_header_without_restart_is_refused() -> None:
    parser = StreamParser()
    parser.feed(HEADER)
    with pytest.raises(XmlStreamError) as info:
        parser.feed(HEADER[len(b"<?xml version='1.0'?>"):])
    assert info.value.condition == "invalid-xml"


# Exact limit boundaries: the limit itself is allowed, one more is refused.


def test_depth_boundary() -> None:
    limits = ParserLimits(max_depth=4)
    ok = b"<a><b><c><d/></c></b></a>"
    assert len(items_of(HEADER + ok, [], limits)) == 2
    with pytest.raises(XmlStreamError, match="nested deeper than 4"):
        items_of(HEADER + b"<a><b><c><d><e/></d></c></b></a>", [], limits)


def test_attribute_count_boundary() -> None:
    limits = ParserLimits(max_attributes=4)  # HEADER has 4 (xmlns declarations are not)
    assert len(items_of(HEADER + b"<a w='0' x='1' y='2' z='3'/>", [], limits)) == 2
    with pytest.raises(XmlStreamError, match="more than 4 attributes"):
        items_of(HEADER + b"<a v='0' w='0' x='1' y='2' z='3'/>", [], limits)


def test_attribute_count_includes_namespaced_attributes_not_declarations() -> None:
    limits = ParserLimits(max_attributes=4)
    data = HEADER + b"<a xmlns='urn:x' xmlns:p='urn:p' p:x='1' y='2' z='3' xml:lang='en'/>"
    assert len(items_of(data, [], limits)) == 2


def test_attribute_length_boundary_counts_characters() -> None:
    limits = ParserLimits(max_attribute_bytes=10)
    assert len(items_of(HEADER + b"<a x='" + b"y" * 10 + b"'/>", [], limits)) == 2
    with pytest.raises(XmlStreamError, match="longer than 10"):
        items_of(HEADER + b"<a x='" + b"y" * 11 + b"'/>", [], limits)
    # The limit also applies to the stream header's attributes.
    long_from = stream_header(from_="a" * 11, to="b.example", stream_id=None)
    with pytest.raises(XmlStreamError, match="longer than 10"):
        items_of(long_from, [], limits)


def test_stanza_size_boundary() -> None:
    limits = ParserLimits(max_stanza_bytes=100)
    stanza = b"<message><body>" + b"x" * (100 - 32) + b"</body></message>"
    assert len(stanza) == 100
    [_, item] = items_of(HEADER + stanza, [], limits)
    assert item.size == 100
    with pytest.raises(XmlStreamError, match="larger than 100 bytes"):
        items_of(HEADER + stanza.replace(b"<body>", b"<body>x"), [], limits)


def test_stanza_size_boundary_fed_in_pieces() -> None:
    limits = ParserLimits(max_stanza_bytes=100)
    stanza = b"<message><body>" + b"x" * 68 + b"</body></message>"
    assert len(summary(items_of(HEADER + stanza, list(range(len(HEADER), len(HEADER) + 100)),
                                limits))) == 2
    bigger = stanza.replace(b"<body>", b"<body>x")
    with pytest.raises(XmlStreamError):
        items_of(HEADER + bigger, list(range(len(HEADER), len(HEADER) + 101)), limits)


def test_unfinished_start_tag_is_bounded() -> None:
    """A tag that never ends cannot make the parser buffer without limit."""
    parser = StreamParser(ParserLimits(max_stanza_bytes=1000))
    parser.feed(HEADER + b"<message to='")
    with pytest.raises(XmlStreamError, match="larger than 1000 bytes"):
        for _ in range(100):
            parser.feed(b"x" * 100)


def test_round_trip_of_parsed_stanzas() -> None:
    """parse(serialize(parse(x))) == parse(x) for every stanza of the corpus."""
    for path in CORPUS:
        data = path.read_bytes()
        header_end = data.index(b">", data.index(b"<stream:stream")) + 1
        for item in items_of(data, []):
            if not isinstance(item, StanzaElement):
                continue
            again = items_of(data[:header_end] + serialize(item.element), [])
            assert serialize(again[1].element) == serialize(item.element)
            assert _tree(again[1].element) == _tree(item.element)


def _tree(element: Element) -> tuple:
    return (element.tag, sorted(element.attrib.items()), (element.text or ""),
            (element.tail or ""), [_tree(child) for child in element])
