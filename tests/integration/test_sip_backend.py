"""The SIP backend over real sockets against a SIP user agent standing where the proxy is.

Here the UA plays the proxy/presence-server side itself (answers SUBSCRIBE, sends NOTIFY)
so that every mapping rule and error path can be driven exactly; tests/interop/
test_sip_kamailio.py runs the same backend behind a real Kamailio.

Two set-ups:
* ``backend``: the SipBackend alone, its sink recording what it hands to the router;
* ``gateway``: a whole Gateway (real router, SQLite store, contact rules) with
  ``sip.backend: sip``, for the refusals that the router decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from xml.etree.ElementTree import Element, SubElement

import pytest

from gateway.backend import DeliveryError
from gateway.config.model import (
    DialbackSettings,
    GatewayConfig,
    ListenAddress,
    PartnerPolicy,
    PartnerType,
    SipSettings,
    StoreSettings,
)
from gateway.contracts import OnDecided
from gateway.daemon import Gateway
from gateway.dns.resolver import DnsPythonResolver
from gateway.policy.negotiation import Support
from gateway.sip.backend import SipBackend
from gateway.sip.development import message, presence
from gateway.sip.message import SipRequest, make_response, new_branch
from gateway.sip.pidf import PresenceState, parse_pidf
from testbed.dnsmasq import free_port
from testbed.sip_ua import SipUserAgent, pidf

STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
SIP_DOMAIN = "sip.example"


class Recorder:
    """Stands where the router is (a :class:`gateway.contracts.RouterForBackend`):
    records the stanzas; optionally answers some with an error, as the router does for a
    refused stanza, before the stanza counts as decided; ``broken`` makes it raise, as
    a router with a bug would; ``congested`` is its word on the XMPP side."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Element] = asyncio.Queue()
        self.backend: SipBackend | None = None
        self.refuse_with = ""
        self.broken = False
        self.congested = False  # what xmpp_saturated answers for every domain
        self._deciding: set[asyncio.Task[None]] = set()

    def submit_local(self, stanza: Element, on_decided: OnDecided = None) -> None:
        if self.broken:
            raise RuntimeError("router exploded")
        task = asyncio.ensure_future(self._decide(stanza, on_decided))
        self._deciding.add(task)
        task.add_done_callback(self._deciding.discard)

    async def _decide(self, stanza: Element, on_decided: OnDecided) -> None:
        try:
            await self.from_local(stanza)
        finally:
            if on_decided is not None:
                on_decided()

    async def from_local(self, stanza: Element) -> None:
        await self.queue.put(stanza)
        if self.refuse_with and self.backend is not None:
            error = Element(stanza.tag, {"from": stanza.get("to", ""),
                                         "to": stanza.get("from", ""), "type": "error",
                                         "id": stanza.get("id", "")})
            SubElement(SubElement(error, "{jabber:server}error", {"type": "cancel"}),
                       f"{{{STANZAS}}}{self.refuse_with}")
            await self.backend.deliver(error)

    def xmpp_saturated(self, domain: str) -> bool:
        return self.congested

    async def next(self, timeout: float = 5.0) -> Element:
        return await asyncio.wait_for(self.queue.get(), timeout)


@pytest.fixture
async def backend() -> AsyncIterator[tuple[SipBackend, SipUserAgent, Recorder]]:
    ua = await SipUserAgent("alice", SIP_DOMAIN, ("127.0.0.1", 9)).start()
    sip = SipBackend([SIP_DOMAIN], proxy=("127.0.0.1", ua.port), local=("127.0.0.1", 0))
    recorder = Recorder()
    recorder.backend = sip
    await sip.start(recorder)
    ua.proxy = sip.transport.local
    try:
        yield sip, ua, recorder
    finally:
        await sip.stop(grace=0.5)
        await ua.close()


def condition(stanza: Element) -> str:
    error = stanza.find("{jabber:server}error")
    assert error is not None, stanza.attrib
    return next(child.tag.rpartition("}")[2] for child in error)


# ---------------------------------------------------------------------- messages


