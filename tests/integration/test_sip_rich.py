"""What chat clients send beside text, through the SIP backend over real sockets: typing
(XEP-0085 ↔ RFC 3994), receipts and markers (XEP-0184/0333 ↔ RFC 5438), CPIM (RFC 3862),
HTML (XEP-0071), languages and subject (RFC 7572), sizes and TCP (RFC 3261 §18.1.1),
addresses (RFC 7247 §5), and what cannot cross (415, feature-not-implemented, counted).

The SIP user agent stands where the proxy is (see test_sip_backend.py); what the phone
sends is written out literally by the UA, not with the gateway's builders.
"""

from __future__ import annotations

import asyncio
import socket
import time
import zlib
from collections.abc import AsyncIterator
from xml.etree.ElementTree import Element, SubElement

import pytest

from gateway.config.model import (
    DialbackSettings,
    GatewayConfig,
    ListenAddress,
    PartnerPolicy,
    PartnerType,
    SipSettings,
    StoreSettings,
)
from gateway.daemon import Gateway
from gateway.dns.resolver import DnsPythonResolver
from gateway.policy.negotiation import Support
from gateway.sip.backend import SipBackend
from gateway.sip.cpim import parse_cpim
from gateway.sip.development import message
from gateway.sip.development import presence as development_presence
from gateway.sip.imdn import parse_imdn
from gateway.sip.iscomposing import parse_is_composing
from gateway.sip.mime import parse_media_type
from gateway.sip.multipart import parse_multipart
from testbed.dnsmasq import free_port
from testbed.sip_ua import SipUserAgent
from tests.integration import test_sip_backend
from tests.integration.test_sip_backend import SIP_DOMAIN, Recorder, condition

CHATSTATES = "http://jabber.org/protocol/chatstates"
RECEIPTS = "urn:xmpp:receipts"
MARKERS = "urn:xmpp:chat-markers:0"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
BOB = "sip:bob@xmpp.example"
Setup = tuple[SipBackend, SipUserAgent, Recorder]
# A whole gateway (router, contact rules, store) with sip.backend: sip (test_sip_backend)
sip_gateway = test_sip_backend.gateway


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    """The SIP backend with its sink recording, the UA where the proxy would be."""
    ua = await SipUserAgent("alice", "sip.example", ("127.0.0.1", 9)).start()
    sip = SipBackend(["sip.example"], proxy=("127.0.0.1", ua.port), local=("127.0.0.1", 0))
    recorder = Recorder()
    recorder.backend = sip
    await sip.start(recorder)
    ua.proxy = sip.transport.local
    try:
        yield sip, ua, recorder
    finally:
        await sip.stop(grace=0.5)
        await ua.close()


def xmpp_message(sender: str, recipient: str, body: str | None = None, *,
                 stanza_id: str = "m1", extras: tuple[str, ...] = (),
                 bodies: tuple[tuple[str, str], ...] = ()) -> Element:
    stanza = (message(sender, recipient, body) if body is not None else Element(
        "{jabber:server}message", {"from": sender, "to": recipient, "type": "chat"}))
    stanza.set("id", stanza_id)
    for lang, text in bodies:
        SubElement(stanza, "{jabber:server}body", {XML_LANG: lang}).text = text
    for extra in extras:
        SubElement(stanza, extra, {"id": "x"} if extra.endswith(("received", "displayed"))
                   else {})
    return stanza


def child(stanza: Element, namespace: str) -> Element | None:
    return next((c for c in stanza if c.tag.startswith(f"{{{namespace}}}")), None)


async def test_cpim_from_a_phone_arrives_as_clean_text_asking_for_receipts(setup: Setup
                                                                          ) -> None:
    _, ua, recorder = setup
    response = await ua.send_cpim(BOB, "hello in CPIM", message_id="Mx1",
                                  disposition="positive-delivery, display")
    assert response.status == 202
    stanza = await recorder.next()
    assert stanza.findtext("{jabber:server}body") == "hello in CPIM"  # no CPIM headers
    assert child(stanza, RECEIPTS) is not None and child(stanza, MARKERS) is not None
    # written long ago (the DateTime is 2026-12-04T18:00:00Z): XEP-0203 delay
    delay = stanza.find("{urn:xmpp:delay}delay")
    assert delay is not None and delay.get("stamp") == "2026-12-04T18:00:00Z"


