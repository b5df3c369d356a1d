"""Presence that tells each watcher the truth, over real sockets (RFC 8048, RFC 6665,
RFC 6121): a SIP user agent stands in the proxy's place and plays both the phones and the
presence server, as in test_sip_backend.py; the backend's sink records what it hands to
the router (or a whole gateway routes it, where the router's part matters).

Each test names the rule it checks; tests/interop/test_sip_presence.py checks the same
rules with Prosody and Kamailio.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from xml.etree.ElementTree import Element, SubElement

import pytest

import gateway.sip.watching as watching
from gateway.sip.backend import SipBackend
from gateway.sip.development import presence
from gateway.sip.message import SipRequest
from gateway.sip.pidf import PresenceState, parse_pidf
from gateway.store import AsyncAuthorizationStore, SqliteAuthorizationStore
from testbed.sip_ua import SipUserAgent, pidf
from tests.integration import test_sip_backend as base
from tests.integration.test_sip_backend import (
    SIP_DOMAIN,
    Recorder,
    answer_subscribe,
    notify_for,
    watch_established,
)

STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
CAROL = "carol@xmpp.example"
backend = base.backend  # the fixtures: a SipBackend alone, and a whole gateway
gateway = base.gateway


def subscribe_as(ua: SipUserAgent, watcher: str, contact: str = CAROL, *,
                 expires: int = 600) -> SipRequest:
    """An initial SUBSCRIBE from phone ``watcher`` (local part) relayed by the proxy."""
    request = ua._new("SUBSCRIBE", f"sip:{contact}", f"sip:{contact}")
    request.set("from", f"<sip:{watcher}@{SIP_DOMAIN}>;tag={secrets.token_hex(4)}")
    request.add("event", "presence")
    request.add("accept", "application/pidf+xml")
    request.add("expires", str(expires))
    return request


def refresh_of(ua: SipUserAgent, initial: SipRequest, answer, *, cseq: int,
               expires: int = 600) -> SipRequest:
    """The in-dialog refresh of ``initial`` (answered ``answer``)."""
    target = (answer.get("contact") or "").strip("<>")
    request = ua._new("SUBSCRIBE", target, initial.to.uri, to_tag=answer.to.tag,
                      from_tag=initial.from_.tag, call_id=initial.call_id, cseq=cseq)
    request.set("from", str(initial.from_))
    request.add("event", "presence")
    request.add("expires", str(expires))
    return request


def state_of(notify: SipRequest) -> str:
    return notify.get("subscription-state") or ""


async def notify_to(ua: SipUserAgent, watcher: str, *, timeout: float = 5.0) -> SipRequest:
    """The next NOTIFY addressed to phone ``watcher`` (local part)."""
    return await ua.notify_where(
        lambda n: n.to.uri == f"sip:{watcher}@{SIP_DOMAIN}", timeout=timeout)


async def quiet(ua: SipUserAgent, watcher: str, seconds: float = 0.3) -> None:
    """No NOTIFY reaches ``watcher`` for ``seconds``."""
    with pytest.raises(TimeoutError):
        await notify_to(ua, watcher, timeout=seconds)


def stanza_types(recorder: Recorder) -> list[tuple[str | None, str | None, str | None]]:
    found = []
    while not recorder.queue.empty():
        stanza = recorder.queue.get_nowait()
        found.append((stanza.get("type"), stanza.get("from"), stanza.get("to")))
    return found


async def approved_watch(sip: SipBackend, ua: SipUserAgent, recorder: Recorder,
                         watcher: str) -> tuple[SipRequest, object]:
    """Phone ``watcher`` subscribes to carol, who approves; returns the SUBSCRIBE and its
    answer, with the pending and active NOTIFYs consumed."""
    initial = subscribe_as(ua, watcher)
    answer = await ua.request(initial)
    assert answer.status == 200, answer  # RFC 6665 §4.2.1.1
    assert state_of(await notify_to(ua, watcher)).startswith("pending")
    assert (await recorder.next()).get("type") == "subscribe"
    await sip.deliver(presence(CAROL, f"{watcher}@{SIP_DOMAIN}", "subscribed"))
    assert state_of(await notify_to(ua, watcher)).startswith("active")
    return initial, answer


def carol(to: str, *, resource: str = "laptop", kind: str | None = None, show: str = "",
          status: str = "") -> Element:
    stanza = presence(f"{CAROL}/{resource}", f"{to}@{SIP_DOMAIN}", kind)
    if show:
        SubElement(stanza, "{jabber:server}show").text = show
    if status:
        SubElement(stanza, "{jabber:server}status").text = status
    return stanza


def presence_error(to: str, condition: str, error_type: str) -> Element:
    error = presence(CAROL, f"{to}@{SIP_DOMAIN}", "error")
    SubElement(SubElement(error, "{jabber:server}error", {"type": error_type}),
               f"{{{STANZAS}}}{condition}")
    return error


# ---------------------------------------------------------------------- per watcher


async def test_presence_sent_to_one_watcher_never_reaches_another(backend) -> None:
    """RFC 6121 §4.6 (directed presence), XEP-0191/0016 (blocking, privacy lists): the
    contact's server decides per recipient, so what it sent to alice is alice's alone,
    before and after bob's refresh."""
    sip, ua, recorder = backend
    await approved_watch(sip, ua, recorder, "alice")
    bob_subscribe, bob_answer = await approved_watch(sip, ua, recorder, "bob")
    await sip.deliver(carol("alice", status="for alice only"))
    to_alice = await notify_to(ua, "alice")
    assert parse_pidf(to_alice.body) == PresenceState(True, "", "for alice only")
    await quiet(ua, "bob")
    refreshed = await ua.request(refresh_of(ua, bob_subscribe, bob_answer, cseq=2))
    assert refreshed.status == 200
    to_bob = await notify_to(ua, "bob")
    assert state_of(to_bob).startswith("active")
    assert parse_pidf(to_bob.body) == PresenceState(False)  # nothing was sent to bob
    # What carol sends bob is bob's, and alice's view does not move.
    await sip.deliver(carol("bob", show="away", status="for bob"))
    assert parse_pidf((await notify_to(ua, "bob")).body) == PresenceState(True, "away",
                                                                          "for bob")
    await quiet(ua, "alice")


