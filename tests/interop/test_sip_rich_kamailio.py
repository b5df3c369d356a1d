"""What chat clients send beside text, end to end: slixmpp clients on Prosody 0.12 with the
xep_0085 (chat states), xep_0184 (receipts) and xep_0333 (chat markers) plugins, the
gateway, a real Kamailio 5.6, and SIP phones behind it: the project's SIP UA here,
Linphone's linphonec in test_linphone_kamailio.py.

    slixmpp rich@a.example ── Prosody a.example ── gateway gw.example ── Kamailio ── SIP UA

One conversation covers: typing shown both ways, receipts and displayed markers both ways
(IMDN in CPIM, RFC 5438), a message in two languages both ways, a 100 KB message refused
at once with policy-violation, a 5 KB message carried over TCP to Kamailio (RFC 3261
§18.1.1), ``who?@a.example`` and ``JSmith@gw.example`` round-tripping (RFC 7247 §5).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.sip.cpim import parse_cpim
from gateway.sip.imdn import parse_imdn
from gateway.sip.iscomposing import parse_is_composing
from gateway.sip.mime import parse_media_type
from gateway.sip.multipart import parse_multipart
from testbed.in_namespace import XmppUser, run_in_namespace
from testbed.namespace import IPS, Namespace
from testbed.servers import Prosody
from testbed.sip_ua import SipUserAgent
from tests.interop.test_sip_kamailio import KAMAILIO_PORT, PHONE, explain, gateway, kamailio
from tests.support import linphone

GW = IPS["gw.example"]
USERS = ("rich", "who?", "lpcpim", "lpplain")
JABBER = "{jabber:client}"
STANZAS = "{urn:ietf:params:xml:ns:xmpp-stanzas}"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


@pytest.fixture(scope="module")
def prosody(ns: Namespace, pki) -> Iterator[Prosody]:
    server = Prosody(ns, pki, secure_auth=False, users=USERS).start()
    try:
        yield server
    finally:
        server.stop()


class ChatClient(XmppUser):
    """An XmppUser with the chat plugins a modern client has; every message stanza is
    also kept raw (bodies in every language, markers, receipts)."""

    def __init__(self, jid: str) -> None:
        super().__init__(jid, IPS["a.example"])
        for plugin in ("xep_0030", "xep_0085", "xep_0184", "xep_0333"):
            self.client.register_plugin(plugin)
        self.raw: asyncio.Queue[Any] = asyncio.Queue()
        self.client.add_event_handler("message", self.raw.put_nowait)
        self.client.add_event_handler("message_error", self.raw.put_nowait)
        for event in ("chatstate_composing", "chatstate_paused", "receipt_received",
                      "marker_displayed"):
            self.client.add_event_handler(event, lambda m, e=event: self.raw.put_nowait(
                (e, m)))

    async def event(self, name: str, timeout: float = 10.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                item = await self.raw.get()
                if isinstance(item, tuple) and item[0] == name:
                    return item[1]

    async def message_where(self, predicate: Any, timeout: float = 10.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                item = await self.raw.get()
                if not isinstance(item, tuple) and predicate(item):
                    return item


async def next_message(ua: SipUserAgent, content_type: str, timeout: float = 10.0) -> Any:
    """The next MESSAGE the phone got of ``content_type`` (others, e.g. typing, skipped);
    inside CPIM counts too (the gateway answers in CPIM a phone that spoke it first):
    then the request's body and Content-Type are the wrapped ones."""
    async with asyncio.timeout(timeout):
        while True:
            request = await ua.messages.get()
            if request.content_type == "message/cpim" and content_type != "message/cpim":
                wrapped = parse_cpim(request.body)
                request.set("content-type", str(wrapped.content_type))
                request.body = wrapped.body
            if request.content_type == content_type:
                return request