async def test_receipt_and_displayed_marker_become_imdn_in_the_phones_form(
        setup: Setup) -> None:
    sip, ua, recorder = setup
    await ua.send_cpim(BOB, "read me", message_id="Mx2", disposition="positive-delivery")
    stanza = await recorder.next()
    for extra in (f"{{{RECEIPTS}}}received", f"{{{MARKERS}}}displayed"):
        answer = xmpp_message("bob@xmpp.example/phone", "alice@sip.example",
                              stanza_id="r1", extras=(extra,))
        answer[0].set("id", stanza.get("id", ""))
        await sip.deliver(answer)
        request = await asyncio.wait_for(ua.messages.get(), 5)
        assert request.content_type == "message/cpim"  # the phone spoke CPIM: so do we
        notice = parse_imdn(parse_cpim(request.body).body)
        assert notice.message_id == "Mx2"
        assert notice.status == ("delivered" if extra.endswith("received") else "displayed")


async def test_basic_phone_imdn_names_the_call_id(setup: Setup) -> None:
    """Linphone's basic chat: a plain MESSAGE from the gateway, an IMDN without CPIM whose
    message id is that MESSAGE's Call-ID; and the standard CPIM form with the
    imdn.Message-ID. Both find the XMPP stanza id."""
    sip, ua, recorder = setup
    await sip.deliver(xmpp_message("bob@xmpp.example/phone", "alice@sip.example", "hi",
                                   stanza_id="plain-1"))
    plain = await asyncio.wait_for(ua.messages.get(), 5)
    assert plain.content_type == "text/plain"
    # sent where the message came from, as Linphone does: the GRUU of the sending resource
    assert (await ua.send_imdn(plain.from_.uri, plain.call_id)).status == 202
    delivered = await recorder.next()
    assert child(delivered, RECEIPTS).get("id") == "plain-1"
    assert delivered.get("to") == "bob@xmpp.example/phone"  # the resource that sent it

    await sip.deliver(xmpp_message("bob@xmpp.example/phone", "alice@sip.example", "hi",
                                   stanza_id="asked-1",
                                   extras=(f"{{{RECEIPTS}}}request", f"{{{MARKERS}}}markable")))
    asked = await asyncio.wait_for(ua.messages.get(), 5)
    wrapped = parse_cpim(asked.body)
    assert wrapped.disposition_notification == {"positive-delivery", "display"}
    # CPIM From = SIP From (Linphone checks), the bare address: one conversation per
    # contact on the phone, whichever resource wrote; the resource is in Contact
    assert wrapped.sender == "sip:bob@xmpp.example" == asked.from_.uri
    assert asked.get("contact") == "<sip:bob@xmpp.example;gr=phone>"
    await ua.send_imdn(wrapped.sender, wrapped.imdn_message_id or "", "displayed", cpim=True)
    displayed = await recorder.next()
    assert child(displayed, MARKERS).get("id") == "asked-1"


async def test_phone_without_cpim_gets_plain_text(setup: Setup) -> None:
    """A phone that refuses CPIM (Linphone without it answers 488) gets the message again
    as plain text, and plain text from then on."""
    sip, ua, _ = setup
    ua.refuse["message/cpim"] = 488
    receipt_asked = (f"{{{RECEIPTS}}}request",)
    await sip.deliver(xmpp_message("bob@xmpp.example/phone", "alice@sip.example", "one",
                                   extras=receipt_asked))
    first = await asyncio.wait_for(ua.messages.get(), 5)
    assert (first.content_type, first.body) == ("text/plain", b"one")
    await sip.deliver(xmpp_message("bob@xmpp.example/phone", "alice@sip.example", "two",
                                   extras=receipt_asked, stanza_id="m2"))
    second = await asyncio.wait_for(ua.messages.get(), 5)
    assert (second.content_type, second.body) == ("text/plain", b"two")


