"""Presence that tells each watcher the truth, with the real servers: Prosody 0.12 (with
mod_blocklist) for a.example, Kamailio 5.6 as registrar/proxy/presence server for
gw.example, SIP phones (testbed/sip_ua.py) registered there, and the gateway.

Same topology as test_sip_kamailio.py:

    Prosody a.example (127.0.0.2) ──S2S── gateway gw.example (127.0.0.4:5269)
                                              │ SIP over UDP
                                          Kamailio (127.0.0.4:5070)
                                              │
                                          phones sip…@gw.example (127.0.0.6)

Each test is one rule of RFC 8048 / RFC 6665 / RFC 6121 as a user sees it: privacy
(blocking and directed presence), a refusal reaching the phone, a SIP user who is not
registered yet, a restart of the gateway, a phone switching off, order; privacy and
refusal once more with a real SIP client, Linphone (linphonec). The failover of a
phone's subscription between two nodes is in test_cluster_failover.py.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Iterator

import pytest

from gateway.sip.pidf import parse_pidf
from testbed.in_namespace import XmppUser, run_in_namespace
from testbed.kamailio import Kamailio
from testbed.namespace import IPS, Namespace
from testbed.servers import GatewayProcess, Prosody
from testbed.sip_ua import SipUserAgent
from tests.interop.test_sip_kamailio import GW, KAMAILIO_PORT, PHONE, explain, gateway
from tests.support import linphone

USERS = ("carol", "erin", "grace", "hank", "ivy", "olga")
ROUNDS = 1000


@pytest.fixture(scope="module")
def prosody(ns: Namespace, pki) -> Iterator[Prosody]:
    server = Prosody(ns, pki, secure_auth=False, users=USERS).start()
    try:
        yield server
    finally:
        server.stop()


def start_kamailio(ns: Namespace, **options) -> Kamailio:
    workdir = ns.workdir / "kamailio-presence"
    workdir.mkdir(exist_ok=True)
    return Kamailio(workdir, domain="gw.example", host=GW, port=KAMAILIO_PORT,
                    gateway=(GW, 5062), prefix=ns.exec, **options).start()


def run(ns: Namespace, gw: GatewayProcess, sip: Kamailio, prosody: Prosody, scenario,
        timeout: float = 90) -> None:
    try:
        run_in_namespace(ns.name, scenario, timeout=timeout)
    except BaseException as exc:
        raise AssertionError(f"{exc!r}{explain(gw, sip)}\n--- prosody (tail) ---\n"
                             f"{prosody.log[-2500:]}") from exc
    finally:
        gw.stop()
        sip.stop()


async def phone(name: str, *, register: bool = True, **options) -> SipUserAgent:
    ua = await SipUserAgent(name, "gw.example", (GW, KAMAILIO_PORT), host=PHONE,
                            **options).start()
    if register:
        assert (await ua.register()).status == 200
    return ua


def state(notify) -> str:
    return (notify.get("subscription-state") or "").split(";")[0]


def note(notify) -> str:
    return parse_pidf(notify.body).note if notify.body else ""


async def refusing(jid: str) -> tuple[XmppUser, list[float]]:
    """An XMPP user who denies every subscription request (``unsubscribed``); the list
    gets the monotonic time of each denial."""
    user = await XmppUser(jid, IPS["a.example"]).start()
    user.client.auto_authorize = False  # slixmpp answers 'unsubscribed' too
    denied: list[float] = []

    def deny(request) -> None:
        denied.append(time.monotonic())
        user.client.send_presence(pto=request["from"].bare, ptype="unsubscribed")

    user.client.add_event_handler("presence_subscribe", deny)
    return user, denied


async def watching(ua: SipUserAgent, contact: str) -> None:
    """``ua`` subscribes to XMPP ``contact`` (whose client approves) and sees it online."""
    answer = await ua.subscribe(f"sip:{contact}")
    assert answer.status == 200, answer  # RFC 6665 §4.2.1.1
    await ua.notify_where(lambda n: state(n) == "active" and n.body and
                          parse_pidf(n.body).available, timeout=15)


def test_blocked_or_undirected_presence_never_reaches_a_phone(
        ns: Namespace, pki, prosody: Prosody) -> None:
    """carol (Prosody) blocks bob (XEP-0191, mod_blocklist), then sends directed presence
    to alice only: bob's phone never shows what was not sent to bob, neither in the
    NOTIFYs it gets nor after it refreshes its subscription; alice's phone shows it all."""
    sip = start_kamailio(ns)
    gw = gateway(ns, pki, "federated")

    async def scenario() -> None:
        alice, bob = await phone("sipalice"), await phone("sipbob")
        carol = await XmppUser("carol@a.example", IPS["a.example"]).start()
        carol.client.register_plugin("xep_0191")
        try:
            await watching(alice, "carol@a.example")
            await watching(bob, "carol@a.example")
            await carol.client.plugin["xep_0191"].block(["sipbob@gw.example"])
            carol.client.send_presence(pshow="away", pstatus="secret plans")
            await alice.notify_where(lambda n: note(n) == "secret plans")
            carol.client.send_presence(pto="sipalice@gw.example", pstatus="just for alice")
            await alice.notify_where(lambda n: note(n) == "just for alice")
            assert (await bob.subscribe("sip:carol@a.example")).status == 200  # refresh
            refreshed = await bob.notify_where(lambda n: state(n) == "active")
            await asyncio.sleep(0.5)
            seen = [refreshed]
            while not bob.notifies.empty():
                seen.append(bob.notifies.get_nowait())
            leaked = [note(n) for n in seen if note(n) in ("secret plans", "just for alice")]
            assert not leaked, leaked
            # A second resource of carol's: one PIDF tuple each, the most available first.
            second = await XmppUser("carol@a.example/phone", IPS["a.example"]).start()
            try:
                second.client.send_presence(pshow="chat", pstatus="carol on her phone")
                both = await alice.notify_where(lambda n: b"carol on her phone" in n.body)
                assert both.body.count(b"<basic>open</basic>") == 2, both.body
                assert note(both) == "carol on her phone"  # the chattier one leads
            finally:
                await second.stop()
        finally:
            await carol.stop()
            await alice.close()
            await bob.close()

    run(ns, gw, sip, prosody, scenario)


