"""The codecs of what SIP chat clients send: CPIM (RFC 3862), IMDN (RFC 5438), isComposing
(RFC 3994), multipart (RFC 2046), HTML → XHTML-IM (XEP-0071), derived message ids.

Each parser is total (a value or its own error, whatever the bytes), each builder's output
reads back to what was built (hypothesis round trips), and what goes to XMPP is XML 1.0.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from xml.etree.ElementTree import tostring
from xml.sax.saxutils import escape

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.sip.composing import ComposingGate
from gateway.sip.cpim import CpimError, build_cpim, format_datetime, parse_cpim, parse_datetime
from gateway.sip.dialogs import header_int
from gateway.sip.imdn import Imdn, ImdnError, build_imdn, parse_imdn
from gateway.sip.iscomposing import IsComposingError, build_is_composing, parse_is_composing
from gateway.sip.message_ids import (
    sip_id_for_stanza,
    sip_origin,
    stanza_id_for_sip,
    stanza_id_from_sip_id,
)
from gateway.sip.messaging import BadBody, Unsupported, decode_text
from gateway.sip.mime import MediaType, MimeError, clean_header_value, parse_media_type
from gateway.sip.multipart import BodyPart, MultipartError, build_multipart, parse_multipart
from gateway.sip.xhtml import html_to_message
from gateway.sip.xmldoc import xml_text
from gateway.xmpp.xml import serialize

# What Linphone 5.1 writes with cpim_in_basic_chat_rooms_enabled (chat-message-modifier)
LINPHONE_CPIM = (
    b"From: <sip:sipfed@gw.example>\r\nTo: <sip:fed@a.example>\r\n"
    b"DateTime: 2026-12-04T18:00:00Z\r\nNS: imdn <urn:ietf:params:imdn>\r\n"
    b"imdn.Message-ID: Qm9yeXAyZ\r\n"
    b"imdn.Disposition-Notification: positive-delivery, display\r\n\r\n"
    b"Content-Type: text/plain;charset=UTF-8\r\nContent-Length: 12\r\n\r\nhello there!")
LINPHONE_IMDN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<imdn xmlns="urn:ietf:params:xml:ns:imdn" '
    b'xmlns:linphoneimdn="http://www.linphone.org/xsds/imdn.xsd"><message-id>x1.abc</message-id>'
    b"<datetime>2026-12-04T18:00:01Z</datetime><delivery-notification><status><delivered/>"
    b"</status></delivery-notification></imdn>")
text = st.text(max_size=200)
uris = st.from_regex(r"sip:[a-z0-9._%-]{1,20}@[a-z0-9.-]{1,20}(;gr=[a-z0-9%]{1,10})?",
                     fullmatch=True)


def test_linphone_cpim_message_reads_as_its_text_and_imdn_request() -> None:
    message = parse_cpim(LINPHONE_CPIM)
    assert (message.sender, message.recipient) == ("sip:sipfed@gw.example", "sip:fed@a.example")
    assert message.content_type.type == "text/plain" and message.body == b"hello there!"
    assert message.imdn_message_id == "Qm9yeXAyZ"
    assert message.disposition_notification == {"positive-delivery", "display"}
    assert message.datetime == datetime(2026, 12, 4, 18, 0, tzinfo=UTC)


def test_cpim_namespace_prefix_is_the_senders_choice() -> None:
    body = (b"From: <sip:a@x>\r\nTo: <sip:b@y>\r\nNS: MyFeatures <urn:ietf:params:imdn>\r\n"
            b"MyFeatures.Message-ID: 42\r\n\r\nContent-Type: text/plain\r\n\r\nhi")
    assert parse_cpim(body).imdn_message_id == "42"


@pytest.mark.parametrize("body", [
    b"", b"hello", b"From: <sip:a@x>\r\n\r\nContent-Type: text/plain\r\n\r\nno To",
    b"From: <sip:a@x>\r\nTo: <sip:b@y>\r\n\r\nno content type", b"From: nobrackets\r\nTo: <x>\r\n"
    b"\r\nContent-Type: text/plain\r\n\r\n", b"From: <a>\r\nTo: <b>\r\nNS: bad\r\n\r\n"
    b"Content-Type: text/plain\r\n\r\n", b"\xff\xfe: x\r\n\r\n",
    b"From: <a>\r\nTo: <b>\r\n\r\nContent-Type: text/plain\r\nContent-Length: 99\r\n\r\nshort"])
def test_cpim_that_is_not_refused_with_its_own_error(body: bytes) -> None:
    with pytest.raises(CpimError):
        parse_cpim(body)


@given(st.binary(max_size=400))
def test_cpim_parser_is_total(data: bytes) -> None:
    with contextlib.suppress(CpimError):
        parse_cpim(data)


@given(uris, uris, st.binary(max_size=300), text, st.sampled_from(
    [(), ("positive-delivery",), ("display",), ("positive-delivery", "display")]))
def test_cpim_round_trip(sender: str, recipient: str, body: bytes, message_id: str,
                         disposition: tuple[str, ...]) -> None:
    moment = datetime(2026, 12, 4, 18, 0, 5, tzinfo=UTC)
    built = build_cpim(sender, recipient, "text/plain;charset=UTF-8", body, moment=moment,
                       message_id=message_id, disposition=disposition)
    read = parse_cpim(built)
    assert (read.sender, read.recipient, read.body) == (sender, recipient, body)
    assert read.datetime == moment and read.content_type.charset == "utf-8"
    assert read.disposition_notification == frozenset(disposition)
    if clean_header_value(message_id):
        assert read.imdn_message_id == clean_header_value(message_id)


def test_cpim_datetime_forms() -> None:
    assert parse_datetime("2026-12-04T18:00:00.123456789+01:00") == datetime(
        2026, 12, 4, 17, 0, 0, 123456, tzinfo=UTC)
    assert parse_datetime("2026-13-04T18:00:00Z") is None
    assert parse_datetime("yesterday") is None


def test_linphone_imdn_reads() -> None:
    notice = parse_imdn(LINPHONE_IMDN)
    assert (notice.message_id, notice.kind, notice.status, notice.positive) == (
        "x1.abc", "delivery", "delivered", True)


@pytest.mark.parametrize("body", [
    b"", b"<imdn/>", b'<imdn xmlns="urn:ietf:params:xml:ns:imdn"/>',
    b'<imdn xmlns="urn:ietf:params:xml:ns:imdn"><message-id>1</message-id></imdn>',
    b'<imdn xmlns="urn:ietf:params:xml:ns:imdn"><message-id>1</message-id>'
    b"<display-notification><status><delivered/></status></display-notification></imdn>",
    b'<!DOCTYPE x [<!ENTITY a "b">]><imdn xmlns="urn:ietf:params:xml:ns:imdn"/>',
    b"<a>" * 100 + b"</a>" * 100])
def test_imdn_that_is_not_refused_with_its_own_error(body: bytes) -> None:
    with pytest.raises(ImdnError):
        parse_imdn(body)


@given(st.binary(max_size=300))
def test_imdn_parser_is_total(data: bytes) -> None:
    with contextlib.suppress(ImdnError):
        parse_imdn(data)


@given(st.text(min_size=1, max_size=80).filter(lambda t: t.strip()), st.sampled_from(
    [("delivery", "delivered"), ("delivery", "failed"), ("display", "displayed"),
     ("processing", "stored")]), uris)
def test_imdn_round_trip_whatever_the_id(message_id: str, kind: tuple[str, str],
                                        recipient: str) -> None:
    built = build_imdn(Imdn(message_id, kind[0], kind[1], "2026-12-04T18:00:00Z", recipient))
    read = parse_imdn(built)
    assert (read.kind, read.status, read.recipient_uri) == (kind[0], kind[1], recipient)
    assert read.message_id == xml_text(message_id).strip()


def test_is_composing_forms() -> None:
    active = parse_is_composing(build_is_composing(True, refresh=90))
    assert (active.active, active.refresh, active.timeout) == (True, 90, 90)
    idle = parse_is_composing(build_is_composing(False, last_active="2026-12-04T18:00:00Z"))
    assert (idle.active, idle.last_active, idle.timeout) == (False, "2026-12-04T18:00:00Z", 120)
    assert parse_is_composing(build_is_composing(True, refresh=5)).refresh == 60  # §4 floor
    with pytest.raises(IsComposingError):
        parse_is_composing(b'<isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing">'
                           b"<state>typing</state></isComposing>")


@given(st.binary(max_size=300))
def test_is_composing_parser_is_total(data: bytes) -> None:
    with contextlib.suppress(IsComposingError):
        parse_is_composing(data)


@given(st.lists(st.tuples(st.sampled_from(["", "en", "de", "fr-CA"]),
                          st.binary(max_size=100)), min_size=1, max_size=4))
def test_multipart_round_trip(parts: list[tuple[str, bytes]]) -> None:
    built = [BodyPart(MediaType("text/plain", {"charset": "UTF-8"}), body,
                      [("Content-Language", lang)] if lang else []) for lang, body in parts]
    content_type, body = build_multipart("alternative", built)
    read = parse_multipart(parse_media_type(content_type), body)
    assert [(part.language, part.body) for part in read] == parts


@given(st.text(max_size=60), st.binary(max_size=300))
def test_multipart_parser_is_total(boundary: str, data: bytes) -> None:
    with contextlib.suppress(MultipartError):
        parse_multipart(MediaType("multipart/alternative", {"boundary": boundary}), data)


@given(st.text(max_size=80))
def test_media_type_parser_is_total(value: str) -> None:
    try:
        parsed = parse_media_type(value)
    except MimeError:
        return
    assert parse_media_type(str(parsed)) == parsed


def test_media_type_parameters() -> None:
    parsed = parse_media_type('Multipart/Alternative; boundary="a;b\\"c"; CharSet=UTF-8')
    assert parsed.type == "multipart/alternative" and parsed.charset == "utf-8"
    assert parsed.params["boundary"] == 'a;b"c'


def test_html_is_sanitised_to_xhtml_im() -> None:
    plain, xhtml = html_to_message(
        '<html><head><title>t</title><script>alert(1)</script></head><body>'
        '<p style="color:red" onclick="x()">Hello <b>bold</b> <a href="javascript:evil()">'
        'bad</a> <a href="https://example.org/">good</a><img src="http://tracker/x.png">'
        "<br>next line</p></body></html>", "en")
    assert plain == "Hello bold bad good\nnext line"
    assert xhtml is not None
    written = serialize(xhtml).decode()
    for banned in ("script", "alert", "onclick", "style", "javascript", "img", "tracker"):
        assert banned not in written, written
    assert '<strong>bold</strong>' in written and 'href="https://example.org/"' in written
    assert plain_only("just <span>text</span>") == "just text"


def plain_only(html: str) -> str:
    plain, xhtml = html_to_message(html)
    assert xhtml is None  # nothing but text: no XHTML-IM
    return plain


@settings(max_examples=200)
@given(st.text(max_size=300))
def test_html_conversion_is_total_and_xml_safe(html: str) -> None:
    plain, xhtml = html_to_message(html)
    assert xml_text(plain) == plain
    if xhtml is not None:
        tostring(xhtml)  # well-formed, serialisable


def test_xml_text_replaces_what_xml_cannot_carry() -> None:
    assert xml_text("a\x00b\x1bc\ud800d\ufffe\tok\n") == "a\ufffdb\ufffdc\ufffdd\ufffd\tok\n"


@given(st.text(min_size=1, max_size=80), st.text(max_size=40))
def test_stanza_id_round_trips_through_a_sip_id(stanza_id: str, resource: str) -> None:
    sip_id = sip_id_for_stanza(stanza_id, resource)
    assert sip_id != sip_id_for_stanza(stanza_id, resource)  # unique, even for one id
    if len(stanza_id.encode()) + len(resource.encode()) <= 120:
        assert stanza_id_from_sip_id(sip_id) == (stanza_id, resource)
        assert stanza_id_from_sip_id(f"{sip_id}@127.0.0.4") == (stanza_id, resource)


@given(st.text(min_size=1, max_size=120), st.booleans(), st.integers(0, 253_402_300_799))
def test_sip_id_round_trips_through_a_stanza_id(message_id: str, cpim: bool,
                                               sent: int) -> None:
    stanza_id = stanza_id_for_sip(message_id, cpim=cpim, sent=sent)
    origin = sip_origin(stanza_id)
    if len(message_id.encode()) <= 120:
        assert origin is not None
        assert (origin.message_id, origin.cpim, origin.sent) == (message_id, cpim, sent)


@given(st.text(max_size=100))
def test_foreign_ids_are_not_ours(text_id: str) -> None:
    stanza_id_from_sip_id(text_id)
    sip_origin(text_id)  # never raises


def test_typing_gate_sends_changes_once_and_rate_limits() -> None:
    gate = ComposingGate()
    pair = ("bob@xmpp.example", "alice@sip.example")
    assert gate.offer(pair, True, 100.0)  # composing
    assert not gate.offer(pair, True, 100.5)  # same state: nothing new
    assert not gate.offer(pair, False, 101.0)  # paused within the interval: waits
    assert gate.due(101.5) == []
    assert gate.due(102.0) == [(pair, False)]  # ... and goes out when it is over
    assert not gate.offer(pair, False, 110.0)  # idle after idle: nothing
    assert not gate.offer(("x@y", "z@w"), False, 110.0)  # idle with nothing before
    gate.message_sent(pair)
    assert pair not in gate.pairs


def test_typing_gate_bounds_a_sender_over_all_recipients() -> None:
    gate = ComposingGate(sender_budget=5)
    sent = sum(gate.offer(("flood@x", f"user{n}@sip.example"), True, 50.0) for n in range(50))
    assert sent == 5 and gate.suppressed == 45


def test_typing_toward_xmpp_times_out_after_the_refresh() -> None:
    gate = ComposingGate(expire=True)
    pair = ("alice@sip.example", "bob@xmpp.example")
    assert gate.offer(pair, True, 0.0, refresh=60)
    assert gate.due(59.0) == []
    assert gate.due(60.0) == [(pair, False)]  # RFC 3994 §4: active ends without refresh
    assert pair not in gate.pairs


# Totality over structured input: random bytes almost never make a header block that parses
# far enough to reach a number or a date, so these generate the structure and vary the
# values (the non-ASCII digits "²" and "٣" pass str.isdigit; dates near year 1 or 9999
# overflow once moved to UTC; charsets that name bytes-to-bytes codecs).
odd_values = st.one_of(
    st.text(max_size=24),
    st.sampled_from(["²", "٣", " 12 ", "1²", "99999999999999999999", "-1", "0x10", "",
                     "0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59",
                     "2026-12-04T18:00:00Z"]))


@given(odd_values, odd_values, odd_values)
def test_cpim_numbers_and_dates_are_read_or_refused(length: str, date: str,
                                                    language: str) -> None:
    body = (f"From: <sip:a@x>\r\nTo: <sip:b@y>\r\nDateTime: {clean_header_value(date)}\r\n"
            f"\r\nContent-Type: text/plain\r\nContent-Length: {clean_header_value(length)}\r\n"
            f"Content-Language: {clean_header_value(language)}\r\n\r\nhello").encode()
    try:
        message = parse_cpim(body)
    except CpimError:
        return
    moment = message.datetime
    if moment is not None:  # usable as the gateway uses it: a timestamp, a stamp
        int(moment.timestamp())
        assert parse_datetime(format_datetime(moment)) == moment.replace(microsecond=0)


@given(odd_values)
def test_is_composing_refresh_is_read_or_ignored(refresh: str) -> None:
    body = ('<isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing"><state>active</state>'
            f"<refresh>{escape(refresh)}</refresh></isComposing>").encode()
    try:
        indication = parse_is_composing(body)
    except IsComposingError:
        return
    assert 0 <= indication.refresh < 10**7


@given(st.one_of(st.none(), odd_values))
def test_expires_is_a_number_or_the_default(value: str | None) -> None:
    assert 0 <= header_int(value, 600) < 10**10


@given(st.sampled_from(["rot13", "base64", "hex", "zlib", "bz2", "uu", "quopri", "utf-7",
                        "utf-16", "idna", "punycode", "latin-1", "x-unknown", "mbcs"]),
       st.binary(max_size=40))
def test_text_in_any_charset_is_read_or_refused(charset: str, body: bytes) -> None:
    with contextlib.suppress(BadBody, Unsupported):
        assert isinstance(decode_text(body, parse_media_type(f"text/plain;charset={charset}")),
                          str)


@given(st.from_regex(r"[A-Za-z0-9_-]{2,12}", fullmatch=True),
       st.one_of(st.integers(0, 2**160).map(lambda n: f"{n:x}"),
                 st.text(alphabet="0123456789abcdefABCDEF-+_ ", max_size=40)))
@example("QQ", "f" * 20).via("an XMPP client answering with an altered id")
def test_a_receipt_names_a_time_the_gateway_can_write(middle: str, time_text: str) -> None:
    """A receipt from XMPP names its message by an id the XMPP side could have altered:
    what :func:`sip_origin` accepts must be a time the IMDN can carry."""
    origin = sip_origin(f"sb.{middle}.{time_text}")
    if origin is not None:
        format_datetime(datetime.fromtimestamp(origin.sent, UTC))


@given(st.sampled_from(["base64", "rot13", "x-unknown", "utf-7", "utf-32", "idna",
                        "punycode", "latin-1", "UTF-8"]), st.text(max_size=20))
def test_imdn_and_is_composing_with_any_declared_encoding(encoding: str, text: str) -> None:
    declaration = f'<?xml version="1.0" encoding="{encoding}"?>'
    imdn = (declaration + '<imdn xmlns="urn:ietf:params:xml:ns:imdn"><message-id>'
            f"{escape(text)}x</message-id><delivery-notification><status><delivered/>"
            "</status></delivery-notification></imdn>").encode()
    with contextlib.suppress(ImdnError):
        parse_imdn(imdn)
    typing = (declaration + '<isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing">'
              f"<state>active</state><contenttype>{escape(text)}</contenttype>"
              "</isComposing>").encode()
    with contextlib.suppress(IsComposingError):
        parse_is_composing(typing)


@pytest.mark.parametrize("value", ['<sip:a@x>', 'Alice <sip:a@x>', '"Alice" <sip:a@x>',
                                   '"Al<ice>" <sip:a@x>', '"Al\\"ice" <sip:a@x>',
                                   'Alice Smith <sip:a@x>', '""<sip:a@x>'])
def test_cpim_formal_names_are_any_rfc_3862_string(value: str) -> None:
    """RFC 3862 §3.2/§4.1: ``[Formal-name] "<" URI ">"``, the formal name tokens or a
    quoted string, which may hold ``<`` or an escaped quote."""
    body = (f"From: {value}\r\nTo: <sip:b@y>\r\n\r\nContent-Type: text/plain\r\n\r\nhi"
            ).encode()
    assert parse_cpim(body).sender == "sip:a@x"


@pytest.mark.parametrize("value", ['sip:a@x', '<>', '"unterminated <sip:a@x>',
                                   '<sip:a@x> trailing', 'a"b" <sip:a@x>'])
def test_cpim_addresses_that_are_not(value: str) -> None:
    with pytest.raises(CpimError):
        parse_cpim(f"From: {value}\r\nTo: <sip:b@y>\r\n\r\nContent-Type: text/plain\r\n\r\n"
                   "hi".encode())
