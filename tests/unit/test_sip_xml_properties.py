"""Property tests at scale: the SIP parser, the SIP → stanza mapping and the stanza
serialiser, with what the partners use to judge the result (expat).

The properties:

* the SIP parser is total: any bytes give a parsed message or :class:`SipParseError`,
  nothing else; what it accepts serialises back to bytes that parse to the same message;
  a stream cut anywhere deframes to the same messages (or to a framing error, never
  another exception);
* the SIP → XMPP mapping (the real :class:`MessageRelay` behind a real transaction
  layer) either answers the request with a final 4xx/5xx or hands on a stanza, and every
  stanza it hands on is accepted by a strict XML parser (expat, inside a stream as a
  partner reads it) and carries the body, sender and recipient unchanged;
* the serialiser writes well-formed XML 1.0 whatever the element holds (forbidden
  characters anywhere in text and attribute values), round trips everything XML can
  carry, replaces the rest by U+FFFD, and :func:`check_element` refuses exactly what it
  would replace.

Scale: hypothesis draws a *batch* per example (a request plus a list of mutations of it;
a list of elements), because an example costs ~300 µs of hypothesis machinery while an
input costs 10-60 µs to check: per ``make test`` run this file checks
:data:`MIN_INPUTS` (100,000) generated inputs or more, counted and asserted by the last
test. Profiles (env ``SIP_PROPERTIES``): ``ci`` (default; derandomized so that a failure
in CI reproduces locally, no example database), ``long`` (random, 10x the examples, for
a local hunt). Wall time on the 2-core CI machine: see docs/sip.md ("How it is tested").
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element
from xml.parsers import expat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.sip.endpoint import SipEndpoint
from gateway.sip.message import (
    SipParseError,
    SipRequest,
    SipResponse,
    StreamDeframer,
    head_answer,
    make_response,
    parse_message,
    read_head,
    response_wire,
)
from gateway.sip.messaging import MessageRelay
from gateway.sip.stanzas import chat_message, text_message
from gateway.sip.transaction import RequestReceived
from gateway.sip.xhtml import html_to_message
from gateway.xmpp.namespaces import NS_SERVER
from gateway.xmpp.xml import (
    REPLACEMENT,
    PreparedStanza,
    XmlCharacterError,
    check_element,
    serialize,
    stream_header,
)

MIN_INPUTS = 100_000
PROFILE = os.environ.get("SIP_PROPERTIES", "ci")
SCALE = {"ci": 1, "long": 10}[PROFILE]
settings.register_profile("sip-ci", derandomize=True, database=None, deadline=None,
                          suppress_health_check=list(HealthCheck), print_blob=True)
settings.register_profile("sip-long", derandomize=False, database=None, deadline=None,
                          suppress_health_check=list(HealthCheck), print_blob=True)
BASE = settings.get_profile(f"sip-{PROFILE}")


@dataclass
class Tally:
    inputs: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, target: str, count: int = 1) -> None:
        self.inputs[target] = self.inputs.get(target, 0) + count


TALLY = Tally()


@pytest.fixture(autouse=True)
def timed(request: pytest.FixtureRequest):
    """Wall time of each test here, reported by the last one."""
    start = time.monotonic()
    yield
    TALLY.seconds[request.node.name] = time.monotonic() - start


# ---------------------------------------------------------------------- structured blobs

# What a byte of a blob means as a character: 0x20-0x7e themselves, the rest characters
# that break naive code: 0x00-0x1f and 0x7f-0xef non-ASCII that XML carries (non-ASCII
# digits, non-characters it allows, line separators, combining marks, astral and
# case-folding traps), 0xf0-0xff what XML 1.0 forbids (C0 controls, surrogates,
# U+FFFE/U+FFFF) and the three controls it allows. About one character in sixteen is
# forbidden, so that both outcomes (refused, carried) are common.
_CARRIED = ("\x7f\x85\xa0\xb2\xb3\xb9\u0663\u0660\u06f1\u0966\uff11\u2070\u2074\u00bd"
            "\u2155\ufffd\ufeff\u200b\u200d\u2028\u2029\u0301\u0130\u0131\u00df\u017f"
            "\u212a\u00e9\u00c9\u03a3\u03c2\u0410\u4e2d\u6587\uac00\U0001f600\U0001f1eb"
            "\U00010000\U0010ffff\U000e0001\u00a0\u3000\u1680\u180e\ufdd0\ufdef\u061c")
_FORBIDDEN_OR_EDGE = ("\x00\x01\x08\x0b\x0c\x0e\x1b\x1f\ud800\udbff\udc00\udfff\ufffe"
                      "\t\n\r")
CHAR_OF = ([_CARRIED[i % len(_CARRIED)] for i in range(0x20)]
           + [chr(b) for b in range(0x20, 0x7f)]
           + [_CARRIED[i % len(_CARRIED)] for i in range(0x7f, 0xf0)]
           + [_FORBIDDEN_OR_EDGE[i % len(_FORBIDDEN_OR_EDGE)] for i in range(0xf0, 0x100)])
assert len(CHAR_OF) == 256


class Reader:
    """Reads structure out of a blob hypothesis drew: one draw per input (a composite
    strategy costs ~50 µs per field; 100,000 inputs must take seconds, not minutes), and
    hypothesis still shrinks the blob to a minimal failing one."""

    def __init__(self, blob: bytes) -> None:
        self.blob, self.at = blob, 0

    def byte(self) -> int:
        if self.at >= len(self.blob):
            return 0
        self.at += 1
        return self.blob[self.at - 1]

    def choice(self, options: list):
        return options[self.byte() % len(options)]

    def text(self, limit: int = 12) -> str:
        size = self.byte() % (limit + 1)
        chars = [CHAR_OF[b] for b in self.blob[self.at:self.at + size]]
        self.at += size
        return "".join(chars)

    def raw(self, limit: int = 24) -> bytes:
        size = self.byte() % (limit + 1)
        data = self.blob[self.at:self.at + size]
        self.at += size
        return data


BLOBS = st.lists(st.binary(min_size=8, max_size=120), min_size=40, max_size=40)


# ---------------------------------------------------------------------- expat as a partner

STREAM_OPEN = stream_header(from_="b.example", to="a.example", stream_id="p")


def expat_stanzas(data: bytes) -> list[Element]:
    """The stanzas a partner's expat reads from ``data`` written inside our stream
    (raises ``expat.ExpatError`` where a partner would close the stream)."""
    parser = expat.ParserCreate(namespace_separator="}")
    stack: list[Element] = []
    stanzas: list[Element] = []

    def start(name: str, attributes: dict[str, str]) -> None:
        tag = "{" + name if "}" in name else name
        attrib = {("{" + k if "}" in k else k): v for k, v in attributes.items()}
        element = Element(tag, attrib)
        if len(stack) >= 2:  # below the stream element: part of a stanza
            stack[-1].append(element)
        stack.append(element)

    def end(_name: str) -> None:
        element = stack.pop()
        if len(stack) == 1:
            stanzas.append(element)

    def text(data: str) -> None:
        if len(stack) < 2:
            return
        current = stack[-1]
        if len(current):
            last = current[-1]
            last.tail = (last.tail or "") + data
        else:
            current.text = (current.text or "") + data

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    parser.Parse(STREAM_OPEN + data + b"</stream:stream>", True)
    return stanzas


def same_tree(left: Element, right: Element) -> bool:
    return (left.tag == right.tag and left.attrib == right.attrib
            and (left.text or "") == (right.text or "")
            and (left.tail or "") == (right.tail or "")
            and len(left) == len(right)
            and all(same_tree(a, b) for a, b in zip(left, right, strict=True)))


# ---------------------------------------------------------------------- SIP input


JUNK = ["0", "1", "65535", "65536", "4294967296", "\u00b2", "\u0663", "\uff11", "\x00",
        "\x01", "\x1b", "\x7f", "\u2028", "\ufffe", " ", "\t", ":", ";", ",", "<", ">",
        "[", "]", "@", "%00", "%ff", "%", '"', "\\", "=", "sip:", "sips:", "tel:",
        "z9hG4bK", "branch=", "tag=", "MESSAGE", "é", "\U0001f600", "[2001:db8::1",
        "[::1]", "a.example", "b.example", "alice", "\r", "\n"]
METHODS = ["MESSAGE", "MESSAGE", "MESSAGE", "SUBSCRIBE", "NOTIFY", "OPTIONS", "ACK",
           "INVITE", "FOO", "méssage", "MESS AGE", ""]
URIS = ["sip:carol@a.example", "sip:carol@a.example", "sip:carol@a.example",
        "sip:a%00b@a.example", "sip:bob@[2001:db8::1",
        "sip:bob@[2001:db8::1]:5060", "sip:%e2%80%8b@a.example", "sip:x@a.example;gr=1",
        "sips:c%40d@a.example", "tel:+1", "sip:@a.example", "sip:carol@", "<sip:c@a.example>"]
FIELDS = ["Via", "From", "To", "Call-ID", "CSeq", "Content-Length", "Content-Type", "v",
          "f", "t", "i", "l", "c", "Max-Forwards", "X-Extra", "Bad Name", "", "Via"]
GOOD = {
    "Via": "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{n};rport",
    "From": '"Alice" <sip:alice@b.example>;tag=f{n}',
    "To": "<sip:carol@a.example>",
    "Call-ID": "c{n}@10.0.0.1",
    "CSeq": "{n} {method}",
    "Content-Type": "text/plain;charset=UTF-8",
}
BYTE_TOKENS = [token.encode("utf-8", "surrogatepass") for token in JUNK] + [
    b"\xff", b"\xc3", b"\xed\xa0\x80", b"\r\n", b"\r\n\r\n", b"\n\n", b"\r\n ",
    b"Content-Length: 5\r\n", b"l: \xc2\xb2\r\n", b"CSeq: \xc2\xb2 MESSAGE\r\n",
    b"Via: SIP/2.0/UDP h:\xc2\xb2\r\n", b"SIP/2.0 200 OK\r\n",
    b"SIP/2.0 \xd9\xa3\xd9\xa3\xd9\xa3 X\r\n"]

def sip_request(blob: bytes) -> bytes:
    """A request built field by field, a few fields spoiled, left out or repeated, then
    a few bytes inserted, overwritten or cut."""
    read = Reader(blob)
    method = read.choice(METHODS)
    n = int.from_bytes(bytes(read.byte() for _ in range(4)))
    fields = {name: value.format(n=n, method=method) for name, value in GOOD.items()}
    for _ in range(max(0, read.byte() % 8 - 4)):  # none half the time
        name = read.choice(FIELDS)
        if read.byte() % 2:
            fields[name] = "".join(read.choice(JUNK) for _ in range(read.byte() % 5))
        else:
            fields.pop(name, None)
    body = read.raw()
    if read.byte() % 2:
        fields.setdefault("Content-Length", str(len(body)))
    line_end = read.choice(["\r\n", "\r\n", "\n"])
    start = f"{method} {read.choice(URIS)} SIP/2.0"
    head = line_end.join([start, *(f"{k}: {v}" for k, v in fields.items())])
    data = (head + line_end + line_end).encode("utf-8", "surrogatepass") + body
    for _ in range(max(0, read.byte() % 6 - 3)):  # none half the time
        position = read.byte() * 2 % (len(data) + 1)
        token, kind = read.choice(BYTE_TOKENS), read.byte() % 4
        if kind == 0:  # insert
            data = data[:position] + token + data[position:]
        elif kind == 1:  # overwrite
            data = data[:position] + token + data[position + len(token):]
        elif kind == 2:  # cut
            data = data[:position]
        else:  # delete
            data = data[:position] + data[position + len(token):]
    return data


def parse_or_refuse(data: bytes, *, stream: bool = False) -> SipRequest | SipResponse | None:
    """The parser's whole contract: a message, or its own error (nothing else escapes)."""
    try:
        message = parse_message(data, stream=stream)
    except SipParseError as exc:
        assert isinstance(exc.reason, str) and exc.status in (0, 400, 413)
        if exc.request is not None:  # answerable: the five fields were there
            assert exc.request.method != "ACK"
        return None
    assert message.call_id and message.cseq
    return message