def test_a_refused_subscription_ends_the_phone_dialog_within_a_second(
        ns: Namespace, pki, prosody: Prosody) -> None:
    """erin denies the phone's request (unsubscribed); a request to a domain the gateway
    does not federate with is refused by its contact rules (not-allowed): either way the
    phone's dialog ends with 'terminated;reason=rejected' within a second."""
    sip = start_kamailio(ns)
    gw = gateway(ns, pki, "federated")

    async def scenario() -> None:
        dave = await phone("sipdave")
        erin, denied = await refusing("erin@a.example")
        try:
            assert (await dave.subscribe("sip:erin@a.example")).status == 200
            final = await dave.notify_where(lambda n: state(n) == "terminated", timeout=15)
            assert final.get("subscription-state") == "terminated;reason=rejected"
            assert denied and time.monotonic() - denied[0] < 1.0
            asked = time.monotonic()
            assert (await dave.subscribe("sip:nobody@b.example")).status == 200
            final = await dave.notify_where(lambda n: state(n) == "terminated", timeout=5)
            assert final.get("subscription-state") == "terminated;reason=rejected"
            assert time.monotonic() - asked < 1.0
        finally:
            await erin.stop()
            await dave.close()

    run(ns, gw, sip, prosody, scenario)
    assert "sip.subscription_refused" in gw.log