# ---------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("refusal", "state"), [
    ("unsubscribed", "terminated;reason=rejected"),
    (("not-allowed", "cancel"), "terminated;reason=rejected"),
    (("forbidden", "auth"), "terminated;reason=rejected"),
    (("remote-server-not-found", "cancel"), "terminated;reason=noresource"),
    (("item-not-found", "cancel"), "terminated;reason=noresource"),
    (("remote-server-timeout", "wait"), "terminated;reason=giveup;retry-after=60"),
])
async def test_refusal_from_xmpp_ends_the_phone_dialog(backend, refusal, state: str) -> None:
    """RFC 6665 §4.2.2 reasons: the phone learns the outcome of its request at once."""
    sip, ua, recorder = backend
    initial = subscribe_as(ua, "alice")
    assert (await ua.request(initial)).status == 200
    assert state_of(await notify_to(ua, "alice")).startswith("pending")
    await recorder.next()
    started = time.monotonic()
    if refusal == "unsubscribed":
        await sip.deliver(presence(CAROL, f"alice@{SIP_DOMAIN}", "unsubscribed"))
    else:
        await sip.deliver(presence_error("alice", *refusal))
    final = await notify_to(ua, "alice", timeout=1.0)
    assert state_of(final) == state
    assert time.monotonic() - started < 1.0
    assert not sip.notifiers
    # The dialog is gone: a refresh is told so (RFC 6665 §4.2.1.2).
    answer = await ua.request(refresh_of(ua, initial, final_answer(final), cseq=2))
    assert answer.status == 481


def final_answer(notify: SipRequest):
    """What a refresh needs of the notifier's side (its tag and Contact), from a NOTIFY."""
    class Answer:
        to = notify.from_

        def get(self, name: str) -> str | None:
            return notify.get(name)

    return Answer()


