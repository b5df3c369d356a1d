"""Faults: every stanza is delivered or bounced with an error
to its sender, and the log says which — DNS timeout and SERVFAIL, a peer that vanishes,
a local backend that is down."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import pytest

from gateway.daemon import Gateway
from gateway.dns.resolver import DnsPythonResolver
from gateway.policy.negotiation import Support
from gateway.sip.development import message
from testbed.dnsmasq import SilentNameserver, servfail_dnsmasq
from tests.integration.test_two_gateways import Pair, _policy, pair, partner  # noqa: F401

OPEN = _policy(Support.OPTIONAL, Support.OPTIONAL, True)
STANZAS = "{urn:ietf:params:xml:ns:xmpp-stanzas}"


def condition(stanza) -> str:
    error = stanza.find("{jabber:server}error")
    assert error is not None, f"not an error: {stanza.attrib}"
    return next(c.tag[len(STANZAS):] for c in error if c.tag.startswith(STANZAS)
                and not c.tag.endswith("}text"))


async def _a_with_resolver(pair: Pair, resolver) -> Gateway:  # noqa: F811
    await pair.start(partner("b.example", OPEN), partner("a.example", OPEN))
    config = pair.a.config
    await pair.a.stop()
    a = Gateway(dataclasses.replace(config), resolver=resolver)
    await a.start()
    pair.gateways["a.example"] = a
    return a


async def test_dns_timeout_bounces_with_remote_server_timeout(pair: Pair, caplog) -> None:  # noqa: F811
    caplog.set_level(logging.INFO, logger="gateway")
    with SilentNameserver() as silent:
        a = await _a_with_resolver(pair, DnsPythonResolver((silent.nameserver,), timeout=0.5))
        await a.backend.inject(message("alice@a.example/pc", "bob@b.example", "hi"))
        bounce = await a.backend.next_delivered(10)
    assert condition(bounce) == "remote-server-timeout"
    assert any("DNS:" in str(getattr(r, "gw_fields", "")) for r in caplog.records)


async def test_dns_servfail_bounces_with_remote_server_not_found(pair: Pair,  # noqa: F811
                                                                 tmp_path: Path) -> None:
    with servfail_dnsmasq(tmp_path / "servfail") as server:
        a = await _a_with_resolver(pair, DnsPythonResolver((server.nameserver,), timeout=2))
        await a.backend.inject(message("alice@a.example/pc", "bob@b.example", "hi"))
        bounce = await a.backend.next_delivered(10)
    assert condition(bounce) == "remote-server-not-found"
    assert "server failure" in (bounce.findtext(f"{{jabber:server}}error/{STANZAS}text") or "")


async def test_peer_vanishing_mid_stanza_loses_nothing(pair: Pair) -> None:  # noqa: F811
    """B disappears (process-like abort of every socket); A's next stanzas either go
    through a fresh session once B is back or bounce — none vanish."""
    await pair.start(partner("b.example", OPEN), partner("a.example", OPEN))
    await pair.a.backend.inject(message("alice@a.example/pc", "bob@b.example", "first"))
    await pair.b.backend.next_delivered(10)
    b_config = pair.b.config
    for conn in list(pair.b.s2s.connections):  # type: ignore[union-attr]
        conn.abort()  # RST, no closing handshake, as if the host died
    await pair.b.stop()
    for index in range(3):
        await pair.a.backend.inject(message("alice@a.example/pc", "bob@b.example", f"m{index}"))
    bounces = [await pair.a.backend.next_delivered(15) for _ in range(3)]
    assert [condition(b) for b in bounces] == ["remote-server-not-found"] * 3
    # B comes back: traffic flows again on a new session.
    b = Gateway(b_config, resolver=DnsPythonResolver(nameservers=(pair.dns,), timeout=2.0))
    await b.start()
    pair.gateways["b.example"] = b
    await pair.a.backend.inject(message("alice@a.example/pc", "bob@b.example", "back"))
    assert (await b.backend.next_delivered(15)).findtext("{jabber:server}body") == "back"


async def test_local_backend_down_answers_the_remote_sender(pair: Pair) -> None:  # noqa: F811
    await pair.start(partner("b.example", OPEN), partner("a.example", OPEN))
    await pair.b.backend.stop()  # the SIP side is gone
    await pair.a.backend.inject(message("alice@a.example/pc", "bob@b.example", "anyone?"))
    reply = await pair.a.backend.next_delivered(10)
    assert reply.get("from") == "bob@b.example" and condition(reply) == "service-unavailable"



async def test_full_store_bounces_with_an_error_and_keeps_running(pair: Pair) -> None:  # noqa: F811
    """SQLITE_FULL (a full disk) while recording a subscription: the local sender gets
    internal-server-error, the gateway keeps routing everything else."""
    from xml.etree.ElementTree import Element

    await pair.start(partner("b.example", OPEN), partner("a.example", OPEN))
    db = pair.a.store.store._db
    db.execute(f"PRAGMA max_page_count={db.execute('PRAGMA page_count').fetchone()[0]}")
    for index in range(200):  # fill the last free pages
        try:
            pair.a.store.store.allow("filler@a.example", f"u{index}-{'x' * 300}@c.example")
        except Exception:
            break
    subscribe = Element("{jabber:server}presence", {
        "from": "alice@a.example", "to": "bob@b.example", "type": "subscribe"})
    await pair.a.backend.inject(subscribe)
    reply = await pair.a.backend.next_delivered(10)
    assert reply.get("type") == "error" and condition(reply) == "internal-server-error"
    await pair.a.backend.inject(message("alice@a.example/pc", "bob@b.example", "still here"))
    assert (await pair.b.backend.next_delivered(10)).findtext("{jabber:server}body") == \
        "still here"


@pytest.mark.parametrize("stream_management", [False, True], ids=["plain", "xep-0198"])
async def test_slow_backend_applies_backpressure_and_loses_nothing(
        pair: Pair, caplog, stream_management: bool) -> None:  # noqa: F811
    """A SIP side that takes 1 ms per stanza: the router queue passes its high-water mark,
    the gateway stops reading the peer's stream (TCP backpressure) instead of buffering
    without bound, and every stanza is delivered, in order; with stream management too
    (the sender's window, 5,000 unacknowledged stanzas, is wider than the router's)."""
    from gateway.config.model import FederationSettings
    from gateway.router import HIGH_WATER
    from gateway.sip.development import DevelopmentBackend

    caplog.set_level(logging.INFO, logger="gateway")
    await pair.start(partner("b.example", OPEN), partner("a.example", OPEN),
                     federation=FederationSettings(stream_management=stream_management))
    backend = pair.b.backend
    assert isinstance(backend, DevelopmentBackend)
    original = backend.deliver

    async def slow_deliver(stanza) -> None:
        await asyncio.sleep(0.001)
        await original(stanza)

    await pair.a.backend.inject(message("alice@a.example/pc", "bob@b.example", "warm-up"))
    await backend.next_delivered(10)  # the session is up: nothing waits in A's queue
    backend.delivered.clear()
    delivered_before = pair.b.router.delivered
    backend.deliver = slow_deliver  # type: ignore[method-assign]
    n = HIGH_WATER + 1500
    for index in range(n):
        pair.a.s2s.send(message("alice@a.example/pc", "bob@b.example", str(index)))
    deadline = asyncio.get_running_loop().time() + 60
    while pair.b.router.delivered - delivered_before < n:
        assert asyncio.get_running_loop().time() < deadline, \
            pair.b.router.delivered - delivered_before
        await asyncio.sleep(0.05)
    bodies = [int(s.findtext("{jabber:server}body") or -1) for s in backend.delivered]
    assert bodies == list(range(n))
    states = [getattr(r, "gw_fields", {}).get("state") for r in caplog.records
              if r.getMessage() == "router.backpressure"]
    assert states[:2] == ["on", "off"]


async def test_a_failed_round_backs_off_and_status_shows_it(pair: Pair) -> None:  # noqa: F811
    """Every target of B failed: the next round waits (1 s, doubling), which `status`
    shows per partner; a stanza sent meanwhile waits for that round (it is near) and is
    bounced with the round's failure, not by a round of its own."""
    await pair.start(partner("b.example", OPEN), partner("a.example", OPEN))
    await pair.b.stop()
    await pair.a.backend.inject(message("alice@a.example/pc", "bob@b.example", "m0"))
    assert condition(await pair.a.backend.next_delivered(15)) == "remote-server-not-found"
    backoff = pair.a.status()["backoff"]["a.example->b.example"]
    assert backoff["failures"] == 1 and 0 < backoff["retry_in_seconds"] <= 1.2, backoff
    assert "refused" in backoff["last_failure"].lower(), backoff
    await pair.a.backend.inject(message("alice@a.example/pc", "bob@b.example", "m1"))
    assert condition(await pair.a.backend.next_delivered(15)) == "remote-server-not-found"
    assert pair.a.status()["backoff"]["a.example->b.example"]["failures"] == 2
