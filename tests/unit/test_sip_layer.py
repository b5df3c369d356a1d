"""The sans-I/O SIP layer: message parsing/serialisation (RFC 3261 §7, §20, §25) and
non-INVITE transactions (§17.1.2, §17.2.2), bytes and times in, bytes and events out."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.sip.message import (
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    SipParseError,
    SipRequest,
    SipResponse,
    StreamDeframer,
    address_uri,
    make_response,
    parse_message,
    parse_name_addr,
    parse_via,
    response_wire,
    split_values,
)
from gateway.sip.transaction import (
    T1,
    T2,
    TIMER_F,
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    TransactionLayer,
    TransactionTimedOut,
)

MESSAGE = (
    b"MESSAGE sip:bob@xmpp.example SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc;rport\r\n"
    b"Via: SIP/2.0/TCP proxy.example;branch=z9hG4bKdef\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice A." <sip:alice@sip.example>;tag=1928\r\n'
    b"To: sip:bob@xmpp.example\r\n"
    b"Call-ID: a84b4c76e66710@10.0.0.1\r\n"
    b"CSeq: 314159 MESSAGE\r\n"
    b"Content-Type: text/plain;charset=UTF-8\r\n"
    b"Content-Length: 5\r\n\r\nhello"
)


def request_bytes(*, drop: str = "", extra: bytes = b"", body: bytes = b"hi",
                  length: bytes | None = None, method: bytes = b"MESSAGE") -> bytes:
    headers = [
        b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1",
        b"From: <sip:a@sip.example>;tag=1",
        b"To: <sip:b@xmpp.example>",
        b"Call-ID: c1",
        b"CSeq: 1 " + method,
    ]
    headers = [h for h in headers if not drop or not h.lower().startswith(drop.lower().encode())]
    if length is not None:
        headers.append(b"Content-Length: " + length)
    return (method + b" sip:b@xmpp.example SIP/2.0\r\n" + b"\r\n".join(headers) + extra
            + b"\r\n\r\n" + body)


# ---------------------------------------------------------------------- parsing


def test_parse_request() -> None:
    message = parse_message(MESSAGE)
    assert isinstance(message, SipRequest)
    assert (message.method, message.uri, message.body) == ("MESSAGE", "sip:bob@xmpp.example",
                                                          b"hello")
    assert message.call_id == "a84b4c76e66710@10.0.0.1"
    assert message.cseq == (314159, "MESSAGE")
    assert message.from_ == parse_name_addr('"Alice A." <sip:alice@sip.example>;tag=1928')
    assert (message.from_.display, message.from_.uri, message.from_.tag) == (
        "Alice A.", "sip:alice@sip.example", "1928")
    assert (message.to.uri, message.to.tag) == ("sip:bob@xmpp.example", "")
    assert message.content_type == "text/plain"
    via = message.top_via
    assert (via.transport, via.host, via.port, via.branch, via.params["rport"]) == (
        "UDP", "10.0.0.1", 5060, "z9hG4bKabc", "")
    assert len(message.get_all("via")) == 2


def test_parse_response_and_body_length() -> None:
    data = (b"SIP/2.0 404 Not Found Here\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n"
            b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: c\r\nCSeq: 2 MESSAGE\r\n"
            b"Content-Length: 3\r\n\r\nabcdef")
    message = parse_message(data)
    assert isinstance(message, SipResponse)
    assert (message.status, message.reason, message.body) == (404, "Not Found Here", b"abc")
    assert message.to.tag == "2"


def test_compact_forms_and_folding() -> None:
    data = (b"MESSAGE sip:b@x SIP/2.0\r\nv: SIP/2.0/UDP h:5060;branch=z9hG4bK1\r\n"
            b"f: <sip:a@y>;tag=9\r\nt: <sip:b@x>\r\ni: cid\r\nCSeq: 1 MESSAGE\r\n"
            b"c: text/plain\r\no: presence\r\nSubject: a folded\r\n  header value\r\n"
            b"l: 2\r\n\r\nok")
    message = parse_message(data)
    assert (message.call_id, message.get("Content-Type"), message.get("event")) == (
        "cid", "text/plain", "presence")
    assert message.get("subject") == "a folded header value"
    assert message.from_.tag == "9" and message.body == b"ok"


def test_split_values_respects_quotes_and_brackets() -> None:
    assert split_values('<sip:a@x;lr>, "Doe, John" <sip:b@y>, <sip:c@z?h=1,2>') == [
        "<sip:a@x;lr>", '"Doe, John" <sip:b@y>', "<sip:c@z?h=1,2>"]
    message = parse_message(request_bytes(
        extra=b"\r\nRecord-Route: <sip:p1;lr>, <sip:p2;lr>\r\nRecord-Route: <sip:p3;lr>"))
    assert message.get_all("record-route") == ["<sip:p1;lr>", "<sip:p2;lr>", "<sip:p3;lr>"]


def test_via_forms() -> None:
    v6 = parse_via("SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bKq;received=192.0.2.1")
    assert (v6.transport, v6.host, v6.port, v6.params["received"]) == (
        "TLS", "2001:db8::1", 5061, "192.0.2.1")
    plain = parse_via("SIP/2.0/UDP host.example;branch=z9hG4bKz")
    assert (plain.port, plain.sent_by) == (None, "host.example")
    for bad in ("SIP/2.0 host", "HTTP/1.1/TCP h", "SIP/2.0/UDP h:99999", "SIP/2.0/UDP :5060"):
        with pytest.raises(SipParseError):
            parse_via(bad)


@pytest.mark.parametrize("via", [",", " , ,", ", ,  ,"])
def test_a_via_of_commas_is_the_parsers_error_with_an_answer(via: str) -> None:
    """Commas with nothing between them are no Via: 400 Bad Via, never
    an IndexError out of the parser (found by the property tests)."""
    data = request_bytes().replace(b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1",
                                   b"Via: " + via.encode())
    with pytest.raises(SipParseError) as refused:
        parse_message(data)
    assert (refused.value.status, refused.value.phrase) == (400, "Bad Via")
    assert refused.value.request is not None  # answerable: the five fields are there


def test_name_addr_forms() -> None:
    spec = parse_name_addr("sip:bob@x;tag=77")
    assert (spec.uri, spec.tag) == ("sip:bob@x", "77")
    assert str(spec.with_tag("88")) == "<sip:bob@x>;tag=88"
    with pytest.raises(SipParseError):
        parse_name_addr("<sip:unterminated@x")


@pytest.mark.parametrize("header", ["via", "from", "to", "call-id", "cseq"])
def test_each_required_header(header: str) -> None:
    with pytest.raises(SipParseError) as missing:
        parse_message(request_bytes(drop=header))
    assert "missing" in missing.value.reason or "Via" in missing.value.reason


@pytest.mark.parametrize(("data", "status", "words"), [
    (request_bytes(method=b"MESSAGE").replace(b"CSeq: 1 MESSAGE", b"CSeq: 1 NOTIFY"), 400,
     "CSeq method"),
    (b"MESSAGE sip:b@x\r\nVia: x\r\n\r\n", 400, "request line"),
    (b"SIP/2.0 99 Odd\r\nVia: x\r\n\r\n", 0, "status line"),
    (b"MESSAGE sip:b@x SIP/2.0\r\nFrom: \xff\xfe\r\n\r\n", 400, "UTF-8"),
    (request_bytes(length=b"500"), 400, "shorter than Content-Length"),
    (request_bytes(length=b"12x"), 400, "Content-Length"),
    (request_bytes(extra=b"\r\nX-Pad: " + b"a" * MAX_HEADER_BYTES), 413, "too large"),
    (request_bytes(extra=b"".join(b"\r\nX-H%d: v" % i for i in range(200))), 413,
     "too many"),
    (request_bytes(body=b"b" * (MAX_BODY_BYTES + 1)), 413, "body too large"),
    (request_bytes(extra=b"\r\nno colon here"), 400, "malformed header"),
])
def test_bad_messages(data: bytes, status: int, words: str) -> None:
    with pytest.raises(SipParseError) as error:
        parse_message(data)
    assert error.value.status == status
    assert words in error.value.reason


def test_content_length_rules_per_transport() -> None:
    assert parse_message(request_bytes(body=b"rest of datagram")).body == b"rest of datagram"
    with pytest.raises(SipParseError, match="required on stream"):
        parse_message(request_bytes(), stream=True)
    assert parse_message(request_bytes(length=b"2"), stream=True).body == b"hi"


def test_serialize_round_trip_recomputes_length() -> None:
    message = parse_message(MESSAGE)
    message.body = b"a longer body"
    message.set("content-length", "1")  # stale on purpose
    again = parse_message(message.serialize(), stream=True)
    assert again.body == b"a longer body"
    assert again.get_all("content-length") == ["13"]
    assert [h for h, _ in again.headers][:3] == ["Via", "Via", "Max-Forwards"]


@given(body=st.binary(max_size=2000),
       value=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FFF,
                                            blacklist_categories=("Cs",)), min_size=1,
                     max_size=60))
def test_round_trip_property(body: bytes, value: str) -> None:
    message = parse_message(request_bytes())
    message.add("subject", value)
    message.body = body
    again = parse_message(message.serialize(), stream=True)
    assert isinstance(again, SipRequest)
    assert (again.method, again.uri, again.body, again.get("subject")) == (
        "MESSAGE", "sip:b@xmpp.example", body, value)


def test_make_response_copies_what_rfc3261_says() -> None:
    request = parse_message(MESSAGE)
    assert isinstance(request, SipRequest)
    response = make_response(request, 202, to_tag="xyz")
    again = parse_message(response.serialize())
    assert isinstance(again, SipResponse)
    assert (again.status, again.reason) == (202, "Accepted")
    assert again.get_all("via") == request.get_all("via")
    assert (again.from_.tag, again.to.tag, again.call_id, again.cseq) == (
        "1928", "xyz", request.call_id, (314159, "MESSAGE"))
    tagged = parse_message(request_bytes())
    tagged.set("to", "<sip:b@xmpp.example>;tag=keep")
    assert isinstance(tagged, SipRequest)
    assert make_response(tagged, 200, to_tag="new").to.tag == "keep"


@pytest.mark.parametrize(("to", "expected"), [
    # §8.2.6.2: the request's To, as spelled, with our tag added
    ("Bob <sip:b@xmpp.example>", "Bob <sip:b@xmpp.example>;tag=new"),
    ('"Bob" <sip:b@xmpp.example>;x=1', '"Bob" <sip:b@xmpp.example>;x=1;tag=new'),
    ("sip:b@xmpp.example", "sip:b@xmpp.example;tag=new"),
    # a tag already there stays, whatever its spelling
    ("<sip:b@xmpp.example>; TAG = old", "<sip:b@xmpp.example>; TAG = old"),
    ("sip:b@xmpp.example;tag=old", "sip:b@xmpp.example;tag=old"),
    # a tag parameter inside the URI is the URI's, not the header's
    ("<sip:b@xmpp.example;tag=uri>", "<sip:b@xmpp.example;tag=uri>;tag=new"),
])
def test_make_response_tags_the_to_it_copies(to: str, expected: str) -> None:
    request = parse_message(request_bytes())
    assert isinstance(request, SipRequest)
    request.set("to", to)
    for fresh in (request, parse_message(request.serialize())):  # built and parsed
        assert isinstance(fresh, SipRequest)
        response = make_response(fresh, 202, to_tag="new")
        assert response.get_all("to") == [expected]
        assert make_response(fresh, 100, to_tag="new").get_all("to") == [to]


@pytest.mark.parametrize("value", [
    "<sip:a@b>", ' "Al <x>" <sip:a@b;transport=tcp>;tag=1', "sip:a@b;tag=2", "Al<sip:a@b>",
    "sips:a@b", "<sip:a@b> ;tag=3", "", "  ", "<sip:a@b", "tel:+123;x=y"])
def test_address_uri_is_the_uri_parse_name_addr_finds(value: str) -> None:
    try:
        expected = parse_name_addr(value).uri
    except SipParseError:
        with pytest.raises(SipParseError):
            address_uri(value)
        return
    assert address_uri(value) == expected


@pytest.mark.parametrize("status", [100, 202, 415, 503])
@pytest.mark.parametrize("built", [False, True])
def test_response_wire_is_the_serialised_make_response(status: int, built: bool) -> None:
    request = parse_message(MESSAGE)
    assert isinstance(request, SipRequest)
    if built:  # a request changed after parsing has no header keys kept
        request.set("to", "Bob <sip:b@xmpp.example>")
    extra = [("accept", "text/plain"), ("Retry-After", "1")]
    response = make_response(request, status, to_tag="t1")
    for name, value in extra:
        response.add(name, value)
    assert response_wire(request, status, to_tag="t1", extra=extra) == response.serialize()
    assert response_wire(request, status, "Custom") == make_response(
        request, status, "Custom").serialize()


def test_make_response_copies_an_unterminated_to_as_it_came() -> None:
    """Answering never fails: the 400 a request with an unreadable To deserves must still
    be sent (RFC 3261 §8.2.6.2 copies To; a tag cannot be added to what does not parse)."""
    request = parse_message(request_bytes())
    assert isinstance(request, SipRequest)
    request.set("to", "<sip:b@xmpp.example")
    assert make_response(request, 400, to_tag="new").get("to") == "<sip:b@xmpp.example"


# ---------------------------------------------------------------------- framing


def test_deframer() -> None:
    first = parse_message(request_bytes(length=b"2"), stream=True).serialize()
    second = parse_message(request_bytes(length=b"2", body=b"yo"), stream=True).serialize()
    deframer = StreamDeframer()
    assert deframer.feed(b"\r\n\r\n" + first + b"\r\n" + second) == [first, second]
    pieces = [deframer.feed(first[i:i + 1]) for i in range(len(first))]
    assert [p for p in pieces if p] == [[first]]
    for data, error in (
            (b"MESSAGE sip:x SIP/2.0\r\n" + b"X: y\r\n" * 4000, "header section too large"),
            (request_bytes(), "Content-Length is required"),
            (request_bytes(length=b"%d" % (MAX_BODY_BYTES + 1), body=b""), "body too large"),
            (request_bytes(length="\u00b2".encode()), "bad Content-Length")):
        deframer = StreamDeframer()
        assert deframer.feed(first + data) == [first]  # what came before is still cut
        assert deframer.error is not None and error in deframer.error.reason
        assert deframer.feed(first) == []  # framing lost: nothing more
    # the request in the head, to answer before closing; not when the head is unreadable
    deframer = StreamDeframer()
    deframer.feed(request_bytes(length="\u00b2".encode()))
    assert deframer.error is not None and deframer.error.request is not None
    assert deframer.error.request.method == "MESSAGE"
    assert deframer.error.phrase == "Bad Content-Length"


# ---------------------------------------------------------------------- transactions


def new_request(branch: str = "z9hG4bKt1", method: str = "MESSAGE") -> SipRequest:
    request = parse_message(request_bytes(method=method.encode()).replace(
        b"branch=z9hG4bK1", b"branch=" + branch.encode()))
    assert isinstance(request, SipRequest)
    return request


def response_to(request: SipRequest, status: int) -> SipResponse:
    return make_response(request, status, to_tag="t")


def test_udp_client_retransmits_on_schedule_then_times_out() -> None:
    layer = TransactionLayer(reliable=False)
    request = new_request()
    layer.send_request(request, "flow", 0.0, context="ctx")
    assert len(layer.outbox) == 1
    layer.outbox.clear()
    sends = []
    now = 0.0
    while now < TIMER_F + 1:
        now = round(now + 0.05, 2)
        events = layer.handle_timers(now)
        if layer.outbox:
            sends.append(now)
            layer.outbox.clear()
        if events:
            assert events == [TransactionTimedOut(request, "ctx")]
            break
    # T1, doubling, capped at T2 (RFC 3261 §17.1.2.2).
    assert sends[:5] == [T1, T1 + 2 * T1, T1 + 2 * T1 + 4 * T1, 7.5, 7.5 + T2]
    assert all(b - a == pytest.approx(T2) for a, b in itertools.pairwise(sends[3:]))
    assert now == pytest.approx(TIMER_F)
    assert not layer.clients


def test_provisional_switches_to_t2_and_final_ends() -> None:
    layer = TransactionLayer(reliable=False)
    request = new_request()
    layer.send_request(request, "flow", 0.0, context=7)
    layer.outbox.clear()
    assert layer.receive(response_to(request, 100), "flow", 0.2) == []
    layer.handle_timers(0.5)  # first retransmission, then every T2
    layer.outbox.clear()
    assert layer.handle_timers(4.4) == [] and not layer.outbox
    layer.handle_timers(4.5)
    assert len(layer.outbox) == 1
    final = layer.receive(response_to(request, 202), "flow", 5.0)
    assert final == [ResponseReceived(final[0].response, request, 7, 5.0)]
    layer.outbox.clear()
    assert layer.handle_timers(40.0) == [] and not layer.outbox
    assert layer.receive(response_to(request, 202), "flow", 5.1) == [
        StrayResponse(response_to(request, 202))]


def test_response_counts_only_from_the_flow_the_request_went_on() -> None:
    """A response with the right branch from elsewhere neither completes nor
    stops the transaction; the one from the request's flow does."""
    layer = TransactionLayer(reliable=False)
    request = new_request()
    proxy, attacker = ("udp", ("10.0.0.5", 5060)), ("udp", ("10.0.0.66", 5060))
    layer.send_request(request, proxy, 0.0, context=1)
    forged = response_to(request, 200)
    assert layer.receive(forged, attacker, 0.1) == [StrayResponse(forged, attacker, True)]
    assert layer.receive(forged, ("udp", ("10.0.0.5", 5061)), 0.1)[0].misrouted
    layer.outbox.clear()
    layer.handle_timers(0.5)
    assert layer.outbox == [(proxy, request.serialize())]  # still retransmitting
    real = response_to(request, 480)
    assert layer.receive(real, proxy, 0.6) == [ResponseReceived(real, request, 1, 0.6)]