async def test_typing_both_ways_rate_limited(setup: Setup) -> None:
    sip, ua, recorder = setup
    assert (await ua.send_typing(BOB, True)).status == 202
    composing = await recorder.next()
    assert child(composing, CHATSTATES).tag.endswith("composing")
    assert (await ua.send_typing(BOB, True)).status == 200  # a refresh: nothing new
    sip.messages.typing_in.min_interval = 0.0
    await ua.send_typing(BOB, False)
    paused = await recorder.next()
    assert child(paused, CHATSTATES).tag.endswith("paused")

    # XMPP → SIP: a user flipping between composing and paused 20 times in a second
    for n in range(20):
        state = "composing" if n % 2 == 0 else "paused"
        await sip.deliver(xmpp_message("bob@xmpp.example/phone", "alice@sip.example",
                                       stanza_id=f"t{n}", extras=(f"{{{CHATSTATES}}}{state}",)))
    first = await asyncio.wait_for(ua.messages.get(), 5)
    assert parse_is_composing(first.body).active
    sip.messages.flush_typing(time.monotonic() + 2.5)  # the interval is over
    last = await asyncio.wait_for(ua.messages.get(), 5)
    assert not parse_is_composing(last.body).active  # the final state, paused
    await asyncio.sleep(0.2)
    assert ua.messages.empty()  # 2 requests for 20 changes


async def test_html_and_languages_from_sip(setup: Setup) -> None:
    _, ua, recorder = setup
    await ua.send_message(BOB, "<p>Hello <b>world</b><script>x()</script></p>", "text/html",
                          headers=(("Content-Language", "en"), ("Subject", "greetings")),
                          call_id="conversation-7@phone")
    html = await recorder.next()
    assert html.findtext("{jabber:server}thread") == "conversation-7@phone"  # RFC 7572 §5
    assert html.findtext("{jabber:server}body") == "Hello world"
    assert html.findtext("{jabber:server}subject") == "greetings"
    assert html.get(XML_LANG) == "en"
    xhtml = child(html, "http://jabber.org/protocol/xhtml-im")
    assert xhtml is not None and "script" not in str([e.tag for e in xhtml.iter()])

    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Language: en"
            f"\r\n\r\nGood morning\r\n--{boundary}\r\nContent-Type: text/plain;charset=UTF-8"
            f"\r\nContent-Language: de\r\n\r\nGuten Morgen\r\n--{boundary}--\r\n")
    await ua.send_message(BOB, body, f"multipart/alternative;boundary={boundary}")
    both = await recorder.next()
    bodies = {(b.get(XML_LANG) or both.get(XML_LANG), b.text)
              for b in both.findall("{jabber:server}body")}
    assert bodies == {("en", "Good morning"), ("de", "Guten Morgen")}


async def test_two_languages_and_subject_to_sip(setup: Setup) -> None:
    sip, ua, _ = setup
    stanza = xmpp_message("bob@xmpp.example/phone", "alice@sip.example", "Good morning",
                          bodies=(("de", "Guten Morgen"),))
    stanza.set(XML_LANG, "en")
    SubElement(stanza, "{jabber:server}subject").text = "hi\r\nInjected: header"
    await sip.deliver(stanza)
    request = await asyncio.wait_for(ua.messages.get(), 5)
    assert request.get("subject") == "hi Injected: header" and request.get("injected") is None
    parts = parse_multipart(parse_media_type(request.get("content-type")), request.body)
    assert [(p.language, p.body) for p in parts] == [("de", b"Guten Morgen"),
                                                    ("en", b"Good morning")]