async def test_xmpp_message_becomes_sip_message(backend) -> None:
    sip, ua, _ = backend
    await sip.deliver(message("bob@xmpp.example/phone", "alice@sip.example", "héllo <3"))
    request = await asyncio.wait_for(ua.messages.get(), 5)
    assert request.uri == "sip:alice@sip.example"
    assert request.from_.uri == "sip:bob@xmpp.example" and request.from_.tag
    # RFC 7572 §4: the resource of a full JID travels as a GRUU (in Contact, RFC 5627)
    assert request.get("contact") == "<sip:bob@xmpp.example;gr=phone>"
    assert request.to.uri == "sip:alice@sip.example"
    assert request.get("content-type") == "text/plain;charset=UTF-8"
    assert request.body.decode() == "héllo <3"


@pytest.mark.parametrize(("status", "expected"), [(480, "recipient-unavailable"),
                                                  (404, "item-not-found"),
                                                  (603, "service-unavailable"),
                                                  (488, "not-acceptable")])
async def test_sip_failure_comes_back_as_xmpp_error(backend, status: int, expected: str) -> None:
    sip, ua, recorder = backend
    ua.answers["MESSAGE"] = status
    original = message("bob@xmpp.example/phone", "alice@sip.example", "are you there?")
    original.set("id", "m1")
    await sip.deliver(original)
    error = await recorder.next()
    assert (error.get("type"), error.get("id"), error.get("from"), error.get("to")) == (
        "error", "m1", "alice@sip.example", "bob@xmpp.example/phone")
    assert condition(error) == expected
    assert f"SIP {status}" in (error.findtext(f"{{jabber:server}}error/{{{STANZAS}}}text") or "")


async def test_bodiless_message_is_not_sent(backend) -> None:
    sip, ua, _ = backend
    composing = message("bob@xmpp.example/p", "alice@sip.example", "")
    composing.remove(composing[0])
    await sip.deliver(composing)
    await sip.deliver(message("bob@xmpp.example/p", "alice@sip.example", "second"))
    first = await asyncio.wait_for(ua.messages.get(), 5)
    assert first.body == b"second"


async def test_what_sip_cannot_carry_is_refused(backend) -> None:
    sip, _, _ = backend
    iq = Element("{jabber:server}iq", {"from": "bob@xmpp.example/p", "to": "alice@sip.example",
                                       "type": "get", "id": "q"})
    with pytest.raises(DeliveryError) as refused:
        await sip.deliver(iq)
    assert refused.value.condition == "service-unavailable"
    with pytest.raises(DeliveryError) as other:
        await sip.deliver(message("bob@xmpp.example/p", "carol@elsewhere.example", "x"))
    assert other.value.condition == "item-not-found"


async def test_sip_message_becomes_xmpp_message_and_gets_202(backend) -> None:
    _, ua, recorder = backend
    response = await ua.send_message("sip:bob@xmpp.example", "hi from SIP")
    assert response.status == 202
    stanza = await recorder.next()
    assert (stanza.tag, stanza.get("from"), stanza.get("to"), stanza.get("type")) == (
        "{jabber:server}message", "alice@sip.example/sip", "bob@xmpp.example", "chat")
    assert stanza.findtext("{jabber:server}body") == "hi from SIP"


@pytest.mark.parametrize(("refusal", "status"), [("forbidden", 403),
                                                 ("service-unavailable", 503),
                                                 ("not-allowed", 403)])
async def test_router_refusal_becomes_sip_error(backend, refusal: str, status: int) -> None:
    _, ua, recorder = backend
    recorder.refuse_with = refusal
    response = await ua.send_message("sip:bob@xmpp.example", "blocked?")
    assert response.status == status


async def test_bad_sip_messages_get_precise_answers(backend) -> None:
    _, ua, recorder = backend
    file_transfer = await ua.send_message("sip:bob@xmpp.example", "<file/>",
                                          "application/vnd.gsma.rcs-ft-http+xml")
    assert file_transfer.status == 415
    assert "text/plain" in file_transfer.get("accept") and \
        "message/cpim" in file_transfer.get("accept")
    own_domain = await ua.send_message("sip:carol@sip.example", "loop?")
    assert own_domain.status == 404
    foreign = SipUserAgent("eve", "evil.example", ua.proxy)
    await foreign.start()
    try:
        spoofed = await foreign.send_message("sip:bob@xmpp.example", "spoof")
        assert spoofed.status == 403
    finally:
        await foreign.close()
    assert recorder.queue.empty()