def test_tcp_client_never_retransmits_but_times_out() -> None:
    layer = TransactionLayer(reliable=True)
    request = new_request()
    layer.send_request(request, "conn", 0.0)
    layer.outbox.clear()
    assert layer.handle_timers(31.9) == [] and not layer.outbox
    assert layer.handle_timers(32.0) == [TransactionTimedOut(request, None)]


def test_client_edge_cases() -> None:
    layer = TransactionLayer(reliable=False)
    request = new_request()
    layer.send_request(request, "flow", 0.0)
    with pytest.raises(ValueError, match="exists"):
        layer.send_request(request, "flow", 0.0)
    other = response_to(new_request("z9hG4bKother"), 200)
    assert layer.receive(other, "flow", 0.1) == [StrayResponse(other)]
    second = new_request("z9hG4bKt2")
    layer.send_request(second, "other-flow", 0.0)
    assert layer.fail_flow("other-flow") == [TransactionTimedOut(second, None)]
    assert list(layer.clients) == [("z9hG4bKt1", "MESSAGE")]


def test_udp_server_absorbs_retransmissions_and_keeps_answer_for_timer_j() -> None:
    layer = TransactionLayer(reliable=False)
    request = new_request()
    [event] = layer.receive(request, ("10.0.0.1", 5060), 0.0)
    assert isinstance(event, RequestReceived) and event.flow == ("10.0.0.1", 5060)
    assert layer.receive(request, ("10.0.0.1", 5060), 0.1) == []  # before any answer
    assert not layer.outbox
    assert layer.respond(event.transaction, response_to(request, 202), 0.2)
    answer = layer.outbox.pop()
    assert layer.receive(request, ("10.0.0.1", 5060), 1.0) == []
    assert layer.outbox.pop() == answer  # same bytes again (§17.2.2)
    assert not layer.respond(event.transaction, response_to(request, 500), 1.1)
    layer.handle_timers(0.2 + TIMER_F)
    assert isinstance(layer.receive(request, ("10.0.0.1", 5060), 40.0)[0], RequestReceived)