async def test_sizes_refused_at_once_and_large_goes_over_tcp(setup: Setup) -> None:
    sip, ua, recorder = setup
    started = time.monotonic()
    await sip.deliver(xmpp_message("bob@xmpp.example/phone", "alice@sip.example", "x" * 100_000))
    refused = await recorder.next()
    assert condition(refused) == "policy-violation" and time.monotonic() - started < 1

    # 5 KB: over UDP's 1300 bytes; the "proxy" takes no TCP yet: refused at once, with why
    started = time.monotonic()
    await sip.deliver(xmpp_message("bob@xmpp.example/phone", "alice@sip.example", "y" * 5000))
    no_tcp = await recorder.next()
    assert condition(no_tcp) == "policy-violation" and time.monotonic() - started < 2
    assert "takes no TCP" in no_tcp.findtext(".//{urn:ietf:params:xml:ns:xmpp-stanzas}text")
    sip.messages._tcp_refused_until = 0.0  # it does now
    await ua.listen_tcp()
    await sip.deliver(xmpp_message("bob@xmpp.example/phone", "alice@sip.example", "z" * 5000))
    large = await asyncio.wait_for(ua.messages.get(), 5)
    assert large.body == b"z" * 5000 and large.top_via.transport == "TCP"

    too_big = await ua.send_message(BOB, "w" * 61_000)
    assert too_big.status == 413


async def test_what_cannot_cross_is_answered_and_counted(setup: Setup) -> None:
    sip, ua, recorder = setup
    response = await ua.send_message(BOB, "{}", "application/vnd.gsma.rcs-ft-http+xml")
    assert response.status == 415 and "message/imdn+xml" in response.get("accept")
    assert sip.messages.not_crossed["application/vnd.gsma.rcs-ft-http+xml"] == 1
    # an XMPP call proposal (XEP-0353): its sender waits for an answer
    await sip.deliver(xmpp_message("bob@xmpp.example/phone", "alice@sip.example",
                                   extras=("{urn:xmpp:jingle-message:0}propose",)))
    assert condition(await recorder.next()) == "feature-not-implemented"
    assert sip.messages.not_crossed["urn:xmpp:jingle-message:0 propose"] == 1
    assert ua.messages.empty()


async def test_deflated_bodies_are_inflated_within_the_limit(setup: Setup) -> None:
    """Linphone deflates its IMDNs (Content-Encoding: deflate); a small body that would
    inflate past the size limit is refused 413, an unknown encoding 415."""
    _, ua, recorder = setup
    text = "compressed hello " * 10
    assert (await ua.send_message(BOB, zlib.compress(text.encode()),
                                  headers=(("Content-Encoding", "deflate"),))).status == 202
    assert (await recorder.next()).findtext("{jabber:server}body") == text
    bomb = zlib.compress(b"a" * 10_000_000)  # 10 KB that inflate to 10 MB
    assert (await ua.send_message(BOB, bomb, headers=(("Content-Encoding", "deflate"),))
            ).status == 413
    odd = await ua.send_message(BOB, b"x", headers=(("Content-Encoding", "br"),))
    assert odd.status == 415 and "deflate" in (odd.get("accept-encoding") or "")


async def test_characters_xml_cannot_carry_are_refused_in_every_form(setup: Setup) -> None:
    """A character XML 1.0 forbids gets the 400 naming it, whichever way the text came:
    plain, in CPIM, in a multipart part; nothing reaches XMPP."""
    _, ua, recorder = setup
    assert (await ua.send_message(BOB, "bell\x07 here")).status == 400
    assert (await ua.send_cpim(BOB, "nul\x00 inside CPIM")).status == 400
    body = ("--b\r\nContent-Type: text/plain\r\nContent-Language: en\r\n\r\nesc\x1b\r\n"
            "--b--\r\n")
    assert (await ua.send_message(BOB, body, "multipart/alternative;boundary=b")).status == 400
    # HTML is what the user wrote too: the same 400, not a U+FFFD in its place
    html = await ua.send_message(BOB, "<p>bell\x07 <b>here</b></p>", "text/html")
    assert (html.status, html.reason) == (400, "U+0007 in body is not allowed in XML")
    body = ("--b\r\nContent-Type: text/html\r\n\r\n<b>nul\x00</b>\r\n--b--\r\n")
    assert (await ua.send_message(BOB, body, "multipart/alternative;boundary=b")).status == 400
    cpim = ua.cpim(BOB, "text/html", "<i>esc\x1b</i>")
    assert (await ua.send_message(BOB, cpim, "message/cpim")).status == 400
    # ... and in the headers that become XML text: Subject, CPIM Subject (a
    # Content-Language is a language tag or not carried: test_languages_cross_only_…)
    assert (await ua.send_message(BOB, "hi", headers=(("Subject", "a\x01b"),))).status == 400
    cpim = ua.cpim(BOB, "text/plain", "hi").replace(b"DateTime", b"Subject: s\x02\r\nDateTime")
    assert (await ua.send_message(BOB, cpim, "message/cpim")).status == 400
    assert recorder.queue.empty()


