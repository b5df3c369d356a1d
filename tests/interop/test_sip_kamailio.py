"""End to end: a Prosody user and a SIP user talk through the gateway and a real Kamailio.

Topology, all inside the interop network namespace:

    Prosody a.example (127.0.0.2) ──S2S── gateway gw.example (127.0.0.4:5269)
                                              │ SIP (UDP or TCP), sip.backend: sip
                                          Kamailio 5.6 (127.0.0.4:5070): registrar, proxy,
                                          presence server for gw.example
                                              │
                                          SIP UA sipuser@gw.example (127.0.0.6, registered)

Trust is enforced (docs/sip.md, "Security"): Kamailio is the gateway's only trusted SIP source (its
``proxy_host``), so the phone at 127.0.0.6 reaches the gateway only through Kamailio, and
the same phone speaking to the gateway directly is refused. Over TLS the leg is mutual
both ways: Kamailio's tls.so with ``verify_certificate``/``require_certificate`` on in
its server and client profiles, the gateway with ``require_client_certificate``.

For each partner type of a.example the conversation covers both message directions, a
subscription each way with PIDF presence, and the status-note rule (docs/configuration.md,
"Partner types"); for public-unverified it shows the refusal before, and the success
after, the SIP user authorizes the contact by subscribing to it (adding it as a contact).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterator

import pytest

from gateway.auth import devcerts
from gateway.sip.pidf import PresenceState, parse_pidf
from testbed.in_namespace import XmppUser, run_in_namespace
from testbed.kamailio import Kamailio
from testbed.namespace import IPS, Namespace
from testbed.servers import GatewayProcess, Prosody
from testbed.sip_ua import SipUserAgent
from tests.support.sip_attacker import spoofed, status_of, stream_exchange, udp_exchange

GW = IPS["gw.example"]
PHONE = "127.0.0.6"  # the SIP phones' host: not trusted by the gateway
KAMAILIO_PORT = 5070
GATEWAY_SIP_PORT = 5062
USERS = ("fed", "pv", "pu", "tcp", "tls", "auth")


@pytest.fixture(scope="module")
def prosody(ns: Namespace, pki) -> Iterator[Prosody]:
    server = Prosody(ns, pki, secure_auth=False, users=USERS).start()
    try:
        yield server
    finally:
        server.stop()


def kamailio(ns: Namespace, pki, transport: str,
             passwords: dict[str, str] | None = None) -> Kamailio:
    """Kamailio for gw.example; with ``tls`` it also listens on TLS (KAMAILIO_PORT + 1) with
    the gw.example certificate, which the gateway verifies against the test CA."""
    workdir = ns.workdir / f"kamailio-{transport}"
    workdir.mkdir(exist_ok=True)
    tls = ca = None
    if transport == "tls":
        settings = pki.tls_settings("gw.example")
        tls, ca = (settings.certificate, settings.key), pki.root / "ca.crt"
    return Kamailio(workdir, domain="gw.example", host=GW, port=KAMAILIO_PORT,
                    gateway=(GW, GATEWAY_SIP_PORT), gateway_transport=transport,
                    prefix=ns.exec, tls=tls, ca=ca, passwords=passwords).start()


def gateway(ns: Namespace, pki, partner_type: str, transport: str = "udp",
            **sip: str) -> GatewayProcess:
    # Over TLS the proxy is named, not numbered: its certificate says gw.example (resolved
    # by the namespace's dnsmasq to 127.0.0.4).
    proxy = ("gw.example", KAMAILIO_PORT + 1) if transport == "tls" else (GW, KAMAILIO_PORT)
    mutual = {"require_client_certificate": "true"} if transport == "tls" else {}
    return GatewayProcess(
        ns, pki, [{"domain": "a.example", "type": partner_type, "tls": "optional",
                   "sasl": "optional", "dialback": "true"}],
        log_level="info",
        sip={"backend": "sip", "proxy_host": proxy[0], "proxy_port": proxy[1],
             "transport": transport, "local_host": GW, "local_port": GATEWAY_SIP_PORT,
             **mutual, **sip},
    ).start()


def explain(gw: GatewayProcess, sip: Kamailio) -> str:
    return (f"\n--- gateway log (tail) ---\n{gw.log[-4000:]}"
            f"\n--- kamailio log (tail) ---\n{sip.log()[-2500:]}")


async def sip_user(name: str, transport: str = "udp") -> SipUserAgent:
    ua = await SipUserAgent(name, "gw.example", (GW, KAMAILIO_PORT), host=PHONE,
                            transport=transport).start()
    assert (await ua.register()).status == 200
    assert (await ua.publish("open", note="at my desk")).status == 200
    return ua


async def xmpp_to_sip_message(xmpp: XmppUser, ua: SipUserAgent, text: str) -> None:
    xmpp.client.send_message(mto=f"{ua.user}@gw.example", mbody=text, mtype="chat")
    message = await asyncio.wait_for(ua.messages.get(), 10)
    assert message.body.decode() == text
    assert message.from_.uri == f"sip:{xmpp.client.boundjid.user}@a.example"
    assert message.content_type == "text/plain"


async def sip_to_xmpp_message(xmpp: XmppUser, ua: SipUserAgent, text: str) -> None:
    response = await ua.send_message(f"sip:{xmpp.client.boundjid.user}@a.example", text)
    assert response.status == 202, response
    message = await xmpp.next_message()
    assert (message["from"], message["type"], message["body"]) == (
        f"{ua.user}@gw.example/sip", "chat", text)


async def xmpp_watches_sip(xmpp: XmppUser, ua: SipUserAgent, *, sees_note: bool) -> None:
    """Prosody user subscribes to the SIP user: subscribed + presence from the PIDF."""
    sip_jid = f"{ua.user}@gw.example"
    xmpp.client.send_presence(pto=sip_jid, ptype="subscribe")
    await xmpp.presence_where(lambda p: p["from"] == sip_jid and p["type"] == "subscribed")
    available = await xmpp.presence_where(
        lambda p: p["from"] == f"{sip_jid}/sip" and p["type"] == "available")
    assert available["status"] == ("at my desk" if sees_note else ""), available
    # A presence change on the SIP side (PUBLISH) reaches the XMPP watcher.
    assert (await ua.publish("open", note="on a call", activity="on-the-phone")).status == 200
    busy = await xmpp.presence_where(
        lambda p: p["from"] == f"{sip_jid}/sip" and p["show"] == "dnd")
    assert busy["status"] == ("on a call" if sees_note else ""), busy


async def sip_watches_xmpp(xmpp: XmppUser, ua: SipUserAgent) -> None:
    """SIP user subscribes to the Prosody user (slixmpp approves automatically)."""
    contact = f"sip:{xmpp.client.boundjid.user}@a.example"
    response = await ua.subscribe(contact)
    assert response.status == 200, response  # RFC 6665 §4.2.1.1
    await ua.notify_where(lambda n: _state(n) == "active" and parse_pidf(n.body).available,
                          timeout=15)
    xmpp.client.send_presence(pshow="away", pstatus="lunch")
    await ua.notify_where(lambda n: parse_pidf(n.body) == PresenceState(True, "away", "lunch"))


def _state(notify) -> str:
    return (notify.get("subscription-state") or "").split(";")[0]


def converse(ns: Namespace, pki, partner_type: str, user: str,
             steps: Callable[[XmppUser, SipUserAgent], Awaitable[None]],
             transport: str = "udp") -> GatewayProcess:
    """Start Kamailio and the gateway, register SIP user ``sip<user>``, log in Prosody user
    ``<user>@a.example`` and run ``steps`` between them inside the namespace; on failure,
    the gateway's and Kamailio's logs are part of the message. Returns the (stopped)
    gateway for log checks."""
    sip = kamailio(ns, pki, transport)
    gw = gateway(ns, pki, partner_type, transport=transport)

    async def scenario() -> None:
        # The phone stays on UDP/TCP; with "tls" only the gateway<->proxy leg is TLS.
        ua = await sip_user(f"sip{user}", transport="udp" if transport == "tls" else transport)
        xmpp = await XmppUser(f"{user}@a.example", IPS["a.example"]).start()
        try:
            await steps(xmpp, ua)
        finally:
            await xmpp.stop()
            await ua.close()

    try:
        run_in_namespace(ns.name, scenario, timeout=90)
    except BaseException as exc:
        raise AssertionError(f"{partner_type}/{transport}: {exc!r}{explain(gw, sip)}") from exc
    finally:
        gw.stop()
        sip.stop()
    return gw


async def full_conversation(xmpp: XmppUser, ua: SipUserAgent, *, sees_note: bool) -> None:
    await xmpp_to_sip_message(xmpp, ua, "hello from XMPP")
    await sip_to_xmpp_message(xmpp, ua, "hello from SIP")
    await xmpp_watches_sip(xmpp, ua, sees_note=sees_note)
    await sip_watches_xmpp(xmpp, ua)


@pytest.mark.parametrize(("partner_type", "user"), [("federated", "fed"),
                                                    ("public-verified", "pv")])
def test_partner_without_authorization(ns: Namespace, pki, prosody: Prosody,
                                       partner_type: str, user: str) -> None:
    converse(ns, pki, partner_type, user, lambda xmpp, ua: full_conversation(
        xmpp, ua, sees_note=partner_type == "federated"))


def test_public_unverified_needs_authorization(ns: Namespace, pki, prosody: Prosody) -> None:
    async def steps(xmpp: XmppUser, ua: SipUserAgent) -> None:
        # Before: the message is refused with an error that does not reveal whether
        # sippu exists, the subscription is answered 'unsubscribed', and nothing
        # reaches the SIP side.
        xmpp.client.send_message(mto="sippu@gw.example", mbody="may I?", mtype="chat")
        refused = await xmpp.next_message()
        assert (refused["type"], refused["error"]) == ("error", "service-unavailable")
        xmpp.client.send_presence(pto="sippu@gw.example", ptype="subscribe")
        await xmpp.presence_where(
            lambda p: p["from"] == "sippu@gw.example" and p["type"] == "unsubscribed")
        assert ua.messages.empty()
        # The SIP user adds the contact (subscribes to its presence): authorization.
        await sip_watches_xmpp(xmpp, ua)
        # After: messages and subscriptions work; status notes stay hidden.
        await xmpp_to_sip_message(xmpp, ua, "thanks for adding me")
        await sip_to_xmpp_message(xmpp, ua, "you're welcome")
        await xmpp_watches_sip(xmpp, ua, sees_note=False)

    gw = converse(ns, pki, "public-unverified", "pu", steps)
    assert "public-unverified contact not authorized by the local user" in gw.log


def test_sip_over_tcp(ns: Namespace, pki, prosody: Prosody) -> None:
    """The same conversation with the gateway and the UA speaking SIP over TCP."""
    converse(ns, pki, "federated", "tcp", lambda xmpp, ua: full_conversation(
        xmpp, ua, sees_note=True), transport="tcp")


def test_sip_over_tls_to_kamailio(ns: Namespace, pki, prosody: Prosody) -> None:
    """The gateway<->Kamailio leg over TLS (Kamailio's tls.so), certificates verified by
    the gateway; messages and presence both ways."""
    gw = converse(ns, pki, "federated", "tls", lambda xmpp, ua: full_conversation(
        xmpp, ua, sees_note=True), transport="tls")
    assert "transport=tls" in gw.log and "sip.proxy_unreachable" not in gw.log
    assert "client_certificate=required" in gw.log and "sip.untrusted" not in gw.log


async def phone_speaks_directly(xmpp: XmppUser, ua: SipUserAgent, transport: str,
                                pki) -> None:
    """The phone (or anyone on its network) skips Kamailio and sends the gateway a MESSAGE
    and a SUBSCRIBE as the CEO: refused, nothing reaches the Prosody user; the same phone
    through Kamailio is still heard."""
    victim = f"sip:{xmpp.client.boundjid.user}@a.example"
    target = (GW, GATEWAY_SIP_PORT)
    for method in ("MESSAGE", "SUBSCRIBE"):
        def forged(port: int, method: str = method) -> bytes:
            return spoofed(method, transport, (PHONE, port), domain="gw.example",
                           victim=victim)
        if transport == "udp":
            answers = await udp_exchange(PHONE, target, forged, listen=1.0)
        else:
            context = None
            if transport == "tls":  # a certificate from the right CA, for the wrong name
                wrong = pki.tls_settings("a.example")
                context = ssl.create_default_context(cafile=str(pki.root / "ca.crt"))
                context.load_cert_chain(str(wrong.certificate), str(wrong.key))
            answers, closed = await stream_exchange(PHONE, target, forged, context=context,
                                                    server_hostname="gw.example")
            assert closed
        assert [status_of(a) for a in answers] == [403], (method, answers)
    if transport == "tls":  # from Kamailio's own address: the certificate decides
        answers, closed = await stream_exchange(
            GW, target, lambda port: spoofed("MESSAGE", "tls", (GW, port),
                                             domain="gw.example", victim=victim),
            context=context, server_hostname="gw.example")
        assert [status_of(a) for a in answers] == [403] and closed
    with pytest.raises(TimeoutError):
        await xmpp.next_message(timeout=2)
    await sip_to_xmpp_message(xmpp, ua, "this one is really from me")


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_only_kamailio_is_trusted(ns: Namespace, pki, prosody: Prosody,
                                  transport: str) -> None:
    user = {"udp": "fed", "tcp": "tcp", "tls": "tls"}[transport]
    gw = converse(ns, pki, "federated", user,
                  lambda xmpp, ua: phone_speaks_directly(xmpp, ua, transport, pki),
                  transport=transport)
    refusals = [line for line in gw.log.splitlines() if "sip.untrusted" in line]
    assert len(refusals) == (3 if transport == "tls" else 2), gw.log[-3000:]
    assert all(f"peer={PHONE}:" in line for line in refusals[:2])
    if transport == "tls":
        assert "client certificate names a.example, not gw.example" in refusals[2]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_kamailio_authenticates_phones(ns: Namespace, pki, prosody: Prosody,
                                       transport: str) -> None:
    """docs/sip.md's Kamailio route: phones authenticate (digest) before anything reaches
    the gateway, Kamailio replaces any P-Asserted-Identity a phone wrote with the
    authenticated user, and the gateway (trust_asserted_identity) takes the sender from it.
    Over TCP this also shows the gateway connects from its own SIP address, the one the
    route exempts from challenges (an XMPP message reaches the phone unchallenged)."""
    sip = kamailio(ns, pki, transport, passwords={"sipauth": "s3cret"})
    gw = gateway(ns, pki, "federated", transport, trust_asserted_identity="true")
    contact = "sip:auth@a.example"

    async def message_with(ua: SipUserAgent, text: str, asserted: str = ""):
        request = ua._new("MESSAGE", contact, contact)
        request.add("content-type", "text/plain;charset=UTF-8")
        if asserted:
            request.add("p-asserted-identity", asserted)
        request.body = text.encode()
        return await ua.request(request)

    async def scenario() -> None:
        phone = await SipUserAgent("sipauth", "gw.example", (GW, KAMAILIO_PORT), host=PHONE,
                                   password="s3cret", transport=transport).start()
        wrong = await SipUserAgent("sipauth", "gw.example", (GW, KAMAILIO_PORT), host=PHONE,
                                   password="guess", transport=transport).start()
        impostor = await SipUserAgent("ceo", "gw.example", (GW, KAMAILIO_PORT), host=PHONE,
                                      password="s3cret", auth_user="sipauth",
                                      transport=transport).start()
        xmpp = await XmppUser("auth@a.example", IPS["a.example"]).start()
        try:
            assert (await phone.register()).status == 200
            # The phone asserts someone else: Kamailio replaces it, the gateway sees sipauth.
            answer = await message_with(phone, "hello", asserted="<sip:ceo@gw.example>")
            assert answer.status == 202, answer
            received = await xmpp.next_message()
            assert (received["from"], received["body"]) == ("sipauth@gw.example/sip", "hello")
            await xmpp_to_sip_message(xmpp, phone, "the gateway is not challenged")
            # A wrong password, and a right one used with another user's From: refused by
            # Kamailio, nothing reaches the gateway or the XMPP user.
            assert (await message_with(wrong, "let me in")).status in (401, 403, 407)
            assert (await message_with(impostor, "I am the CEO")).status in (401, 403, 407)
            with pytest.raises(TimeoutError):
                await xmpp.next_message(timeout=2)
        finally:
            await xmpp.stop()
            for ua in (phone, wrong, impostor):
                await ua.close()

    try:
        run_in_namespace(ns.name, scenario, timeout=90)
    except BaseException as exc:
        raise AssertionError(f"auth: {exc!r}{explain(gw, sip)}") from exc
    finally:
        gw.stop()
        sip.stop()
    assert "sip.untrusted" not in gw.log


def test_kamailio_refuses_a_gateway_it_cannot_verify(ns: Namespace, pki, prosody: Prosody
                                                     ) -> None:
    """Mutual TLS, the other direction: the gateway presents a client certificate from a
    CA Kamailio does not trust (sip.client_certificate), so Kamailio's require/verify
    refuses the connection and the XMPP sender gets an error, not silence."""
    ca, ca_key = devcerts.make_ca("rogue CA", key_type="ec")
    cert, key = devcerts.issue_certificate(ca, ca_key, ["gw.example"], key_type="ec")
    rogue = (ns.workdir / "rogue.crt", ns.workdir / "rogue.key")
    devcerts.write_key_and_cert(rogue[0], rogue[1], cert, key)
    sip = kamailio(ns, pki, "tls")
    gw = gateway(ns, pki, "federated", "tls", client_certificate=str(rogue[0]),
                 client_key=str(rogue[1]))

    async def scenario() -> None:
        ua = await sip_user("siptls")
        xmpp = await XmppUser("tls@a.example", IPS["a.example"]).start()
        try:
            xmpp.client.send_message(mto="siptls@gw.example", mbody="via rogue", mtype="chat")
            error = await xmpp.next_message(timeout=40)
            assert (error["type"], error["error"]) == ("error", "remote-server-timeout"), error
            assert ua.messages.empty()
        finally:
            await xmpp.stop()
            await ua.close()

    try:
        run_in_namespace(ns.name, scenario, timeout=90)
    except BaseException as exc:
        raise AssertionError(f"rogue: {exc!r}{explain(gw, sip)}") from exc
    finally:
        gw.stop()
        sip.stop()
    assert "certificate verify failed" in sip.log()  # refused by Kamailio's verification