async def test_retransmitted_message_is_delivered_once(backend) -> None:
    _, ua, recorder = backend
    request = ua._new("MESSAGE", "sip:bob@xmpp.example", "sip:bob@xmpp.example")
    request.add("content-type", "text/plain")
    request.body = b"once"
    first = await ua.request(request)
    second = await ua.request(request)  # same branch: a UDP retransmission
    assert first.status == second.status == 202
    assert (await recorder.next()).findtext("{jabber:server}body") == "once"
    await asyncio.sleep(0.2)
    assert recorder.queue.empty()


async def test_other_methods_and_garbage(backend) -> None:
    sip, ua, _ = backend
    options = await ua.request(ua._new("OPTIONS", "sip:bob@xmpp.example", "sip:bob@xmpp.example"))
    assert options.status == 200 and "MESSAGE" in (options.get("allow") or "")
    invite = await ua.request(ua._new("INVITE", "sip:bob@xmpp.example", "sip:bob@xmpp.example"))
    assert (invite.status, invite.get("allow")) == (405, "MESSAGE, SUBSCRIBE, NOTIFY, OPTIONS")
    unknown = await ua.request(ua._new("FROBNICATE", "sip:bob@xmpp.example",
                                       "sip:bob@xmpp.example"))
    assert unknown.status == 501
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        for junk in (b"\x00\xff garbage", b"MESSAGE sip:x SIP/2.0\r\n\r\n", b"A" * 65000):
            raw.sendto(junk, sip.transport.local)
    after = await ua.send_message("sip:bob@xmpp.example", "still alive")
    assert after.status == 202


# ---------------------------------------------------------------------- SIP user watches XMPP


async def test_sip_subscription_to_xmpp_contact(backend) -> None:
    sip, ua, recorder = backend
    response = await ua.subscribe("sip:bob@xmpp.example", expires=600)
    # 200, not 202: RFC 6665 §4.2.1.1 deprecates 202 for SUBSCRIBE
    assert (response.status, response.get("expires")) == (200, "600")
    pending = await ua.next_notify()
    assert (pending.get("subscription-state") or "").startswith("pending")
    request = await recorder.next()
    assert (request.get("type"), request.get("from"), request.get("to")) == (
        "subscribe", "alice@sip.example", "bob@xmpp.example")
    # The contact approves: active, with what we know of its presence (nothing yet).
    await sip.deliver(presence("bob@xmpp.example", "alice@sip.example", "subscribed"))
    active = await ua.next_notify()
    assert (active.get("subscription-state") or "").startswith("active")
    assert parse_pidf(active.body) == PresenceState(False)
    # Its presence changes: one NOTIFY each, a PIDF tuple per available resource, the
    # most available first.
    busy = presence("bob@xmpp.example/desk", "alice@sip.example")
    SubElement(busy, "{jabber:server}show").text = "dnd"
    SubElement(busy, "{jabber:server}status").text = "writing"
    await sip.deliver(busy)
    assert parse_pidf((await ua.next_notify()).body) == PresenceState(True, "dnd", "writing")
    await sip.deliver(presence("bob@xmpp.example/phone", "alice@sip.example"))
    both = (await ua.next_notify()).body
    assert both.count(b"<tuple ") == 2 and both.count(b"<basic>open</basic>") == 2
    assert parse_pidf(both) == PresenceState(True, "", "writing")  # the phone leads
    await sip.deliver(presence("bob@xmpp.example/phone", "alice@sip.example", "unavailable"))
    assert parse_pidf((await ua.next_notify()).body).show == "dnd"
    # Refresh, then unsubscribe (Expires: 0) → terminated with the last state, and
    # nothing toward XMPP: ending a dialog is not removing the contact (RFC 6121 §3.3).
    assert (await ua.subscribe("sip:bob@xmpp.example", expires=300)).status == 200
    refreshed = await ua.next_notify()
    assert (refreshed.get("subscription-state") or "").startswith("active")
    assert (await ua.subscribe("sip:bob@xmpp.example", expires=0)).status == 200
    final = await ua.next_notify()
    assert final.get("subscription-state") == "terminated;reason=timeout"
    assert parse_pidf(final.body).show == "dnd"
    await asyncio.sleep(0.3)
    assert recorder.queue.empty()
    assert not sip.notifiers


async def test_xmpp_contact_refuses_sip_subscription(backend) -> None:
    sip, ua, recorder = backend
    assert (await ua.subscribe("sip:bob@xmpp.example")).status == 200
    await ua.next_notify()
    await recorder.next()
    await sip.deliver(presence("bob@xmpp.example", "alice@sip.example", "unsubscribed"))
    final = await ua.next_notify()
    assert final.get("subscription-state") == "terminated;reason=rejected"
    assert not sip.notifiers