async def typing_both_ways(xmpp: ChatClient, ua: SipUserAgent) -> None:
    contact = "siprich@gw.example"
    composing = xmpp.client.make_message(mto=contact, mtype="chat")
    composing["chat_state"] = "composing"
    composing.send()
    shown = parse_is_composing((await next_message(
        ua, "application/im-iscomposing+xml")).body)
    assert shown.active
    paused = xmpp.client.make_message(mto=contact, mtype="chat")
    paused["chat_state"] = "paused"
    paused.send()  # within the rate gate's interval: sent when it is over
    assert not parse_is_composing((await next_message(
        ua, "application/im-iscomposing+xml")).body).active
    assert (await ua.send_typing("sip:rich@a.example", True)).status == 202
    typing = await xmpp.event("chatstate_composing")
    assert typing["from"] == f"{contact}/sip"


async def receipts_both_ways(xmpp: ChatClient, ua: SipUserAgent) -> None:
    # XMPP → SIP: a message asking for a receipt and markable goes in CPIM with the IMDN
    # headers; the phone's IMDNs come back as a receipt and a displayed marker
    outgoing = xmpp.client.make_message(mto="siprich@gw.example", mbody="did you get it?",
                                        mtype="chat")
    outgoing["request_receipt"] = True
    outgoing.enable("markable")
    outgoing.send()
    request = await next_message(ua, "message/cpim")
    wrapped = parse_cpim(request.body)
    assert wrapped.body == b"did you get it?"
    assert wrapped.disposition_notification == {"positive-delivery", "display"}
    for status, event in (("delivered", "receipt_received"), ("displayed", "marker_displayed")):
        assert (await ua.send_imdn(wrapped.sender, wrapped.imdn_message_id or "", status,
                                   cpim=True)).status == 202
        acknowledged = await xmpp.event(event)
        assert (acknowledged["receipt"] if status == "delivered"
                else acknowledged["displayed"]["id"]) == outgoing["id"]
    # SIP → XMPP: the phone asks (CPIM imdn.Disposition-Notification); slixmpp's xep_0184
    # answers by itself, the user's client shows it and says so with a marker
    response = await ua.send_cpim("sip:rich@a.example", "and did you get mine?",
                                  message_id="rich-42", disposition="positive-delivery, display")
    assert response.status == 202
    incoming = await xmpp.message_where(lambda m: m["body"] == "and did you get mine?")
    assert incoming["request_receipt"]
    assert incoming.xml.find("{urn:xmpp:chat-markers:0}markable") is not None
    delivered = parse_imdn(parse_cpim((await next_message(ua, "message/cpim")).body).body)
    assert (delivered.message_id, delivered.status) == ("rich-42", "delivered")
    xmpp.client.plugin["xep_0333"].send_marker(incoming["from"], incoming["id"], "displayed",
                                               mtype="chat")
    displayed = parse_imdn(parse_cpim((await next_message(ua, "message/cpim")).body).body)
    assert (displayed.message_id, displayed.status) == ("rich-42", "displayed")


async def two_languages(xmpp: ChatClient, ua: SipUserAgent) -> None:
    message = xmpp.client.make_message(mto="siprich@gw.example", mtype="chat")
    message["lang"] = "en"
    message["body"] = "Good morning"
    message["body|de"] = "Guten Morgen"
    message.send()
    request = await next_message(ua, "multipart/alternative")
    parts = parse_multipart(parse_media_type(request.get("content-type")), request.body)
    assert {(p.language, p.body.decode()) for p in parts} == {
        ("en", "Good morning"), ("de", "Guten Morgen")}
    boundary = "lang-b0undary"
    body = "".join(f"--{boundary}\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Language"
                   f": {lang}\r\n\r\n{text}\r\n" for lang, text in (
                       ("fr", "Bonne nuit"), ("en", "Good night"))) + f"--{boundary}--\r\n"
    assert (await ua.send_message("sip:rich@a.example", body,
                                  f"multipart/alternative;boundary={boundary}")).status == 202
    both = await xmpp.message_where(lambda m: any(
        "night" in (b.text or "") for b in m.xml.findall(f"{JABBER}body")))
    bodies = {(b.get(XML_LANG) or both.xml.get(XML_LANG), b.text)
              for b in both.xml.findall(f"{JABBER}body")}
    assert bodies == {("fr", "Bonne nuit"), ("en", "Good night")}