async def test_addresses_round_trip(setup: Setup) -> None:
    """RFC 7247 §5: a '?' in a JID localpart crosses escaped and comes back; a SIP user
    part keeps the case the SIP side wrote when XMPP answers in lower case."""
    sip, ua, recorder = setup
    await sip.deliver(xmpp_message("who?@xmpp.example/phone", "alice@sip.example", "hi"))
    request = await asyncio.wait_for(ua.messages.get(), 5)
    assert request.from_.uri == "sip:who%3F@xmpp.example"
    assert request.get("contact") == "<sip:who%3F@xmpp.example;gr=phone>"
    assert (await ua.send_message(request.from_.uri, "hello who")).status == 202
    assert (await recorder.next()).get("to") == "who?@xmpp.example"
    gruu = request.get("contact").strip("<>")  # RFC 7572 §5: a GRUU names the resource
    assert (await ua.send_message(gruu, "hello who/phone")).status == 202
    assert (await recorder.next()).get("to") == "who?@xmpp.example/phone"

    jsmith = await SipUserAgent("JSmith", "sip.example", ua.proxy).start()
    try:
        sip.transport.proxy = ("127.0.0.1", jsmith.port)
        sip.transport._proxy_flow = None
        sip.transport._udp_proxy = ("127.0.0.1", jsmith.port)
        await jsmith.send_message(BOB, "from JSmith")
        # XMPP case-maps the localpart (RFC 7622 §3.3): the gateway writes it lower-case
        assert (await recorder.next()).get("from") == "jsmith@sip.example/sip"
        await sip.deliver(xmpp_message("bob@xmpp.example/phone", "jsmith@sip.example", "re"))
        reply = await asyncio.wait_for(jsmith.messages.get(), 5)
        assert reply.uri == "sip:JSmith@sip.example"
    finally:
        await jsmith.close()


async def test_typing_obeys_the_contact_rules(sip_gateway) -> None:
    """Typing is a message stanza to the contact rules: toward a domain that is no
    partner it is refused as a message would be (403, RFC 7247 §8.1)."""
    _, ua = sip_gateway
    assert (await ua.send_typing("sip:bob@unlisted.example", True)).status == 403
    assert (await ua.send_message("sip:bob@unlisted.example", "hello?")).status == 403