async def test_subscription_event_and_interval_checks(backend) -> None:
    _, ua, _ = backend
    request = ua._new("SUBSCRIBE", "sip:bob@xmpp.example", "sip:bob@xmpp.example")
    request.add("event", "dialog")
    assert (await ua.request(request)).status == 489
    brief = ua._new("SUBSCRIBE", "sip:bob@xmpp.example", "sip:bob@xmpp.example")
    brief.add("event", "presence")
    brief.add("expires", "5")
    answer = await ua.request(brief)
    assert (answer.status, answer.get("min-expires")) == (423, "60")
    stray = ua._new("NOTIFY", "sip:bob@127.0.0.1", "sip:bob@xmpp.example", to_tag="nope")
    stray.add("event", "presence")
    stray.add("subscription-state", "active")
    assert (await ua.request(stray)).status == 481


async def test_stop_deactivates_subscriptions(backend) -> None:
    sip, ua, recorder = backend
    assert (await ua.subscribe("sip:bob@xmpp.example")).status == 200
    await ua.next_notify()
    await recorder.next()
    await sip.stop(grace=1.0)
    final = await ua.next_notify()
    assert final.get("subscription-state") == "terminated;reason=deactivated"


# ---------------------------------------------------------------------- XMPP watches SIP


async def answer_subscribe(ua: SipUserAgent, status: int = 202) -> tuple[SipRequest, str]:
    request = await asyncio.wait_for(ua.requests.get(), 5)
    assert request.method == "SUBSCRIBE"
    tag = secrets.token_hex(4)
    response_headers = [("Expires", request.get("expires") or "0"),
                        ("Contact", f"<sip:presence@127.0.0.1:{ua.port}>")]
    response = make_response(request, status, to_tag=tag)
    for name, value in response_headers:
        response.add(name, value)
    ua._write(response.serialize())
    return request, tag


def notify_for(ua: SipUserAgent, subscribe: SipRequest, tag: str, state: str,
               body: bytes = b"", cseq: int = 1) -> SipRequest:
    contact = subscribe.get("contact") or ""
    notify = SipRequest([], b"", "NOTIFY", contact.strip("<>"))
    notify.add("via", f"SIP/2.0/UDP 127.0.0.1:{ua.port};branch={new_branch()};rport")
    notify.add("max-forwards", "70")
    notify.add("from", f"<{subscribe.to.uri}>;tag={tag}")
    notify.add("to", subscribe.get("from") or "")
    notify.add("call-id", subscribe.call_id)
    notify.add("cseq", f"{cseq} NOTIFY")
    notify.add("contact", f"<sip:presence@127.0.0.1:{ua.port}>")
    notify.add("event", "presence")
    notify.add("subscription-state", state)
    if body:
        notify.add("content-type", "application/pidf+xml")
        notify.body = body
    return notify


async def watch_established(sip: SipBackend, ua: SipUserAgent,
                            recorder: Recorder) -> tuple[SipRequest, str]:
    """bob@xmpp.example subscribes to alice, the UA (as presence server) accepts and sends
    an active NOTIFY with open presence; XMPP gets 'subscribed' then the presence.
    Returns the gateway's SUBSCRIBE and the notifier's tag."""
    await sip.deliver(presence("bob@xmpp.example", "alice@sip.example", "subscribe"))
    subscribe, tag = await answer_subscribe(ua)
    await ua.request(notify_for(ua, subscribe, tag, "active;expires=3600",
                                pidf("alice@sip.example")))
    assert (await recorder.next()).get("type") == "subscribed"
    assert (await recorder.next()).get("from") == "alice@sip.example/sip"
    return subscribe, tag


