"""Order between one sender and one recipient holds through the router's queues.

A local user's presence subscription needs a store write before it may leave (the
authorization is recorded first, RFC 6121 §3.1.2); the available presence that follows
it a millisecond later needs none and could be routed at once. It must still leave
second: a contact that gets the presence before the subscription ignores it (RFC 6121
§4.3.2) and the user looks offline until the next change.
"""

from __future__ import annotations

import asyncio

from gateway.policy.negotiation import Support
from gateway.sip.development import DevelopmentBackend, presence
from tests.integration.test_two_gateways import Pair, _policy, pair  # noqa: F401 - fixture
from tests.integration.test_two_gateways import partner as policy_for

ROUNDS = 40


async def test_presence_after_a_subscription_leaves_after_it(pair: Pair) -> None:  # noqa: F811
    row = _policy(Support.OPTIONAL, Support.OPTIONAL, True)
    await pair.start(policy_for("b.example", row), policy_for("a.example", row))
    sender, receiver = pair.a.backend, pair.b.backend
    assert isinstance(sender, DevelopmentBackend) and isinstance(receiver, DevelopmentBackend)
    # A first exchange opens the stream and loads the switch snapshots.
    await sender.inject(presence("warm@a.example/dev", "up@b.example", "subscribe"))
    while (await receiver.next_delivered(10)).get("type") != "subscribe":
        pass
    await asyncio.sleep(0.2)
    for index in range(ROUNDS):
        user, contact = f"u{index}@a.example", f"c{index}@b.example"
        first = asyncio.ensure_future(sender.inject(presence(user, contact, "subscribe")))
        # The second one comes after the worker took the first (a few loop turns) and
        # up to a millisecond later, while the store write may still be under way.
        for _ in range(3):
            await asyncio.sleep(0)
        await asyncio.sleep(0.00025 * (index % 5))
        second = asyncio.ensure_future(sender.inject(presence(f"{user}/dev", contact)))
        await asyncio.gather(first, second)
    arrived: dict[str, list[str]] = {}
    async with asyncio.timeout(20):
        while sum(len(kinds) for kinds in arrived.values()) < 2 * ROUNDS:
            stanza = await receiver.next_delivered(20)
            if stanza.get("from", "").startswith("u"):
                arrived.setdefault(stanza.get("to", ""), []).append(
                    stanza.get("type") or "available")
    out_of_order = {to: kinds for to, kinds in arrived.items()
                    if kinds != ["subscribe", "available"]}
    assert not out_of_order, out_of_order
