"""The hardened incremental stream parser and the serialiser."""

from __future__ import annotations

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