def head_agrees(data: bytes, message: SipRequest | SipResponse | None) -> None:
    """read_head (the overload path) reads what the full parser reads, when both read;
    and the 503 it builds is a response to that request."""
    head = read_head(data)
    if head is None or not isinstance(message, SipRequest):
        return
    via = message.top_via
    assert (head.method, head.uri) == (message.method, message.uri)
    assert head.transaction == (via.branch, via.sent_by, message.method)
    try:
        tag = message.to.tag
    except SipParseError:  # an unreadable To: the full path answers 400, no tag to compare
        return
    assert head.to_tagged == bool(tag)
    answer = parse_message(head_answer(head, 503, "Service Unavailable", to_tag="t1",
                                       extra=[("Retry-After", "1")]), stream=True)
    assert isinstance(answer, SipResponse) and answer.status == 503
    assert (answer.call_id, answer.cseq, answer.branch) == (
        message.call_id, message.cseq, message.branch)
    assert answer.to.tag == (tag or "t1")


def round_trips(message: SipRequest | SipResponse) -> None:
    again = parse_message(message.serialize(), stream=True)
    assert type(again) is type(message)
    assert again.body == message.body and again.cseq == message.cseq
    assert [(k, v) for k, v in again.headers if k.lower() not in ("content-length", "l")] \
        == [(k, v) for k, v in message.headers if k.lower() not in ("content-length", "l")]
    if isinstance(message, SipRequest):
        assert isinstance(again, SipRequest)
        assert (again.method, again.uri) == (message.method, message.uri)