async def test_contact_rules_refusal_reaches_the_phone(gateway) -> None:
    """The router refuses the subscription (an unlisted domain, RFC 7247 §8: not-allowed):
    the phone's dialog ends with 'rejected' within a second instead of staying pending."""
    gw, ua = gateway
    assert (await ua.subscribe("sip:bob@unlisted.example")).status == 200
    assert state_of(await ua.next_notify()).startswith("pending")
    final = await ua.next_notify(timeout=1.0)
    assert state_of(final) == "terminated;reason=rejected"
    assert gw.status()["backend"]["notifiers"] == 0


async def test_an_approved_contact_that_cannot_be_reached_is_shown_unavailable(
        backend) -> None:
    """An error after approval (the contact's server went away, a probe bounced) is not a
    refusal: the dialog stays, the contact shows offline until heard from again."""
    sip, ua, recorder = backend
    await approved_watch(sip, ua, recorder, "alice")
    await sip.deliver(carol("alice"))
    assert parse_pidf((await notify_to(ua, "alice")).body).available
    await sip.deliver(presence_error("alice", "remote-server-timeout", "wait"))
    notify = await notify_to(ua, "alice")
    assert state_of(notify).startswith("active") and not parse_pidf(notify.body).available
    await sip.deliver(carol("alice", show="chat"))
    assert parse_pidf((await notify_to(ua, "alice")).body).available


# ---------------------------------------------------------------------- temporary SIP failures