async def sizes(xmpp: ChatClient, ua: SipUserAgent) -> None:
    started = time.monotonic()
    xmpp.client.send_message(mto="siprich@gw.example", mbody="x" * 100_000, mtype="chat")
    refused = await xmpp.message_where(lambda m: m["type"] == "error")
    # (slixmpp's error stanza predates RFC 6120's policy-violation: read the element)
    assert refused.xml.find(f"{JABBER}error/{STANZAS}policy-violation") is not None, \
        str(refused)[-600:]
    assert time.monotonic() - started < 5, "refused at once, not after Timer F"
    xmpp.client.send_message(mto="siprich@gw.example", mbody="y" * 5000, mtype="chat")
    large = await next_message(ua, "text/plain")
    assert large.body == b"y" * 5000
    # Kamailio's Via on top, the gateway's below it: the gateway sent it over TCP
    gateway_via = [v for v in large.get_all("via") if GW in v and "5062" in v]
    assert gateway_via and gateway_via[0].startswith("SIP/2.0/TCP"), large.get_all("via")


async def question_mark_address(ua: SipUserAgent) -> None:
    who = await ChatClient("who?@a.example").start()
    try:
        who.client.send_message(mto="siprich@gw.example", mbody="who am I?", mtype="chat")
        request = await next_message(ua, "text/plain")
        assert request.from_.uri.startswith("sip:who%3F@a.example"), request.from_.uri
        assert (await ua.send_message(request.from_.uri, "you are who?")).status == 202
        answer = await who.message_where(lambda m: m["body"] == "you are who?")
        assert answer["from"] == "siprich@gw.example/sip"
    finally:
        await who.stop()


async def case_kept(xmpp: ChatClient) -> None:
    jsmith = await SipUserAgent("JSmith", "gw.example", (GW, KAMAILIO_PORT), host=PHONE
                                ).start()
    try:
        assert (await jsmith.register()).status == 200
        assert (await jsmith.send_message("sip:rich@a.example", "I am JSmith")).status == 202
        hello = await xmpp.message_where(lambda m: m["body"] == "I am JSmith")
        assert hello["from"].bare.lower() == "jsmith@gw.example"
        xmpp.client.send_message(mto="jsmith@gw.example", mbody="hi JSmith", mtype="chat")
        reply = await next_message(jsmith, "text/plain")
        # Kamailio found the registration of JSmith (it compares user parts as written)
        # and put its contact in the Request-URI; To is what the gateway wrote
        assert (reply.to.uri, reply.body) == ("sip:JSmith@gw.example", b"hi JSmith")
        assert reply.uri.startswith("sip:JSmith@")
    finally:
        await jsmith.close()


def test_rich_conversation_through_kamailio(ns: Namespace, pki, prosody: Prosody) -> None:
    sip = kamailio(ns, pki, "udp")
    gw = gateway(ns, pki, "federated", "udp")

    async def scenario() -> None:
        ua = await SipUserAgent("siprich", "gw.example", (GW, KAMAILIO_PORT), host=PHONE
                                ).start()
        assert (await ua.register()).status == 200
        xmpp = await ChatClient("rich@a.example").start()
        try:
            await typing_both_ways(xmpp, ua)
            await receipts_both_ways(xmpp, ua)
            await two_languages(xmpp, ua)
            await sizes(xmpp, ua)
            await question_mark_address(ua)
            await case_kept(xmpp)
        finally:
            await xmpp.stop()
            await ua.close()

    try:
        run_in_namespace(ns.name, scenario, timeout=60)
    except BaseException as exc:
        raise AssertionError(f"rich conversation: {exc!r}{explain(gw, sip)}") from exc
    finally:
        gw.stop()
        sip.stop()