def answer_agrees(request: SipRequest) -> None:
    """The answer written from the parser's index (every request's) copies what the
    general copy (:func:`make_response`) copies: the Vias in order, From, To with our
    tag, Call-ID and CSeq."""
    def fields(data: bytes) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for line in data.decode("utf-8", "surrogatepass").split("\r\n")[1:]:
            name, _, value = line.partition(": ")
            found.setdefault(name, []).append(value)
        return found

    wire = fields(response_wire(request, 202, to_tag="t1"))
    general = fields(make_response(request, 202, to_tag="t1").serialize())
    assert wire["Via"] == general["Via"]
    for name in ("From", "To", "Call-ID", "CSeq"):
        assert wire[name] == general[name][:1]


@settings(BASE, max_examples=700 * SCALE)
@given(BLOBS)
def test_sip_parser_is_total_and_round_trips(blobs: list[bytes]) -> None:
    """Any bytes near a request: a message or a SipParseError; accepted ones round trip."""
    for blob in blobs:
        data = sip_request(blob)
        message = parse_or_refuse(data)
        if message is not None:
            round_trips(message)
            if isinstance(message, SipRequest):  # the usual spelling's shortcut agrees
                assert message.via_key == (message.top_via.branch, message.top_via.sent_by)
                answer_agrees(message)
        head_agrees(data, message)
        parse_or_refuse(blob)  # and the blob itself, as bytes off the wire
    TALLY.add("SIP parser", 2 * len(blobs))