def test_an_unregistered_sip_user_is_seen_once_it_registers(
        ns: Namespace, pki, prosody: Prosody) -> None:
    """Phones as their own presence agents: ivy subscribes to sipjack, who is not
    registered (Kamailio: 480). Her roster keeps the request, sipjack is shown
    unavailable, and once the phone registers she sees it online without asking again."""
    sip = start_kamailio(ns, presence_server=False)
    gw = gateway(ns, pki, "federated")

    async def scenario() -> None:
        ivy = await XmppUser("ivy@a.example", IPS["a.example"]).start()
        jack = await phone("sipjack", register=False)
        jack.presence_agent = True
        jack.presence_state = ("open", "jack is here")
        try:
            ivy.client.send_presence(pto="sipjack@gw.example", ptype="subscribe")
            await ivy.presence_where(lambda p: p["from"] == "sipjack@gw.example/sip"
                                     and p["type"] == "unavailable")
            await asyncio.sleep(0.5)
            item = ivy.client.client_roster["sipjack@gw.example"]
            assert item["pending_out"], dict(item)  # the request is still standing
            assert (await jack.register()).status == 200
            online = await ivy.presence_where(
                lambda p: p["from"] == "sipjack@gw.example/sip" and p["type"] == "available",
                timeout=15)
            assert online["status"] == "jack is here"
            assert ivy.client.client_roster["sipjack@gw.example"]["subscription"] in (
                "to", "both")
        finally:
            await ivy.stop()
            await jack.close()

    run(ns, gw, sip, prosody, scenario)
    assert "sip.subscribe_deferred" in gw.log and "sip.subscribe_failed" not in gw.log


def test_a_sip_user_with_two_devices_is_one_xmpp_resource(
        ns: Namespace, pki, prosody: Prosody) -> None:
    """sipmia has a desk phone and a softphone, each publishing its own state; Kamailio
    notifies the gateway of both tuples in one document, and hank sees one resource
    (``/sip``), available with the open device's note (docs/sip.md, Aggregation)."""
    sip = start_kamailio(ns)
    gw = gateway(ns, pki, "federated")

    async def scenario() -> None:
        desk, soft = await phone("sipmia"), await phone("sipmia")
        hank = await XmppUser("hank@a.example", IPS["a.example"]).start()
        try:
            assert (await desk.publish("closed", note="desk phone off")).status == 200
            assert (await soft.publish("open", note="on the softphone")).status == 200
            hank.client.send_presence(pto="sipmia@gw.example", ptype="subscribe")
            got = []
            try:
                seen = await hank.presence_where(
                    lambda p: got.append(p) or (p["from"].startswith("sipmia@gw.example/")
                                                and p["type"] == "available"))
            except TimeoutError:
                raise AssertionError(f"hank got {got}") from None
            assert (seen["from"], seen["status"]) == ("sipmia@gw.example/sip",
                                                      "on the softphone")
        finally:
            await hank.stop()
            await desk.close()
            await soft.close()

    run(ns, gw, sip, prosody, scenario)


@pytest.mark.parametrize("how", ["crash", "graceful"])
def test_after_a_restart_each_side_sees_the_other_within_two_seconds(
        ns: Namespace, pki, prosody: Prosody, how: str) -> None:
    """The gateway restarts (killed and started again by its supervisor, or stopped and
    started) while frank (phone) and grace (Prosody) watch each other and nobody changes
    state: within 2 s of its return the phone has a NOTIFY with grace's presence (the
    gateway resumes its dialog and probes her) and grace has frank's (the gateway
    subscribes again). The phone behaves as RFC 6665 §4.1.3 asks: told 'deactivated', it
    subscribes again at once."""
    sip = start_kamailio(ns)
    gw = gateway(ns, pki, "federated")

    async def scenario() -> None:
        frank = await phone("sipfrank")
        assert (await frank.publish("open", note="frank at his desk")).status == 200
        grace = await XmppUser("grace@a.example", IPS["a.example"]).start()
        loop = asyncio.get_running_loop()
        try:
            grace.client.send_presence(pstatus="grace in the lab")
            await watching(frank, "grace@a.example")
            grace.client.send_presence(pto="sipfrank@gw.example", ptype="subscribe")
            await grace.presence_where(lambda p: p["from"] == "sipfrank@gw.example/sip"
                                       and p["status"] == "frank at his desk")
            await asyncio.sleep(0.5)
            await frank.drain()
            while not grace.presences.empty():
                grace.presences.get_nowait()
            await loop.run_in_executor(None, lambda: gw.restart(crash=how == "crash"))
            back = time.monotonic()
            again: list[asyncio.Future[object]] = []

            async def phone_sees_grace() -> float:
                while True:
                    notify = await frank.notifies.get()
                    if notify.get("subscription-state") == "terminated;reason=deactivated":
                        frank.dialogs.pop("sip:grace@a.example", None)
                        again.append(asyncio.ensure_future(
                            frank.subscribe("sip:grace@a.example")))
                    elif state(notify) == "active" and note(notify) == "grace in the lab":
                        return time.monotonic() - back

            async def grace_sees_frank() -> float:
                await grace.presence_where(lambda p: p["from"] == "sipfrank@gw.example/sip"
                                           and p["status"] == "frank at his desk")
                return time.monotonic() - back

            delays = await asyncio.wait_for(
                asyncio.gather(phone_sees_grace(), grace_sees_frank()), 10)
            assert max(delays) < 2.0, delays
        finally:
            await grace.stop()
            await frank.close()

    run(ns, gw, sip, prosody, scenario)