async def test_xmpp_subscription_to_sip_user(backend) -> None:
    sip, ua, recorder = backend
    await sip.deliver(presence("bob@xmpp.example", "alice@sip.example", "subscribe"))
    subscribe, tag = await answer_subscribe(ua)
    assert (subscribe.uri, subscribe.from_.uri, subscribe.get("event"),
            subscribe.get("accept")) == ("sip:alice@sip.example", "sip:bob@xmpp.example",
                                         "presence", "application/pidf+xml")
    ok = await ua.request(notify_for(ua, subscribe, tag, "active;expires=3600",
                                     pidf("alice@sip.example", "open", "in the lab", "busy")))
    assert ok.status == 200
    subscribed = await recorder.next()
    assert (subscribed.get("type"), subscribed.get("from"), subscribed.get("to")) == (
        "subscribed", "alice@sip.example", "bob@xmpp.example")
    available = await recorder.next()
    assert available.get("from") == "alice@sip.example/sip" and available.get("type") is None
    assert (available.findtext("{jabber:server}show"),
            available.findtext("{jabber:server}status")) == ("dnd", "in the lab")
    # A probe is answered from what we know, without a new SUBSCRIBE.
    await sip.deliver(presence("bob@xmpp.example", "alice@sip.example", "probe"))
    assert (await recorder.next()).findtext("{jabber:server}show") == "dnd"
    assert ua.requests.empty()
    # The SIP side ends it: unavailable, then unsubscribed.
    await ua.request(notify_for(ua, subscribe, tag, "terminated;reason=rejected", cseq=2))
    assert (await recorder.next()).get("type") == "unavailable"
    assert (await recorder.next()).get("type") == "unsubscribed"
    assert not sip.watches


async def test_xmpp_unsubscribe_ends_the_sip_subscription(backend) -> None:
    sip, ua, recorder = backend
    subscribe, tag = await watch_established(sip, ua, recorder)
    await sip.deliver(presence("bob@xmpp.example", "alice@sip.example", "unsubscribe"))
    ending = await asyncio.wait_for(ua.requests.get(), 5)
    assert (ending.method, ending.get("expires"), ending.call_id, ending.to.tag) == (
        "SUBSCRIBE", "0", subscribe.call_id, tag)


@pytest.mark.parametrize(("status", "expected"), [(403, "unsubscribed"), (488, "error")])
async def test_refused_sip_subscription(backend, status: int, expected: str) -> None:
    sip, ua, recorder = backend
    await sip.deliver(presence("bob@xmpp.example", "alice@sip.example", "subscribe"))
    await answer_subscribe(ua, status)
    answer = await recorder.next()
    assert (answer.get("type"), answer.get("from"), answer.get("to")) == (
        expected, "alice@sip.example", "bob@xmpp.example")
    if expected == "error":
        assert condition(answer) == "not-acceptable"
    assert not sip.watches


# ---------------------------------------------------------------------- whole gateway


@pytest.fixture
async def gateway(tmp_path: Path, pki, dns_for_pair) -> AsyncIterator[tuple[Gateway,
                                                                            SipUserAgent]]:
    dns, _ports = dns_for_pair
    ua = await SipUserAgent("alice", SIP_DOMAIN, ("127.0.0.1", 9)).start()
    sip_port = free_port()
    config = GatewayConfig(
        domains=(SIP_DOMAIN,),
        partners=(PartnerPolicy("nowhere.example", PartnerType.FEDERATED, Support.OPTIONAL,
                                Support.OPTIONAL, True),),
        listen=(ListenAddress("127.0.0.1", free_port(kind=socket.SOCK_STREAM)),),
        tls=pki.tls_settings(SIP_DOMAIN),
        dialback=DialbackSettings("secret"),
        store=StoreSettings(tmp_path / "store.sqlite3"),
        admin_socket=tmp_path / "admin.sock",
        sip=SipSettings(backend="sip", proxy_host="127.0.0.1", proxy_port=ua.port,
                        local_host="127.0.0.1", local_port=sip_port),
    )
    gw = Gateway(config, resolver=DnsPythonResolver(nameservers=(dns,), timeout=2.0))
    await gw.start()
    ua.proxy = ("127.0.0.1", sip_port)
    try:
        yield gw, ua
    finally:
        await gw.stop()
        await ua.close()


async def test_contact_rules_answer_sip_requests(gateway) -> None:
    gw, ua = gateway
    unlisted = await ua.send_message("sip:bob@unlisted.example", "hello?")
    assert unlisted.status == 403  # not-allowed (RFC 7247 §8.1)
    # The router works from a snapshot of the per-user switches renewed every 5 s; a change
    # made elsewhere is announced to it (PostgreSQL NOTIFY) or waits for the next snapshot.
    await gw.store.set_user_enabled("carol@sip.example", False)
    gw.router.forget_cached("carol@sip.example")
    carol = await SipUserAgent("carol", SIP_DOMAIN, ua.proxy).start()
    try:
        disabled = await carol.send_message("sip:bob@nowhere.example", "hello?")
        assert disabled.status == 403  # forbidden
    finally:
        await carol.close()