@settings(BASE, max_examples=150 * SCALE)
@given(st.lists(st.binary(min_size=8, max_size=120), min_size=1, max_size=6),
       st.lists(st.integers(1, 200), min_size=1, max_size=8))
def test_sip_stream_deframing_is_total_wherever_it_is_cut(blobs: list[bytes],
                                                          cuts: list[int]) -> None:
    """A stream of requests read in arbitrary pieces: the messages it cuts are the ones
    the stream holds, until a framing error; never another exception."""
    requests = [sip_request(blob) for blob in blobs]
    stream = b"\r\n".join(requests)
    deframer = StreamDeframer()
    got: list[bytes] = []
    position = 0
    for size in cuts * (len(stream) // max(1, sum(cuts)) + 1):
        got += deframer.feed(stream[position:position + size])
        position += size
        if position >= len(stream):
            break
    whole = StreamDeframer()
    assert got == whole.feed(stream)
    assert (deframer.error is None) == (whole.error is None)
    for data in got:
        parse_or_refuse(data, stream=True)
    TALLY.add("SIP parser", len(requests))


# ---------------------------------------------------------------------- SIP → stanza


class Relay:
    """The real MessageRelay over a real (unstarted) endpoint: requests go through the
    transaction layer, answers are caught where the transport would send them."""

    def __init__(self) -> None:
        self.endpoint = SipEndpoint(transport="udp", proxy=("127.0.0.1", 5060),
                                    local=("127.0.0.1", 5062))
        self.answers: list[bytes] = []
        self.endpoint.transport.send = lambda _flow, data: self.answers.append(data)
        self.stanzas: list[Element] = []
        self.relay = MessageRelay(self.endpoint, frozenset({"b.example"}), self._to_xmpp)
        self.clock = time.monotonic()

    def _to_xmpp(self, stanza: Element, on_decided) -> None:
        self.stanzas.append(stanza)
        if on_decided is not None:
            on_decided()

    def handle(self, request: SipRequest) -> tuple[int, Element | None]:
        """(final status, the stanza handed on or None)."""
        self.answers.clear()
        self.stanzas.clear()
        # every earlier server transaction has expired (the endpoint answers on the
        # monotonic clock, so Timer J runs on it)
        self.clock = time.monotonic() + 100.0
        self.endpoint.layer.handle_timers(self.clock)
        [event] = self.endpoint.layer.receive(request, ("udp", ("127.0.0.1", 5060)),
                                              self.clock)
        assert isinstance(event, RequestReceived)
        self.relay.incoming(event)
        self.endpoint._flush()
        [answer] = self.answers
        status = int(answer.split(b" ", 2)[1])
        return status, (self.stanzas[0] if self.stanzas else None)


RELAY = Relay()


def percent_encoded(text: str) -> str:
    return "".join(c if c.isascii() and c.isalnum() else
                   "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
                   for c in text)


def sip_message(blob: bytes) -> tuple[bytes, str | None]:
    """(a MESSAGE whose user-controlled parts are arbitrary, the body text it carries,
    None when the body is not text)."""
    read = Reader(blob)
    body = read.text()
    user = percent_encoded(read.text(6)) or "carol"
    sender = percent_encoded(read.text(6)) or "alice"
    display = read.text(6).replace('"', "").replace("\r", "").replace("\n", "")
    try:
        data = body.encode()
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 for it, send it raw
        data, body = body.encode("utf-8", "surrogatepass"), None
    ctype = read.choice(["text/plain", "text/plain;charset=UTF-8", "", "text/html"])
    lines = [f"MESSAGE sip:{user}@a.example SIP/2.0",
             f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKp{blob.hex()}",
             f'From: "{display}" <sip:{sender}@b.example>;tag=1',
             f"To: <sip:{user}@a.example>", "Call-ID: c1", "CSeq: 1 MESSAGE",
             f"Content-Length: {len(data)}"]
    if ctype:
        lines.append(f"Content-Type: {ctype}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("utf-8", "surrogatepass") + data, body


@settings(BASE, max_examples=650 * SCALE)
@given(BLOBS)
def test_every_stanza_the_sip_side_hands_on_is_valid_xml_carrying_what_was_sent(
        blobs: list[bytes]) -> None:
    for blob in blobs:
        data, body = sip_message(blob)
        request = parse_or_refuse(data)
        if request is None:
            continue
        assert isinstance(request, SipRequest)
        status, stanza = RELAY.handle(request)
        if stanza is None:
            assert 400 <= status < 600, status  # refused, with a final answer
            continue
        assert status == 202
        assert body is not None  # a body that is not UTF-8 is never handed on
        wire = serialize(stanza)
        # a stanza built with its wire form is written exactly as the tree walk writes it
        assert wire == serialize(copy.deepcopy(stanza))
        [read] = expat_stanzas(wire)  # what the partner reads: it must parse
        if request.content_type == "text/html":  # the text of the HTML (RFC 7572 §7)
            body = html_to_message(body)[0]
        assert read.findtext(f"{{{NS_SERVER}}}body") == body  # unchanged, to the byte
        # and the addresses as built: nothing was replaced on the way
        assert (read.get("from"), read.get("to")) == (stanza.get("from"), stanza.get("to"))
    TALLY.add("SIP to stanza", len(blobs))


# ---------------------------------------------------------------------- the serialiser

TAGS = [f"{{{NS_SERVER}}}message", f"{{{NS_SERVER}}}body", f"{{{NS_SERVER}}}subject",
        "{urn:xmpp:receipts}request", "{http://jabber.org/protocol/chatstates}active",
        "{jabber:x:data}x", "{urn:x:y}item"]
ATTRIBUTES = ["to", "from", "id", "type", "{http://www.w3.org/XML/1998/namespace}lang",
              "{urn:x}flag", "name"]


def element(read: Reader, depth: int = 0) -> Element:
    built = Element(read.choice(TAGS))
    for _ in range(read.byte() % 4):
        built.set(read.choice(ATTRIBUTES), read.text())
    built.text = read.text() or None
    if depth < 2:
        for _ in range(read.byte() % 3):
            child = element(read, depth + 1)
            child.tail = read.text() or None
            built.append(child)
    return built


def forbidden_replaced(element: Element) -> Element:
    """``element`` as XML can carry it: what the serialiser promises the partner reads."""
    from gateway.xmpp.xml import _FORBIDDEN

    def fix(text: str | None) -> str | None:
        return _FORBIDDEN.sub(REPLACEMENT, text) if text else text

    copy = Element(element.tag, {k: fix(v) or "" for k, v in element.attrib.items()})
    copy.text, copy.tail = fix(element.text), fix(element.tail)
    for child in element:
        copy.append(forbidden_replaced(child))
    return copy


def has_forbidden(element: Element) -> bool:
    from gateway.xmpp.xml import _FORBIDDEN

    texts = [element.text, element.tail, *element.attrib.values()]
    return any(t and _FORBIDDEN.search(t) for t in texts) or any(
        has_forbidden(child) for child in element)


@settings(BASE, max_examples=800 * SCALE)
@given(BLOBS)
def test_the_serialiser_writes_well_formed_xml_whatever_it_is_given(
        blobs: list[bytes]) -> None:
    for blob in blobs:
        stanza = element(Reader(blob))
        wire = serialize(stanza)
        [read] = expat_stanzas(wire)
        assert same_tree(read, forbidden_replaced(stanza))
        refused = False
        try:
            check_element(stanza)
        except XmlCharacterError:
            refused = True
        assert refused == has_forbidden(stanza)
    TALLY.add("serialiser", len(blobs))


@settings(BASE, max_examples=500 * SCALE)
@given(BLOBS)
def test_a_prepared_stanza_is_written_as_the_tree_walk_writes_it(blobs: list[bytes]) -> None:
    """:func:`text_message` writes its stanza while building it; whatever the strings
    (markup, forbidden characters, empty text), those bytes are the ones :func:`serialize`
    writes for the same tree, and a changed attribute is never sent unwritten."""
    for blob in blobs:
        read = Reader(blob)
        sender, recipient, text, stanza_id = (read.text(), read.text(), read.text(40),
                                              read.text())
        language, subject, thread = read.text(4), read.text(), read.text()
        active = read.byte() % 2 == 1
        stanza = text_message(sender, recipient, text, stanza_id, language=language,
                              subject=subject, thread=thread, active=active)
        assert isinstance(stanza, PreparedStanza)
        # the tree the general builder makes for the same message
        assert same_tree(stanza, chat_message(
            sender, recipient, text, stanza_id, language=language, subject=subject,
            thread=thread, chat_state="active" if active else ""))
        walked = serialize(copy.deepcopy(stanza))
        assert type(copy.deepcopy(stanza)) is Element
        assert serialize(stanza) == walked
        [parsed] = expat_stanzas(walked)
        assert same_tree(parsed, forbidden_replaced(stanza))
        stanza.set("to", read.text())
        assert serialize(stanza) == serialize(copy.deepcopy(stanza))
    TALLY.add("serialiser", len(blobs))


def test_the_stream_header_is_well_formed_whatever_its_values() -> None:
    values = ["a.example", "x\x00y", "\ud800", "'\"<&>", "\uffff"]
    for value in values:
        header = stream_header(from_=value, to=value, stream_id=value, lang=value)
        parser = expat.ParserCreate()
        parser.Parse(header + b"</stream:stream>", True)


# ---------------------------------------------------------------------- the count


def test_at_least_100000_generated_inputs_were_checked() -> None:
    """Runs last in this file: the per-run budget the suite promises, and the time it
    took (printed with -s)."""
    targets = ("SIP parser", "SIP to stanza", "serialiser")
    if any(target not in TALLY.inputs for target in targets):
        pytest.skip("not every property test ran in this session")
    total = sum(TALLY.inputs.values())
    print(f"\ngenerated inputs: {TALLY.inputs} = {total}; seconds: "
          + ", ".join(f"{k} {v:.1f}" for k, v in TALLY.seconds.items()))
    assert total >= MIN_INPUTS * SCALE
