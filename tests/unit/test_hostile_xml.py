"""Hostile XML (RFC 6120 §11 and §13.12) at the parser and the stream.

Each input must end in the right stream error — asserted as bytes: our header when none
was sent yet, the ``<stream:error>``, then ``</stream:stream>`` — and a StreamClosed event;
never an uncaught exception, never unbounded work.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.config.model import Limits
from gateway.xmpp.events import StreamClosed
from gateway.xmpp.parser import ParserLimits, StreamParser, XmlStreamError
from gateway.xmpp.tls import TlsError
from testbed.pki import Pki
from tests.unit.s2s_world import partner
from tests.unit.test_s2s_refusals import (
    ERROR_HEADER,
    OUR_HEADER,
    PEER_HEADER,
    PROCEED,
    STARTTLS,
    inbound,
)

XML_DECL = b"<?xml version='1.0'?>"
STREAM_OPEN = PEER_HEADER[len(XML_DECL):]
LAUGHS = (
    b"<!DOCTYPE lolz [<!ENTITY lol 'lol'>"
    + b"".join(
        b"<!ENTITY lol%d '%s'>" % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
        for i in range(1, 10)
    )
    + b"]>"
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(Path(tmp_path_factory.mktemp("pki")))


def error_bytes(condition: str) -> bytes:
    return f'<stream:error><{condition} xmlns="urn:ietf:params:xml:ns:xmpp-streams"/>'.encode()


def run(data: bytes | list[bytes], *, limits: Limits | None = None, after_header: bool = True):
    """Feed ``data`` to an inbound stream (after a good header when asked); return the
    bytes it answered to the hostile part and its StreamClosed event."""
    peer = inbound(None, partner("a.example", "not-supported", "not-supported"), limits=limits)
    if after_header:
        assert peer.send(PEER_HEADER).startswith(OUR_HEADER)
    answer = b"".join(peer.send(chunk) for chunk in ([data] if isinstance(data, bytes) else data))
    [closed] = peer.of(StreamClosed)
    assert not closed.by_peer
    assert answer.endswith(b"</stream:error></stream:stream>")
    return answer, closed


# Before the stream header: our header goes out first (RFC 6120 §4.9.1.1).
@pytest.mark.parametrize(
    "data, condition",
    [
        (XML_DECL + LAUGHS + STREAM_OPEN, "restricted-xml"),  # billion laughs
        (XML_DECL + b"<!DOCTYPE s SYSTEM 'http://evil.example/x.dtd'>" + STREAM_OPEN,
         "restricted-xml"),  # external DTD
        (XML_DECL + b"<!DOCTYPE s [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>" + STREAM_OPEN,
         "restricted-xml"),  # external entity
        (XML_DECL + b"<?evil pi?>" + STREAM_OPEN, "restricted-xml"),
        (XML_DECL + b"<!-- hi -->" + STREAM_OPEN, "restricted-xml"),
        (b"<?xml version='1.0' encoding='ISO-8859-1'?>" + STREAM_OPEN, "unsupported-encoding"),
        (b"<?xml version='1.0' encoding='UTF-16'?>" + STREAM_OPEN, "unsupported-encoding"),
        (b"GET / HTTP/1.1\r\nHost: b.example\r\n\r\n", "not-well-formed"),  # garbage first
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "not-well-formed"),  # a TLS hello
        (b"<message xmlns='jabber:server'/>", "bad-format"),  # no stream header at all
        (b"<stream xmlns='urn:wrong'>", "invalid-namespace"),
        (b"\xef\xbb\xbf\xff" + STREAM_OPEN, "not-well-formed"),  # BOM then invalid UTF-8
    ],
    ids=["billion-laughs", "external-dtd", "external-entity", "pi", "comment", "latin1",
         "utf16", "http", "tls-hello", "no-header", "wrong-stream-ns", "bad-utf8"],
)
def test_hostile_before_the_header(data: bytes, condition: str) -> None:
    answer, closed = run(data, after_header=False)
    assert answer.startswith(ERROR_HEADER + error_bytes(condition))
    assert closed.error == condition


# After the header: the error follows our header and features, which were already sent.
@pytest.mark.parametrize(
    "data, condition",
    [
        (LAUGHS, "not-well-formed"),  # a DTD is not allowed inside the document element
        (b"<message>&lol9;</message>", "not-well-formed"),  # undefined entity (XML 1.0 WFC)
        (b"<message>&amp;&#0;</message>", "not-well-formed"),  # restricted characters
        (b"<message>\x01</message>", "not-well-formed"),
        (b"<?pi x?>", "restricted-xml"),
        (b"<message><!-- c --></message>", "restricted-xml"),
        (b"<message>\xc3\x28</message>", "not-well-formed"),  # invalid UTF-8
        (b"<message>\xed\xa0\x80</message>", "not-well-formed"),  # UTF-8 surrogate
        (b"<message><body></message>", "not-well-formed"),  # mismatched tags
        (b"<message a='1' a='2'/>", "not-well-formed"),  # duplicate attribute
        (b"<x:message/>", "invalid-namespace"),  # unbound prefix
        (b"hello", "bad-format"),  # text between stanzas
        (STREAM_OPEN, "invalid-xml"),  # a second stream header without a restart
        (b"<a>" * 10_000, "policy-violation"),  # 10,000-deep nesting
        (b"<message a='" + b"x" * 20_000 + b"'/>", "policy-violation"),  # huge attribute
        (b"<message " + b" ".join(b"a%d='1'" % i for i in range(100)) + b"/>",
         "policy-violation"),  # attribute flood
        (b"<message><body>" + b"x" * 600_000 + b"</body></message>", "policy-violation"),
        (b"<message to='" + b"x" * 600_000, "policy-violation"),  # never-ending tag
        (b"</stream:stream><message/>", "not-well-formed"),  # junk after the document
    ],
    ids=["dtd-inside", "undeclared-entity", "nul-ref", "control-char", "pi", "comment",
         "bad-utf8", "surrogate", "mismatch", "dup-attr", "unbound-prefix", "text",
         "second-header", "deep", "huge-attribute", "many-attributes", "oversized",
         "unclosed-tag", "after-end"],
)
def test_hostile_after_the_header(data: bytes, condition: str) -> None:
    answer, closed = run(data)
    assert answer.startswith(error_bytes(condition)), answer[:200]
    assert closed.error == condition


def test_oversized_stanza_trickled_in_small_pieces() -> None:
    limits = Limits(max_stanza_bytes=10_000)
    pieces = [b"<message><body>"] + [b"x" * 100] * 200
    answer, _closed = run(pieces, limits=limits)
    assert answer.startswith(error_bytes("policy-violation"))
    assert b"stanza larger than 10000 bytes" in answer


def test_deep_nesting_fed_one_tag_at_a_time() -> None:
    answer, _ = run([b"<a>"] * 200)
    assert answer.startswith(error_bytes("policy-violation"))
    assert b"elements nested deeper than 32" in answer


def test_the_error_is_sent_once_and_later_bytes_are_ignored() -> None:
    peer = inbound(None, partner("a.example", "not-supported", "not-supported"))
    peer.send(PEER_HEADER)
    first = peer.send(b"<!-- x -->")
    assert first.startswith(error_bytes("restricted-xml"))
    assert peer.send(b"<message/>" * 10 + b"<!-- more -->") == b""
    assert len(peer.of(StreamClosed)) == 1


def test_unclosed_stream_then_connection_lost() -> None:
    peer = inbound(None, partner("a.example", "not-supported", "not-supported"))
    peer.send(PEER_HEADER + b"<message to='y@b.example'><body>half")
    peer.stream.connection_lost("EOF")
    assert peer.pump() == b""
    [closed] = peer.of(StreamClosed)
    assert (closed.error, closed.reason, closed.by_peer) == ("", "EOF", True)
    assert peer.stream.closed


def test_unclosed_stream_times_out() -> None:
    peer = inbound(None, partner("a.example", "not-supported", "not-supported"),
                   limits=Limits(negotiation_timeout=3))
    peer.send(PEER_HEADER + b"<message><body>never finished")
    peer.stream.handle_timer(3.0)
    assert peer.pump().startswith(error_bytes("connection-timeout"))


def test_plaintext_after_starttls_was_required(pki: Pki) -> None:
    peer = inbound(pki, partner("a.example", "required", "optional"))
    peer.send(PEER_HEADER)
    # A stanza before negotiation: <not-authorized/> (RFC 6120 §4.3.2 wins over the
    # policy-violation every other element gets while TLS is still missing).
    answer = peer.send(b"<message from='x@a.example' to='y@b.example'><body>clear</body>"
                       b"</message>")
    assert answer.startswith(error_bytes("not-authorized"))
    peer = inbound(pki, partner("a.example", "required", "optional"))
    peer.send(PEER_HEADER)
    answer = peer.send(b"<db:verify from='a.example' to='b.example' id='1'>k</db:verify>")
    assert answer.startswith(error_bytes("policy-violation"))
    assert b"TLS is required for a.example before anything else" in answer


def test_tls_garbage_after_proceed(pki: Pki) -> None:
    peer = inbound(pki, partner("a.example"))
    peer.send(PEER_HEADER)
    assert peer.send(STARTTLS) == PROCEED
    # Not a TLS record: the handshake fails; no XML can be written any more, only the
    # TLS alert record OpenSSL queued.
    peer.stream.receive_data(b"\x16\x03\x01\x00\x05hello" + b"\x00" * 50, 0.0)
    assert peer.stream.data_to_send()[:1] in (b"", b"\x15")  # nothing, or a TLS alert
    peer.events += peer.stream.events()
    [closed] = peer.of(StreamClosed)
    assert closed.reason.startswith("TLS handshake failed") and peer.stream.closed


def test_tls_record_garbage_after_the_handshake(pki: Pki) -> None:
    from tests.unit.test_s2s_refusals import tls_up

    peer = inbound(pki, partner("a.example"))
    tls_up(peer, pki)
    peer.stream.receive_data(b"\x17\x03\x03\x00\x10" + b"\x00" * 16, 0.0)  # bad MAC
    # Nothing but OpenSSL's alert, which TLS 1.3 sends encrypted (outer type 0x17).
    alert = peer.stream.data_to_send()
    assert peer.tls is not None
    with pytest.raises(TlsError, match="bad record mac"):
        peer.tls.receive(alert)
    peer.events += peer.stream.events()
    [closed] = peer.of(StreamClosed)
    assert closed.reason.startswith("TLS error") and peer.stream.closed


# ---------------------------------------------------------------------------- parser level


def test_billion_laughs_costs_nothing() -> None:
    parser = StreamParser()
    started = time.perf_counter()
    with pytest.raises(XmlStreamError) as info:
        parser.feed(XML_DECL + LAUGHS + STREAM_OPEN + b"<m>&lol9;</m>")
    assert info.value.condition == "restricted-xml"
    assert time.perf_counter() - started < 0.1


@pytest.mark.parametrize("depth", [33, 1000, 10_000, 100_000])
def test_deep_nesting_stops_at_the_limit(depth: int) -> None:
    parser = StreamParser(ParserLimits(max_depth=32))
    parser.feed(PEER_HEADER)
    with pytest.raises(XmlStreamError) as info:
        parser.feed(b"<a>" * depth)
    assert info.value.condition == "policy-violation"


def test_huge_attribute_value_of_entities() -> None:
    """Character references expand in attribute values; the limit is on the result."""
    parser = StreamParser(ParserLimits(max_attribute_bytes=1000, max_stanza_bytes=100_000))
    parser.feed(PEER_HEADER)
    with pytest.raises(XmlStreamError, match="attribute longer than 1000"):
        parser.feed(b"<m a='" + b"&#65;" * 1001 + b"'/>")


def test_nothing_is_acted_on_after_a_stream_error() -> None:
    """Found by the fuzzer: a header refused with a stream error, then a db:result in a
    later read, reached the dialback code of a stream without an id (AssertionError)."""
    peer = inbound(None, partner("a.example", "not-supported", "not-supported"))
    answer = peer.send(PEER_HEADER.replace(b"xmlns='jabber:server'", b"xmlns='jab]]>ber'"))
    assert answer.endswith(b"</stream:error></stream:stream>")
    assert peer.send(b"<db:result from='a.example' to='b.example'>k</db:result>"
                     b"<message from='x@a.example' to='y@b.example'/>") == b""
    assert [type(e).__name__ for e in peer.events] == ["StreamClosed"]
    assert peer.send(b"</stream:stream>") == b""
    assert peer.stream.closed