def test_linphone_through_kamailio(ns: Namespace, pki, prosody: Prosody) -> None:
    """Linphone (linphonec from Debian's linphone-cli), with CPIM on and off, and a slixmpp
    client: Linphone's CPIM message arrives as clean text and its delivery/display
    request is answered by the XMPP client's receipt and marker; the XMPP client's
    message reaches both phones, and Linphone's IMDN comes back as a receipt. What
    linphonec's command interface cannot do — type, or mark a message read — is shown
    with the SIP UA in test_rich_conversation_through_kamailio; the XMPP client's typing
    is shown reaching Linphone (its log has the isComposing it answered)."""
    if not linphone.available():
        pytest.fail("linphonec is not installed: run `make debs` (make test does)")
    sip = kamailio(ns, pki, "udp")
    gw = gateway(ns, pki, "federated", "udp")
    phones = [linphone.Linphonec(ns.workdir / f"linphone-{name}", user=name,
                                 domain="gw.example", proxy=(GW, KAMAILIO_PORT), port=port,
                                 cpim=name == "lpcpim", prefix=ns.exec)
              for name, port in (("lpcpim", 5081), ("lpplain", 5082))]
    cpim_phone, plain_phone = phones

    async def scenario() -> None:
        xmpp = await ChatClient("rich@a.example").start()
        try:
            await asyncio.to_thread(cpim_phone.chat, "sip:rich@a.example",
                                    "hello from Linphone with CPIM")
            first = await xmpp.message_where(lambda m: "Linphone with CPIM" in m["body"])
            assert first["body"] == "hello from Linphone with CPIM"  # no CPIM headers
            assert first["from"].bare == "lpcpim@gw.example"
            assert first["request_receipt"]  # Linphone asked (imdn.Disposition-Notification)
            # slixmpp's xep_0184 answered (from its own handler); then the user reads it: a
            # displayed marker (sent once the receipt is through, as a reader does: a
            # "displayed" first would move Linphone past "delivered" for good)
            await asyncio.to_thread(cpim_phone.wait_log, r"to DeliveredToUser", 10)
            xmpp.client.plugin["xep_0333"].send_marker(first["from"], first["id"],
                                                       "displayed", mtype="chat")
            await asyncio.to_thread(cpim_phone.wait_log, r"to Displayed", 10)

            await asyncio.to_thread(plain_phone.chat, "sip:rich@a.example",
                                    "hello from Linphone without CPIM")
            second = await xmpp.message_where(lambda m: "without CPIM" in m["body"])
            assert second["body"] == "hello from Linphone without CPIM"

            typing = xmpp.client.make_message(mto="lpcpim@gw.example", mtype="chat")
            typing["chat_state"] = "composing"
            typing.send()
            await asyncio.to_thread(cpim_phone.wait_log, r"im-iscomposing\+xml", 10)

            for phone in phones:
                message = xmpp.client.make_message(mto=f"{phone.user}@gw.example",
                                                   mbody=f"hi {phone.user}", mtype="chat")
                message["request_receipt"] = True
                message.send()
                await asyncio.to_thread(phone.wait_output,
                                        rf"Message received from .*rich@a\.example.*: "
                                        rf"hi {phone.user}", 10)
                if phone is cpim_phone:  # Linphone answers the IMDN request: a receipt
                    receipt = await xmpp.event("receipt_received")
                    assert receipt["receipt"] == message["id"]
        finally:
            await xmpp.stop()

    try:
        for phone in phones:
            phone.start()
        run_in_namespace(ns.name, scenario, timeout=60)
    except BaseException as exc:
        logs = "".join(f"\n--- {p.user} log (tail) ---\n{p.log()[-3000:]}" for p in phones)
        raise AssertionError(f"linphone: {exc!r}{explain(gw, sip)}{logs}") from exc
    finally:
        for phone in phones:
            phone.stop()
        gw.stop()
        sip.stop()