async def test_odd_numbers_dates_and_charsets_are_answered_not_crashed_on(setup: Setup
                                                                          ) -> None:
    """Values a parser reads inside a body or a header — a CPIM Content-Length or an
    isComposing refresh of "²" (str.isdigit accepts it, int() does not), a charset naming
    a bytes-to-bytes codec, a CPIM DateTime that leaves the calendar once moved to UTC,
    an Expires of "²" — get a precise answer, never the transport's 500 for a bug."""
    sip, ua, recorder = setup
    cpim = (b"From: <sip:alice@sip.example>\r\nTo: <sip:bob@xmpp.example>\r\n\r\n"
            b"Content-Type: text/plain\r\nContent-Length: \xc2\xb2\r\n\r\nhi")
    assert (await ua.send_message(BOB, cpim, "message/cpim")).status == 400
    typing = ('<isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing"><state>active'
              "</state><refresh>²</refresh></isComposing>")
    assert (await ua.send_message(BOB, typing, "application/im-iscomposing+xml")
            ).status == 202  # the refresh is ignored (RFC 3994 §4 default), typing shown
    assert child(await recorder.next(), CHATSTATES) is not None
    for charset in ("rot13", "base64"):
        answer = await ua.send_message(BOB, "aGk=", f"text/plain;charset={charset}")
        assert answer.status == 415 and "text/plain" in answer.get("accept")
    part = "--b\r\nContent-Type: text/html;charset=hex\r\n\r\n6869\r\n--b--\r\n"
    assert (await ua.send_message(BOB, part, "multipart/alternative;boundary=b")
            ).status == 415
    for date in ("0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59"):
        answer = await ua.send_cpim(BOB, "dated oddly", date=date)
        assert answer.status == 202  # a DateTime that is no moment is no DateTime
        stanza = await recorder.next()
        assert stanza.find("{urn:xmpp:delay}delay") is None
    subscribe = ua._new("SUBSCRIBE", BOB, BOB)
    subscribe.add("event", "presence")
    subscribe.add("expires", "²")
    assert (await ua.request(subscribe)).status == 200  # as if absent: the default
    # XMPP → SIP: a receipt whose id names a time no calendar holds is no id of ours
    answer = xmpp_message("bob@xmpp.example/phone", "alice@sip.example", stanza_id="r1",
                          extras=(f"{{{RECEIPTS}}}received",))
    answer[0].set("id", "sb.QQ." + "f" * 20)
    await sip.deliver(answer)
    assert sip.messages.not_crossed["urn:xmpp:receipts received (unknown id)"] == 1
    assert sip.transport.unexpected_errors == 0


async def test_a_mixed_case_user_part_is_kept_for_presence_and_across_a_restart(
        tmp_path, pki, dns_for_pair) -> None:
    """SIP user ``JSmith`` (RFC 3261 §19.1.4 compares user parts case-sensitively) is
    ``jsmith@sip.example`` to XMPP. What the gateway writes toward that user after a
    restart — a reply, and the SUBSCRIBE of an XMPP contact who wants its presence —
    must say ``sip:JSmith@…``; and a phone that only subscribes (never writes a message)
    teaches the spelling as well as one that writes."""
    dns, _ports = dns_for_pair
    proxy = await SipUserAgent("JSmith", SIP_DOMAIN, ("127.0.0.1", 9)).start()
    sip_port = free_port()
    config = GatewayConfig(
        domains=(SIP_DOMAIN,), listen=(ListenAddress("127.0.0.1", free_port(
            kind=socket.SOCK_STREAM)),),
        partners=(PartnerPolicy("xmpp.example", PartnerType.FEDERATED, Support.OPTIONAL,
                                Support.OPTIONAL, True),),
        tls=pki.tls_settings(SIP_DOMAIN), dialback=DialbackSettings("secret"),
        store=StoreSettings(tmp_path / "store.sqlite3"), admin_socket=tmp_path / "admin.sock",
        sip=SipSettings(backend="sip", proxy_host="127.0.0.1", proxy_port=proxy.port,
                        local_host="127.0.0.1", local_port=sip_port))
    resolver = DnsPythonResolver(nameservers=(dns,), timeout=2.0)
    proxy.proxy = ("127.0.0.1", sip_port)
    try:
        first = Gateway(config, resolver=resolver)
        await first.start()
        try:
            # JSmith's phone watches a contact; it never writes a message
            assert (await proxy.subscribe("sip:carol@xmpp.example")).status == 200
        finally:
            await first.stop()
        second = Gateway(config, resolver=resolver)
        await second.start()
        try:
            await second.backend.deliver(development_presence(
                "bob@xmpp.example", "jsmith@sip.example", "subscribe"))
            subscribe = await asyncio.wait_for(proxy.requests.get(), 5)
            assert subscribe.method == "SUBSCRIBE" and subscribe.uri == "sip:JSmith@sip.example"
            assert subscribe.to.uri == "sip:JSmith@sip.example"
            await second.backend.deliver(xmpp_message("bob@xmpp.example/phone",
                                                      "jsmith@sip.example", "re"))
            reply = await asyncio.wait_for(proxy.messages.get(), 5)
            assert reply.uri == "sip:JSmith@sip.example"
        finally:
            await second.stop()
    finally:
        await proxy.close()