def test_tcp_server_forgets_after_final_and_ack_is_absorbed() -> None:
    layer = TransactionLayer(reliable=True)
    request = new_request()
    [event] = layer.receive(request, "conn", 0.0)
    assert layer.respond(event.transaction, response_to(request, 100), 0.0)
    assert layer.respond(event.transaction, response_to(request, 200), 0.0)
    assert not layer.servers
    assert not layer.respond(("nope", "x", "MESSAGE"), response_to(request, 200), 0.0)
    invite = new_request("z9hG4bKinv", "INVITE")
    [invite_event] = layer.receive(invite, "conn", 0.0)
    layer.respond(invite_event.transaction, response_to(invite, 405), 0.0)
    ack = parse_message(request_bytes(method=b"ACK").replace(b"branch=z9hG4bK1",
                                                             b"branch=z9hG4bKinv"))
    assert layer.receive(ack, "conn", 0.1) == []


@pytest.mark.parametrize("via", [
    "SIP/2.0/UDP h.example:5060;branch=z9hG4bKa;rport",
    "SIP/2.0/UDP h.example:5060;rport;branch=z9hG4bKa",
    "SIP/2.0/UDP h.example:5060;branch=z9hG4bKa;Branch=z9hG4bKb",
    "SIP/2.0/UDP h.example:5060;branch=\"z9hG4bKa\"",
    "SIP/2.0/UDP h.example:5060 ; branch=z9hG4bKa",
    "SIP/2.0/UDP h.example;branch=z9hG4bKa",
    "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKa",
    "SIP/2.0/UDP h.example:5060;branch=z9hG4bKa, SIP/2.0/UDP other:5060;branch=z9hG4bKb",
])
def test_the_transaction_key_read_by_the_shortcut_is_the_parsers(via: str) -> None:
    """A server transaction is keyed by the top Via's branch and sent-by, read by one
    regular expression when the Via is spelled the usual way: always what the full Via
    parser reads (a second branch, quotes, spaces, no port, IPv6: the parser's answer)."""
    data = request_bytes().replace(b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1",
                                   b"Via: " + via.encode())
    message = parse_message(data)
    assert isinstance(message, SipRequest)
    assert message.via_key == (message.top_via.branch, message.top_via.sent_by)
