"""The router's settle callback: called exactly once per inbound stanza, and only when
the router is done with it — delivered, refused with its error reply handed to the S2S
side, refused silently by the contact rules, or dropped with a count (stream management
acknowledges a stanza to the peer only then)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from xml.etree.ElementTree import Element

import pytest

from gateway.config.model import GatewayConfig, PartnerPolicy, PartnerType, StoreSettings
from gateway.contracts import OnSent
from gateway.router import Router
from gateway.sip.development import message, presence
from gateway.store import AsyncAuthorizationStore, SqliteAuthorizationStore
from tests.support.held_backend import HeldBackend


class XmppSide:
    """Stands where the S2S service is: records what the router sends toward XMPP."""

    def __init__(self) -> None:
        self.sent: list[Element] = []

    def send(self, stanza: Element, on_sent: OnSent = None) -> None:
        self.sent.append(stanza)
        if on_sent is not None:
            on_sent(True)  # as plain S2S: written is all it knows

    def set_reading_paused(self, paused: bool) -> None:
        pass

    def queues(self) -> dict[str, int]:
        return {}


@pytest.fixture
async def routed(tmp_path: Path):
    config = GatewayConfig(domains=("b.example",),
                           partners=(PartnerPolicy("a.example", PartnerType.FEDERATED),),
                           store=StoreSettings(tmp_path / "store.sqlite3"))
    store = AsyncAuthorizationStore(SqliteAuthorizationStore(config.store.path))
    backend = HeldBackend()
    router = Router(config, backend, store)
    xmpp = XmppSide()
    await backend.start(router)
    await router.start(xmpp)
    try:
        yield router, backend, xmpp
    finally:
        backend.released.set()
        await router.stop(grace=1)
        await backend.stop()
        await store.aclose()


async def test_settled_once_each_after_the_outcome(routed) -> None:
    router, backend, xmpp = routed
    settled: Counter[str] = Counter()
    seen_then: dict[str, tuple[int, int]] = {}

    def on_settled(name: str):
        def settle() -> None:
            settled[name] += 1
            seen_then[name] = (len(backend.delivered), len(xmpp.sent))
        return settle

    iq = Element("{jabber:server}iq", {"from": "x@a.example/r", "to": "y@b.example",
                                       "type": "get", "id": "q1"})
    lost_error = message("x@a.example/r", "y@elsewhere.example", "")
    lost_error.set("type", "error")
    cases = [
        ("delivered", message("x@a.example/r", "y@b.example", "hi"), "a.example"),
        ("refused by the backend", iq, "a.example"),
        ("refused by the contact rules", message("x@c.example/r", "y@b.example", "hi"),
         "c.example"),
        ("dropped", lost_error, "a.example"),
    ]
    for name, stanza, remote in cases:
        router.from_xmpp(stanza, remote, "b.example", on_settled(name))
    await asyncio.sleep(0.05)
    assert not settled  # the backend holds the first one: nothing after it is done either
    backend.released.set()
    async with asyncio.timeout(5):
        while len(settled) < len(cases):
            await asyncio.sleep(0.01)
    assert set(settled.values()) == {1}
    assert seen_then["delivered"][0] == 1  # deliver() had returned
    assert seen_then["refused by the backend"][1] == 1  # its error reply was handed over
    assert seen_then["refused by the contact rules"][1] == 2
    assert router.drops.describe() == {"error-not-deliverable": 1}


async def test_settled_when_the_router_stops_before_routing(routed) -> None:
    router, _backend, _xmpp = routed
    settled: Counter[int] = Counter()
    for index in range(3):
        router.from_xmpp(presence(f"x{index}@a.example/r", "y@b.example"), "a.example",
                         "b.example", lambda index=index: settled.update([index]))
    await asyncio.sleep(0.05)
    await router.stop(grace=0.1)  # the first is in hand, two are queued
    assert settled == Counter({0: 1, 1: 1, 2: 1})
    assert router.drops.describe() == {"unrouted-at-stop": 3}