async def test_languages_cross_only_as_language_tags(setup: Setup) -> None:
    """RFC 7572 §8 maps xml:lang ↔ Content-Language; each side has a grammar for it (RFC
    3261 §20.13 language-tag, RFC 6120 §4.7.4 BCP 47). A value that is no language tag
    is not carried (the message is): ``en X-Injected: 1`` as a phone's Content-Language
    would make a strict phone refuse the MESSAGE, and ``<&"'>`` is no xml:lang."""
    sip, ua, recorder = setup
    for odd in ("<&\"'>", "e\x03n"):
        assert (await ua.send_message(BOB, "hi", headers=(("Content-Language", odd),))
                ).status == 202
        assert XML_LANG not in (await recorder.next()).attrib
    assert (await ua.send_message(BOB, "hi", headers=(("Content-Language", "en-GB, fr"),))
            ).status == 202
    assert (await recorder.next()).get(XML_LANG) == "en-GB"

    stanza = xmpp_message("bob@xmpp.example/phone", "alice@sip.example", "hi")
    stanza.set(XML_LANG, "en\r\nX-Injected: 1")
    await sip.deliver(stanza)
    plain = await asyncio.wait_for(ua.messages.get(), 5)
    assert plain.get("content-language") is None and plain.body == b"hi"
    stanza = xmpp_message("bob@xmpp.example/phone", "alice@sip.example", "Hello",
                          bodies=(("de", "Hallo"), ("fr\r\nX: y", "Salut")), stanza_id="m2")
    stanza.set(XML_LANG, "en")
    await sip.deliver(stanza)
    both = await asyncio.wait_for(ua.messages.get(), 5)
    parts = parse_multipart(parse_media_type(both.get("content-type")), both.body)
    assert sorted(p.language for p in parts) == ["", "de", "en"]


async def test_imdn_failures_processing_and_foreign_ids(setup: Setup) -> None:
    """RFC 5438 §7.2.1.1: a ``failed`` delivery notification says the message did not
    arrive (an XMPP error reply to it, RFC 6120 §8.3); ``processing`` notifications and
    IMDNs naming no message of ours are answered 202 and counted, not relayed."""
    sip, ua, recorder = setup
    await sip.deliver(xmpp_message("bob@xmpp.example/phone", "alice@sip.example", "hi",
                                   stanza_id="lost-1"))
    sent = await asyncio.wait_for(ua.messages.get(), 5)
    assert (await ua.send_imdn(sent.from_.uri, sent.call_id, "failed")).status == 202
    error = await recorder.next()
    assert (error.get("type"), error.get("id"), error.get("to")) == (
        "error", "lost-1", "bob@xmpp.example/phone")
    assert condition(error) == "service-unavailable"
    processing = ('<imdn xmlns="urn:ietf:params:xml:ns:imdn"><message-id>'
                  f"{sent.call_id}</message-id><processing-notification><status><processed/>"
                  "</status></processing-notification></imdn>")
    assert (await ua.send_message(BOB, processing, "message/imdn+xml")).status == 202
    assert (await ua.send_imdn(BOB, "not-ours-42")).status == 202
    assert sip.messages.not_crossed["message/imdn+xml"] == 2
    assert recorder.queue.empty()