def test_a_phone_switching_off_leaves_the_roster_authorization(
        ns: Namespace, pki, prosody: Prosody) -> None:
    """gina's phone unsubscribes (Expires: 0) as phones do when switched off: hank's
    roster still has gina subscribed to his presence (RFC 6121 §3.3 is for removing a
    contact, not for a device going away)."""
    sip = start_kamailio(ns)
    gw = gateway(ns, pki, "federated")

    async def scenario() -> None:
        gina = await phone("sipgina")
        hank = await XmppUser("hank@a.example", IPS["a.example"]).start()
        try:
            await watching(gina, "hank@a.example")
            assert (await gina.subscribe("sip:hank@a.example", expires=0)).status == 200
            await gina.notify_where(lambda n: state(n) == "terminated")
            await asyncio.sleep(1.0)
            await hank.client.get_roster()
            item = hank.client.client_roster["sipgina@gw.example"]
            assert item["subscription"] in ("from", "both"), dict(item)
        finally:
            await hank.stop()
            await gina.close()

    run(ns, gw, sip, prosody, scenario)


def subscription_from(ua: SipUserAgent, user: str, contact: str) -> bytes:
    """A phone ``user``'s SUBSCRIBE to XMPP ``contact``, through Kamailio."""
    uri = f"sip:{contact}"
    request = ua._new("SUBSCRIBE", uri, uri)
    request.set("from", f"<sip:{user}@gw.example>;tag={secrets.token_hex(4)}")
    request.add("event", "presence")
    request.add("expires", "600")
    return request.serialize()