async def test_xmpp_failure_is_the_answer_to_the_sip_user(gateway) -> None:
    """A MESSAGE is answered once XMPP has it or failed to (docs/delivery.md): a domain
    that does not exist (DNS) is the final answer, not a 202 and a notice later."""
    _, ua = gateway
    answer = await ua.send_message("sip:bob@nowhere.example", "are you there?")
    assert (answer.status, answer.reason) == (404, "Remote Server Not Found")
    assert ua.messages.empty()


# ---------------------------------------------------------------------- TLS


@contextlib.asynccontextmanager
async def back_to_back(pki, a_trusts_b: bool = True):
    """Backend A (sip.example) whose proxy is backend B (xmpp.example), over TLS; B's
    certificate names localhost. Yields (A, A's sink, B's sink)."""
    trusted = pki.tls_settings("localhost")
    settings_b = SipSettings(backend="sip", transport="tls", proxy_host="localhost",
                             proxy_port=9, local_host="127.0.0.1",
                             local_port=free_port(kind=socket.SOCK_STREAM))
    b = SipBackend.from_settings(settings_b, ["xmpp.example"], trusted)
    received = Recorder()
    await b.start(received)
    settings_a = SipSettings(backend="sip", transport="tls", proxy_host="localhost",
                             proxy_port=settings_b.local_port, local_host="127.0.0.1",
                             local_port=free_port(kind=socket.SOCK_STREAM))
    a_tls = trusted if a_trusts_b else pki.tls_settings("localhost", trusts_peers=False)
    a = SipBackend.from_settings(settings_a, [SIP_DOMAIN], a_tls)
    answers = Recorder()
    await a.start(answers)
    try:
        yield a, answers, received
    finally:
        await a.stop(grace=0.5)
        await b.stop(grace=0.5)


async def test_sip_over_tls(pki) -> None:
    """Each side verifies the other's certificate against the test CA, so a message
    mapped by A arrives at B only through a verified TLS connection."""
    async with back_to_back(pki) as (a, answers, received):
        await a.deliver(message("bob@xmpp.example/p", "alice@sip.example", "over TLS"))
        stanza = await received.next()
        assert (stanza.get("from"), stanza.get("to"), stanza.findtext("{jabber:server}body")) \
            == ("bob@xmpp.example/sip", "alice@sip.example", "over TLS")
        assert answers.queue.empty()  # B answered 202: no error came back to A's sink
        assert a.transport.streams and next(iter(a.transport.streams.values())).transport \
            .get_extra_info("ssl_object") is not None


async def test_sip_tls_refuses_an_untrusted_proxy(pki) -> None:
    async with back_to_back(pki, a_trusts_b=False) as (a, answers, received):
        original = message("bob@xmpp.example/p", "alice@sip.example", "secret")
        original.set("id", "t1")
        await a.deliver(original)
        error = await answers.next(10)  # transport failure = timeout (RFC 3261 §17.1.4)
        assert (error.get("type"), error.get("id")) == ("error", "t1")
        assert condition(error) == "remote-server-timeout"
        assert received.queue.empty()


async def test_status_reports_the_sip_side(gateway) -> None:
    gw, ua = gateway
    assert (await ua.subscribe("sip:bob@nowhere.example")).status == 200
    await ua.next_notify()
    backend = gw.status()["backend"]
    assert (backend["kind"], backend["transport"], backend["notifiers"]) == ("sip", "udp", 1)
    assert backend["received"] >= 1 and backend["sent"] >= 1
    # nowhere.example has no server: the subscribe bounces (remote-server-not-found) and
    # the phone learns that the contact does not exist (RFC 6665 noresource).
    final = await ua.next_notify(state="terminated", timeout=15)
    assert final.get("subscription-state") == "terminated;reason=noresource"
    assert gw.status()["backend"]["notifiers"] == 0


async def test_failed_handler_still_answers(backend) -> None:
    sip, ua, recorder = backend
    recorder.broken = True
    response = await ua.send_message("sip:bob@xmpp.example", "boom")
    assert response.status == 500
    assert all(sip.layer.answered(key) for key in sip.layer.servers)
    assert sip.transport.unexpected_errors == 1  # counted as the bug it is