async def test_typing_ends_with_a_message_and_needs_an_active_first(setup: Setup) -> None:
    """RFC 3994 §3.3: a message ends the sender's "active" state (toward XMPP it carries
    XEP-0085 <active/> after typing); toward SIP, XEP-0085 active/inactive/gone become
    ``idle`` only when ``active`` was sent before (nothing to end otherwise)."""
    sip, ua, recorder = setup
    assert (await ua.send_typing(BOB, True)).status == 202
    await recorder.next()  # composing
    assert (await ua.send_message(BOB, "done typing")).status == 202
    message = await recorder.next()
    assert child(message, CHATSTATES).tag.endswith("}active")
    assert (await ua.send_message(BOB, "again")).status == 202
    assert child(await recorder.next(), CHATSTATES) is None  # no typing since

    for state in ("active", "inactive", "gone"):  # nothing was typed: nothing to end
        await sip.deliver(xmpp_message("bob@xmpp.example/phone", "alice@sip.example",
                                       stanza_id=f"s-{state}",
                                       extras=(f"{{{CHATSTATES}}}{state}",)))
    await asyncio.sleep(0.2)
    assert ua.messages.empty()
    await sip.deliver(xmpp_message("bob@xmpp.example/phone", "alice@sip.example",
                                   stanza_id="c1", extras=(f"{{{CHATSTATES}}}composing",)))
    assert parse_is_composing((await asyncio.wait_for(ua.messages.get(), 5)).body).active
    sip.messages.typing_out.min_interval = 0.0
    await sip.deliver(xmpp_message("bob@xmpp.example/phone", "alice@sip.example",
                                   stanza_id="g1", extras=(f"{{{CHATSTATES}}}gone",)))
    assert not parse_is_composing((await asyncio.wait_for(ua.messages.get(), 5)).body).active


@pytest.mark.parametrize("localpart", [
    "who?", "a\\20b", "quote\\22d", "amp\\26ersand", "apo\\27s", "sl\\2fash", "co\\3alon",
    "lt\\3cgt\\3e", "at\\40host", "back\\5c20slash", "semi;colon", "per%25cent",
    "plus+sign", "hash#tag", "ümlaut", "a\\20b\\22c\\26d\\27e\\2ff\\3ag\\3ch\\3ei\\40j"])
async def test_every_xep_0106_escape_round_trips(setup: Setup, localpart: str) -> None:
    """RFC 7247 §5: a JID localpart goes to SIP XEP-0106-unescaped and percent-encoded,
    and the SIP URI the phone answers comes back as the same JID."""
    sip, ua, recorder = setup
    jid = f"{localpart}@xmpp.example"
    await sip.deliver(xmpp_message(f"{jid}/phone", "alice@sip.example", "hi"))
    request = await asyncio.wait_for(ua.messages.get(), 5)
    uri = request.from_.uri
    assert uri.startswith("sip:") and not any(c in uri.partition("@")[0] for c in ' ;?/"<>\\')
    assert (await ua.send_message(uri, "hello back")).status == 202
    assert (await recorder.next()).get("to") == jid


@pytest.mark.drops_expected  # the refusals' errors to nowhere.example (no server there)
async def test_a_user_with_federation_switched_off_leaks_no_typing_or_receipts(
        sip_gateway) -> None:
    """The per-user federation switch covers what travels with messages: a disabled SIP
    user's typing and IMDNs are refused (403) like its messages, and an XMPP contact's
    typing, receipts and markers never reach that user's phone."""
    gw, ua = sip_gateway
    await gw.store.set_user_enabled("alice@sip.example", False)
    gw.router.forget_cached("alice@sip.example")
    contact = "sip:bob@nowhere.example"
    assert (await ua.send_typing(contact, True)).status == 403
    assert (await ua.send_imdn(contact, "x1.aWQ.cGhvbmU")).status == 403
    assert (await ua.send_imdn(contact, "x1.aWQ.cGhvbmU", "displayed", cpim=True)
            ).status == 403
    for extra, attributes in ((f"{{{CHATSTATES}}}composing", {}),
                              (f"{{{RECEIPTS}}}received", {"id": "sb.aWQ.1"}),
                              (f"{{{MARKERS}}}displayed", {"id": "sb.aWQ.1"})):
        stanza = xmpp_message("bob@nowhere.example/phone", "alice@sip.example",
                              stanza_id="from-bob")
        SubElement(stanza, extra, attributes)
        gw.router.from_xmpp(stanza, "nowhere.example", "sip.example")
    async with asyncio.timeout(10):  # each answered as if alice did not exist
        while gw.router.drops.by_reason["error-not-deliverable"] < 3:
            await asyncio.sleep(0.05)
    assert ua.messages.empty() and ua.requests.empty()
    assert gw.router.drops.describe() == {"error-not-deliverable": 3}