def test_presence_changes_a_millisecond_apart_arrive_in_order(
        ns: Namespace, pki, prosody: Prosody) -> None:
    """1,000 times, oli's phone publishes two states 1 ms apart ("first-N" open, then
    "second-N" away); Kamailio notifies the gateway of each (its two workers may relay
    them in either order). Meanwhile other phones subscribe to XMPP contacts, one with
    each first state: their requests wait for a store write in the gateway, the moment a
    later stanza could overtake an earlier one. olga (Prosody) must see every round end
    on its second state, and never an older state after a newer one."""
    sip = start_kamailio(ns)
    gw = gateway(ns, pki, "federated")

    async def scenario() -> None:
        oli = await phone("sipoli")
        others = await phone("sipother", register=False)
        assert (await oli.publish("open", note="start")).status == 200
        olga = await XmppUser("olga@a.example", IPS["a.example"]).start()
        try:
            olga.client.send_presence(pto="sipoli@gw.example", ptype="subscribe")
            await olga.presence_where(lambda p: p["from"] == "sipoli@gw.example/sip"
                                      and p["status"] == "start")
            seen: list[str] = []
            for index in range(ROUNDS):
                others._write(subscription_from(others, f"p{index}", f"c{index}@a.example"))
                assert (await oli.publish("open", note=f"first-{index}")).status == 200
                await asyncio.sleep(0.001)
                assert (await oli.publish("open", note=f"second-{index}",
                                          activity="away")).status == 200
                try:
                    async with asyncio.timeout(10):
                        while not seen or seen[-1] != f"second-{index}":
                            found = await olga.presence_where(
                                lambda p: p["from"] == "sipoli@gw.example/sip")
                            seen.append(found["status"])
                except TimeoutError:
                    raise AssertionError(f"round {index}: olga's last presences were "
                                         f"{seen[-6:]}") from None
            await asyncio.sleep(0.3)
            while not olga.presences.empty():
                seen.append(olga.presences.get_nowait()["status"])
            order = [(int(s.split("-")[1]), s.startswith("second")) for s in seen
                     if s.startswith(("first-", "second-"))]
            backwards = [(a, b) for a, b in itertools.pairwise(order) if b < a]
            assert not backwards, backwards[:5]
            assert order[-1] == (ROUNDS - 1, True)
        finally:
            await olga.stop()
            await oli.close()
            await others.close()

    run(ns, gw, sip, prosody, scenario, timeout=150)


def test_linphone_sees_only_what_was_sent_to_it_and_learns_of_a_refusal(
        ns: Namespace, pki, prosody: Prosody) -> None:
    """Linphone (linphonec, Debian's linphone-cli) as a SIP user's phone, adding XMPP
    contacts as friends (it subscribes to their presence): carol has sent presence to
    alice only, and none of it appears in Linphone's NOTIFYs when Linphone then watches
    her (only what carol's server sends Linphone's user does); erin refuses Linphone's
    request, and its subscription is terminated with reason rejected within a second.
    Linphone's Contact is a GRUU (RFC 5627), so the NOTIFYs reach it through Kamailio's
    registrar (deploy/kamailio/kamailio.cfg resolves GRUUs of in-dialog requests)."""
    if not linphone.available():
        pytest.fail("linphonec is not installed: run `make debs` (make test does)")
    sip = start_kamailio(ns)
    gw = gateway(ns, pki, "federated")
    lin = linphone.Linphonec(ns.workdir / "linphone-presence", user="siplin",
                             domain="gw.example", proxy=(GW, KAMAILIO_PORT), port=5083,
                             cpim=False, prefix=ns.exec)

    async def scenario() -> None:
        alice = await phone("sipalice")
        carol = await XmppUser("carol@a.example", IPS["a.example"]).start()
        erin, denied = await refusing("erin@a.example")
        try:
            carol.client.send_presence(pstatus="carol for everyone")
            await watching(alice, "carol@a.example")
            carol.client.send_presence(pto="sipalice@gw.example", pshow="dnd",
                                       pstatus="carol for alice only")
            await alice.notify_where(lambda n: note(n) == "carol for alice only")
            await asyncio.to_thread(lin.command, 'friend add "carol" sip:carol@a.example')
            await asyncio.to_thread(lin.wait_log, r"carol for everyone", 15)
            await asyncio.sleep(1.0)
            assert "carol for alice only" not in lin.log()

            await asyncio.to_thread(lin.command, 'friend add "erin" sip:erin@a.example')
            await asyncio.to_thread(
                lin.wait_log, r"Subscription-State: terminated;reason=rejected", 15)
            seen = time.monotonic()
            assert denied and seen - denied[0] < 1.0, seen - denied[0]
        finally:
            await carol.stop()
            await erin.stop()
            await alice.close()

    try:
        lin.start()
        run_in_namespace(ns.name, scenario, timeout=60)
    except BaseException as exc:
        raise AssertionError(f"linphone: {exc!r}{explain(gw, sip)}\n--- linphone log (tail)"
                             f" ---\n{lin.log()[-3000:]}") from exc
    finally:
        lin.stop()
        gw.stop()
        sip.stop()
