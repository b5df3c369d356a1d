"""Presence keeps its order end to end (RFC 6120 §10.1; RFC 6665 §4.2.2): two NOTIFYs a
millisecond apart leave the XMPP watcher with the second state.

Gateway B serves b.example with ``sip.backend: sip``, a SIP user agent in its proxy's place
playing the presence server; gateway A (development backend) holds the XMPP watcher
w@a.example, subscribed to alice@b.example. In each round the presence server sends
alice's new state as two NOTIFYs 1 ms apart (open "first-N", then closed "second-N"),
while a phone's SUBSCRIBE to another XMPP contact arrives together with the first one:
that subscription needs a store write before it may leave (the authorization is recorded
first), which is when a stanza could overtake another in the router. The watcher must end
every round with the second state.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from gateway.sip.development import DevelopmentBackend, presence
from gateway.sip.message import SipRequest
from testbed.sip_ua import SipUserAgent, pidf
from tests.integration.test_sip_backend import notify_for
from tests.integration.test_sip_flow import SipPair, sip_pair  # noqa: F401 - fixture

ROUNDS = 1000
ALICE = "alice@b.example"


def phone_subscribe(ua: SipUserAgent, index: int) -> SipRequest:
    contact = f"sip:c{index}@a.example"
    request = ua._new("SUBSCRIBE", contact, contact)
    request.set("from", f"<sip:p{index}@b.example>;tag={secrets.token_hex(4)}")
    request.add("event", "presence")
    request.add("expires", "600")
    return request


async def alice_presence(a: DevelopmentBackend, timeout: float = 10.0) -> tuple[str, str]:
    """The next presence of alice delivered to the XMPP watcher: (type, status)."""
    while True:
        stanza = await a.next_delivered(timeout)
        if stanza.get("from") == f"{ALICE}/sip":
            return (stanza.get("type") or "available",
                    stanza.findtext("{jabber:server}status") or "")


async def test_two_notifies_a_millisecond_apart_keep_their_order(
        sip_pair: SipPair) -> None:  # noqa: F811
    ua = await SipUserAgent("presence", "b.example", ("127.0.0.1", 9)).start()
    try:
        a = await sip_pair.start_a()
        b = await sip_pair.start_b(ua.port, max_in_flight=256)
        ua.proxy = b.backend.transport.local
        watcher = a.backend
        assert isinstance(watcher, DevelopmentBackend)
        a.s2s.send(presence("w@a.example", ALICE, "subscribe"))
        subscribe = await asyncio.wait_for(ua.requests.get(), 10)
        tag = secrets.token_hex(4)
        ua.reply(subscribe, 200, ("Expires", "3600"))
        # ua.reply made up a To tag of its own: the dialog's is the one in our NOTIFYs
        # from now on (RFC 6665 §4.1.2.4 lets the first NOTIFY set it).
        cseq = 1
        await ua.request(notify_for(ua, subscribe, tag, "active;expires=3600",
                                    pidf(ALICE, "open", "initial"), cseq=cseq))
        assert await alice_presence(watcher) == ("available", "initial")
        wrong: list[tuple[int, list[tuple[str, str]]]] = []
        started = time.monotonic()
        for index in range(ROUNDS):
            first = notify_for(ua, subscribe, tag, "active;expires=3600",
                               pidf(ALICE, "open", f"first-{index}"), cseq=cseq + 1)
            second = notify_for(ua, subscribe, tag, "active;expires=3600",
                                pidf(ALICE, "closed", f"second-{index}"), cseq=cseq + 2)
            cseq += 2
            ua._write(phone_subscribe(ua, index).serialize())
            ua._write(first.serialize())
            await asyncio.sleep(0.001)
            ua._write(second.serialize())
            seen: list[tuple[str, str]] = []
            while ("unavailable", f"second-{index}") not in seen:
                seen.append(await alice_presence(watcher))
            if seen[-1] != ("unavailable", f"second-{index}") or \
                    ("available", f"first-{index}") not in seen:
                wrong.append((index, seen))
        elapsed = time.monotonic() - started
        assert not wrong, f"{len(wrong)} of {ROUNDS} rounds out of order, e.g. {wrong[:3]}"
        # the watcher is left with the last state, nothing late arrives after it
        await asyncio.sleep(0.2)
        late = [s for s in watcher._queue if s.get("from") == f"{ALICE}/sip"]
        assert late == [], late
        print(f"{ROUNDS} rounds in {elapsed:.1f} s")
        ua.answers["SUBSCRIBE"] = 200  # B's unsubscribe when it stops
    finally:
        await ua.close()