async def test_failed_refresh_subscribes_afresh(backend) -> None:
    sip, ua, recorder = backend
    subscribe, tag = await watch_established(sip, ua, recorder)
    sip.watches[("bob@xmpp.example", "alice@sip.example")].expires_at = 0.1  # due now
    refresh = await asyncio.wait_for(ua.requests.get(), 5)
    assert (refresh.method, refresh.to.tag, refresh.call_id) == ("SUBSCRIBE", tag,
                                                                 subscribe.call_id)
    ua.reply(refresh, 481)  # the presence server lost it (restarted)
    fresh = await asyncio.wait_for(ua.requests.get(), 5)
    assert (fresh.method, fresh.to.tag) == ("SUBSCRIBE", "")
    assert fresh.call_id != subscribe.call_id
    assert recorder.queue.empty()  # XMPP was told nothing: the subscription carries on


async def test_subscriptions_to_sip_users_survive_a_restart(tmp_path: Path) -> None:
    """The XMPP side keeps its subscription across our restart and will not ask again, so
    the backend remembers it in the store and subscribes again when it starts."""
    from gateway.store import AsyncAuthorizationStore, SqliteAuthorizationStore

    store = AsyncAuthorizationStore(SqliteAuthorizationStore(tmp_path / "gw.sqlite3"))
    ua = await SipUserAgent("alice", SIP_DOMAIN, ("127.0.0.1", 9)).start()
    first = SipBackend([SIP_DOMAIN], proxy=("127.0.0.1", ua.port), local=("127.0.0.1", 0))
    recorder = Recorder()
    await first.start(recorder, watches=store)
    ua.proxy = first.transport.local
    try:
        await watch_established(first, ua, recorder)
        async with asyncio.timeout(5):
            while await store.list_watches() != [("bob@xmpp.example", "alice@sip.example")]:
                await asyncio.sleep(0.02)
        stopping = asyncio.ensure_future(first.stop(grace=2.0))
        ending = await asyncio.wait_for(ua.requests.get(), 5)
        assert (ending.method, ending.get("expires")) == ("SUBSCRIBE", "0")
        ua.reply(ending, 200)
        await stopping
        assert await store.list_watches() == [("bob@xmpp.example", "alice@sip.example")]

        second = SipBackend([SIP_DOMAIN], proxy=("127.0.0.1", ua.port), local=("127.0.0.1", 0))
        await second.start(recorder, watches=store)
        ua.proxy = second.transport.local
        try:
            again = await asyncio.wait_for(ua.requests.get(), 5)
            assert (again.method, again.uri, again.from_.uri, again.to.tag) == (
                "SUBSCRIBE", "sip:alice@sip.example", "sip:bob@xmpp.example", "")
            ua.reply(again, 202, ("Expires", "3600"))
            await second.deliver(presence("bob@xmpp.example", "alice@sip.example",
                                          "unsubscribe"))
            async with asyncio.timeout(5):
                while await store.list_watches():
                    await asyncio.sleep(0.02)
        finally:
            await second.stop(grace=0.5)
    finally:
        await ua.close()
        await store.aclose()


async def test_xml_bodies_declaring_an_encoding_expat_cannot_use_are_refused_cleanly(
        backend) -> None:
    """A PIDF a phone published (the presence server passes it on in its NOTIFY) or an
    IMDN declaring ``encoding="rot13"``: pyexpat raised LookupError for it, which escaped
    the parsers as a bug (500, every NOTIFY of that user). The PIDF counts as
    unreadable (unavailable), the IMDN gets 400."""
    sip, ua, recorder = backend
    subscribe, tag = await watch_established(sip, ua, recorder)
    odd = pidf("alice@sip.example").replace(b'encoding="UTF-8"', b'encoding="rot13"')
    answer = await ua.request(notify_for(ua, subscribe, tag, "active;expires=3600", odd,
                                         cseq=2))
    assert answer.status == 200
    assert (await recorder.next()).get("type") == "unavailable"
    imdn = ('<?xml version="1.0" encoding="base64"?><imdn xmlns="urn:ietf:params:xml:ns:'
            'imdn"><message-id>x1</message-id><delivery-notification><status><delivered/>'
            "</status></delivery-notification></imdn>")
    assert (await ua.send_message("sip:bob@xmpp.example", imdn, "message/imdn+xml")
            ).status == 400
    assert sip.transport.unexpected_errors == 0