async def test_unregistered_sip_user_keeps_the_xmpp_subscription(
        backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """480 (RFC 7247 §8.2: recipient-unavailable, type wait) is temporary: no
    'unsubscribed', the user is shown unavailable, the gateway subscribes again and the
    contact sees the user once it registers, without asking again."""
    monkeypatch.setattr(watching, "RETRY_FIRST", 0.2)
    sip, ua, recorder = backend
    await sip.deliver(presence("bob@xmpp.example", f"alice@{SIP_DOMAIN}", "subscribe"))
    first, _ = await answer_subscribe(ua, 480)
    shown = await recorder.next()
    assert (shown.get("type"), shown.get("from")) == ("unavailable", f"alice@{SIP_DOMAIN}/sip")
    again, tag = await answer_subscribe(ua, 503)  # still nobody: backoff goes on
    assert again.call_id != first.call_id and again.to.tag == ""
    third, tag = await answer_subscribe(ua, 200)  # the phone registered meanwhile
    await ua.request(notify_for(ua, third, tag, "active;expires=600", pidf(f"alice@{SIP_DOMAIN}")))
    assert (await recorder.next()).get("type") == "subscribed"
    assert (await recorder.next()).get("type") is None  # available
    assert ("bob@xmpp.example", f"alice@{SIP_DOMAIN}") in sip.watches
    assert recorder.queue.empty()  # never 'unsubscribed'


async def test_presence_server_giving_up_is_retried_later(
        backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """terminated;reason=giveup with retry-after (RFC 6665 §4.1.3): kept, unavailable,
    subscribed again after retry-after; a 403 then is final: 'unsubscribed'."""
    monkeypatch.setattr(watching, "RETRY_FIRST", 0.2)
    sip, ua, recorder = backend
    subscribe, tag = await watch_established(sip, ua, recorder)
    await ua.request(notify_for(ua, subscribe, tag, "terminated;reason=giveup;retry-after=1",
                                cseq=2))
    assert (await recorder.next()).get("type") == "unavailable"
    started = time.monotonic()
    again, _ = await answer_subscribe(ua, 403)
    assert time.monotonic() - started >= 0.8  # retry-after was honoured
    assert again.call_id != subscribe.call_id
    assert (await recorder.next()).get("type") == "unsubscribed"
    assert not sip.watches


# ---------------------------------------------------------------------- Expires: 0


async def test_phone_switching_off_leaves_the_xmpp_subscription(backend) -> None:
    """SUBSCRIBE with Expires: 0 ends the dialog (RFC 6665 §4.1.2.3); it is not an XMPP
    'unsubscribe' (RFC 6121 §3.3), which would remove the user from the contact's roster."""
    sip, ua, recorder = backend
    initial, answer = await approved_watch(sip, ua, recorder, "alice")
    ended = await ua.request(refresh_of(ua, initial, answer, cseq=2, expires=0))
    assert ended.status == 200
    assert state_of(await notify_to(ua, "alice")) == "terminated;reason=timeout"
    await asyncio.sleep(0.3)
    assert stanza_types(recorder) == []
    # The phone comes back: the contact's server approves again by itself (RFC 6121
    # §3.1.3) and need not repeat its presence: the gateway asks with a probe (§4.3).
    assert (await ua.request(subscribe_as(ua, "alice"))).status == 200
    assert state_of(await notify_to(ua, "alice")).startswith("pending")
    assert (await recorder.next()).get("type") == "subscribe"
    await sip.deliver(presence(CAROL, f"alice@{SIP_DOMAIN}", "subscribed"))
    assert state_of(await notify_to(ua, "alice")).startswith("active")
    probe = await recorder.next(timeout=3)
    assert (probe.get("type"), probe.get("from"), probe.get("to")) == (
        "probe", f"alice@{SIP_DOMAIN}", CAROL)


# ---------------------------------------------------------------------- probes


async def test_approval_without_presence_is_followed_by_a_probe(backend) -> None:
    """A server that approves again what it approved before need not send presence: when
    none follows the approval, the gateway probes (RFC 6121 §4.3) and the answer reaches
    the phone."""
    sip, ua, recorder = backend
    await approved_watch(sip, ua, recorder, "alice")
    probe = await recorder.next(timeout=3)
    assert (probe.get("type"), probe.get("to")) == ("probe", CAROL)
    await sip.deliver(carol("alice", show="dnd", status="in a meeting"))
    assert parse_pidf((await notify_to(ua, "alice")).body) == PresenceState(
        True, "dnd", "in a meeting")


async def test_probe_from_xmpp_is_answered_only_for_authorized_contacts(backend) -> None:
    """RFC 6121 §4.3.2: a probe from a contact the SIP user authorized gets the current
    state, without a new SUBSCRIBE; a probe from anyone else gets nothing, whatever the
    presence server says (here: 403)."""
    sip, ua, recorder = backend
    await watch_established(sip, ua, recorder)
    await sip.deliver(presence("bob@xmpp.example", f"alice@{SIP_DOMAIN}", "probe"))
    answer = await recorder.next()
    assert (answer.get("from"), answer.get("type")) == (f"alice@{SIP_DOMAIN}/sip", None)
    assert ua.requests.empty()
    await sip.deliver(presence("mallory@xmpp.example", f"alice@{SIP_DOMAIN}", "probe"))
    asked, _ = await answer_subscribe(ua, 403)
    assert asked.from_.uri == "sip:mallory@xmpp.example"
    await asyncio.sleep(0.3)
    assert stanza_types(recorder) == []  # not even 'unsubscribed'


async def test_restart_resumes_phone_subscriptions_and_probes(tmp_path: Path) -> None:
    """The phones' dialogs are stored: a restarted gateway goes on notifying them in the
    same dialog (same Call-ID and tags, CSeq above anything sent before, its own Contact)
    after asking the contacts for their presence (probes), without the phones doing
    anything."""
    store = AsyncAuthorizationStore(SqliteAuthorizationStore(tmp_path / "gw.sqlite3"))
    ua = await SipUserAgent("proxy", SIP_DOMAIN, ("127.0.0.1", 9)).start()
    recorder = Recorder()
    first = SipBackend([SIP_DOMAIN], proxy=("127.0.0.1", ua.port), local=("127.0.0.1", 0))
    await first.start(recorder, watches=store, notifiers=store)
    ua.proxy = first.transport.local
    try:
        await approved_watch(first, ua, recorder, "alice")
        await first.deliver(carol("alice", status="before"))
        before = await notify_to(ua, "alice")
        await first.stop(grace=1.0)
        await quiet(ua, "alice")  # not deactivated: the dialog lives on
        [stored] = await store.list_notifiers()
        assert stored.approved and stored.cseq > before.cseq[0]

        second = SipBackend([SIP_DOMAIN], proxy=("127.0.0.1", ua.port), local=("127.0.0.1", 0))
        await stanza_drain(recorder)
        await second.start(recorder, watches=store, notifiers=store)
        ua.proxy = second.transport.local
        try:
            probe = await recorder.next(timeout=2)
            assert (probe.get("type"), probe.get("from"), probe.get("to")) == (
                "probe", f"alice@{SIP_DOMAIN}", CAROL)
            await second.deliver(carol("alice", status="after"))
            after = await notify_to(ua, "alice")
            assert (after.call_id, after.from_.tag, after.to.tag) == (
                before.call_id, before.from_.tag, before.to.tag)
            assert after.cseq[0] > before.cseq[0]
            assert f":{second.transport.local[1]}" in (after.get("contact") or "")
            assert parse_pidf(after.body) == PresenceState(True, "", "after")
        finally:
            await second.stop(grace=0.5)
    finally:
        await ua.close()
        await store.aclose()


async def stanza_drain(recorder: Recorder) -> None:
    while not recorder.queue.empty():
        recorder.queue.get_nowait()


# ---------------------------------------------------------------------- order


async def test_notifies_of_a_dialog_go_one_at_a_time_with_the_latest_state(backend) -> None:
    """RFC 6665 §4.2.2: the next NOTIFY only after the previous one's final answer, and
    then with the state as it is (three changes meanwhile make one NOTIFY)."""
    sip, ua, recorder = backend
    await approved_watch(sip, ua, recorder, "alice")
    del ua.answers["NOTIFY"]  # the phone (or the proxy) is slow to answer
    await sip.deliver(carol("alice", status="one"))
    first = await asyncio.wait_for(ua.requests.get(), 5)
    assert parse_pidf(first.body).note == "one"
    for note in ("two", "three", "four"):
        await sip.deliver(carol("alice", status=note))
    await asyncio.sleep(0.3)
    assert ua.requests.empty()  # nothing while the first is unanswered
    ua.reply(first, 200)
    latest = await asyncio.wait_for(ua.requests.get(), 5)
    assert parse_pidf(latest.body).note == "four"
    assert latest.cseq[0] == first.cseq[0] + 1
    ua.reply(latest, 200)
    await asyncio.sleep(0.3)
    assert ua.requests.empty()


async def test_a_notify_overtaken_by_a_newer_one_is_refused(backend) -> None:
    """RFC 3261 §12.2.2: a NOTIFY with a lower CSeq than one already taken is out of
    order (a proxy's workers relayed them in parallel) and answered 500; the XMPP watcher
    keeps the newer state."""
    sip, ua, recorder = backend
    subscribe, tag = await watch_established(sip, ua, recorder)
    newer = await ua.request(notify_for(ua, subscribe, tag, "active;expires=600",
                                        pidf(f"alice@{SIP_DOMAIN}", "closed"), cseq=3))
    assert newer.status == 200
    assert (await recorder.next()).get("type") == "unavailable"
    older = await ua.request(notify_for(ua, subscribe, tag, "active;expires=600",
                                        pidf(f"alice@{SIP_DOMAIN}", "open"), cseq=2))
    assert older.status == 500
    await asyncio.sleep(0.2)
    assert recorder.queue.empty()


# ---------------------------------------------------------------------- failover


async def test_a_surviving_node_resumes_a_dead_nodes_phone_subscriptions(
        tmp_path: Path) -> None:
    """Two nodes on one store: the one holding a phone's subscription dies without a word;
    the survivor claims it after the lease and the contact's next change reaches the phone
    in the same dialog."""
    path = tmp_path / "cluster.sqlite3"
    stores = [AsyncAuthorizationStore(SqliteAuthorizationStore(path, node_id=node))
              for node in ("a", "b")]
    ua = await SipUserAgent("proxy", SIP_DOMAIN, ("127.0.0.1", 9)).start()
    recorder = Recorder()
    nodes = []
    for store in stores:
        node = SipBackend([SIP_DOMAIN], proxy=("127.0.0.1", ua.port), local=("127.0.0.1", 0))
        await node.start(recorder, watches=store, notifiers=store)
        nodes.append(node)
    dead, survivor = nodes
    ua.proxy = dead.transport.local
    try:
        await approved_watch(dead, ua, recorder, "alice")
        await dead.deliver(carol("alice", status="on a"))
        before = await notify_to(ua, "alice")
        async with asyncio.timeout(5):  # the approval is stored too (written behind)
            while not [r for r in await stores[0].list_notifiers() if r.approved]:
                await asyncio.sleep(0.02)
        await dead.endpoint.close()  # SIGKILL: no NOTIFY, no store write
        await stanza_drain(recorder)
        claimed = await stores[1].claim_notifiers(lease=0.1)
        assert [record.call_id for record in claimed] == [before.call_id]
        assert survivor.take_over_notifiers(claimed) == 1
        assert (await recorder.next()).get("type") == "probe"
        await survivor.deliver(carol("alice", status="on b"))
        after = await notify_to(ua, "alice")
        assert (after.call_id, after.to.tag) == (before.call_id, before.to.tag)
        assert after.cseq[0] > before.cseq[0]
        assert parse_pidf(after.body).note == "on b"
    finally:
        await survivor.stop(grace=0.5)
        await ua.close()
        for store in stores:
            await store.aclose()


@pytest.fixture
async def storing_backend(tmp_path: Path) -> AsyncIterator[tuple[SipBackend, SipUserAgent,
                                                                  Recorder]]:
    store = AsyncAuthorizationStore(SqliteAuthorizationStore(tmp_path / "gw.sqlite3"))
    ua = await SipUserAgent("proxy", SIP_DOMAIN, ("127.0.0.1", 9)).start()
    sip = SipBackend([SIP_DOMAIN], proxy=("127.0.0.1", ua.port), local=("127.0.0.1", 0))
    recorder = Recorder()
    await sip.start(recorder, watches=store, notifiers=store)
    ua.proxy = sip.transport.local
    try:
        yield sip, ua, recorder
    finally:
        await sip.stop(grace=0.5)
        await ua.close()
        await store.aclose()


async def test_cseq_reservation_moves_ahead_of_what_is_sent(storing_backend) -> None:
    """The stored CSeq stays above every NOTIFY sent (gateway.store.notifiers), written
    once per block rather than per NOTIFY."""
    sip, ua, recorder = storing_backend
    await approved_watch(sip, ua, recorder, "alice")
    highest = 0
    for index in range(120):
        await sip.deliver(carol("alice", status=f"s{index}"))
        highest = (await notify_to(ua, "alice")).cseq[0]
    await sip.notifying.settle()
    [stored] = await sip.notifying.store.list_notifiers()
    assert stored.cseq > highest


async def test_a_refresh_must_come_from_the_dialogs_own_watcher(backend) -> None:
    """RFC 3261 §12.2.2: an in-dialog request belongs to a dialog only when Call-ID, our
    tag *and the remote tag* match; a SUBSCRIBE with alice's Call-ID and our tag but
    bob's From (another tag, another user the proxy authenticated) and bob's Contact is
    no refresh of alice's dialog: 481, and alice's view of carol never goes to bob's
    phone by a target refresh."""
    sip, ua, recorder = backend
    initial, answer = await approved_watch(sip, ua, recorder, "alice")
    await sip.deliver(carol("alice", status="for alice only"))
    assert parse_pidf((await notify_to(ua, "alice")).body).note == "for alice only"
    for user, tag in (("bob", secrets.token_hex(4)), ("alice", secrets.token_hex(4)),
                      ("bob", initial.from_.tag)):
        forged = refresh_of(ua, initial, answer, cseq=5)
        forged.set("from", f"<sip:{user}@{SIP_DOMAIN}>;tag={tag}")
        forged.set("contact", f"<sip:{user}@127.0.0.1:9>")
        assert (await ua.request(forged)).status == 481, (user, tag)
    await quiet(ua, "alice")
    # the real refresh still works, and its NOTIFY goes to alice's own phone
    assert (await ua.request(refresh_of(ua, initial, answer, cseq=6))).status == 200
    assert parse_pidf((await notify_to(ua, "alice")).body).note == "for alice only"
