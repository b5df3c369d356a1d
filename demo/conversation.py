"""The demo's conversations, run inside the namespace (testbed/in_namespace.py).

Each step is timed from the moment it is sent until the other side has it, and recorded
as it finishes, so that a failure still shows what worked before it. A step waits at most
:data:`STEP_TIMEOUT` seconds.

- development backend: alice@a.example (Prosody) writes to echo@gw.example, which answers
  with the same text, and subscribes to its presence (approved at once);
- SIP backend: alice and the SIP user bob@gw.example (registered with Kamailio) write to
  each other, alice subscribes to bob's presence (PIDF from bob's PUBLISH, RFC 3856/3863)
  and bob to alice's (SIP SUBSCRIBE, NOTIFY with her presence).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable

from demo.report import Step
from gateway.sip.pidf import parse_pidf
from testbed.in_namespace import XmppUser
from testbed.namespace import IPS
from testbed.sip_ua import SipUserAgent

STEP_TIMEOUT = 10.0
ALICE = "alice@a.example"
ECHO = "echo@gw.example"
BOB = "bob@gw.example"
HELLO_XMPP = "Hello from Prosody!"
HELLO_SIP = "Hi Alice, this is Bob on SIP."
BOB_NOTE = "at my desk"


class StepFailed(Exception):
    """A step did not complete; it is recorded with its error, later steps are skipped."""


class Conversation:
    def __init__(self) -> None:
        self.steps: list[Step] = []

    async def step(self, step: Step, action: Callable[[], Awaitable[str]]) -> None:
        """Run ``action`` (which returns what came back) and record ``step`` with its time."""
        start = time.perf_counter()
        try:
            outcome = await asyncio.wait_for(action(), STEP_TIMEOUT)
        except Exception as exc:
            reason = f"nothing within {STEP_TIMEOUT:.0f} s" if isinstance(
                exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            self.steps.append(dataclasses.replace(step, error=reason))
            raise StepFailed(reason) from exc
        elapsed = (time.perf_counter() - start) * 1000
        self.steps.append(dataclasses.replace(step, outcome=outcome or step.outcome,
                                              ms=elapsed))


async def development(conversation: Conversation) -> None:
    alice = await XmppUser(ALICE, IPS["a.example"], password="pw").start()
    try:
        async def echo() -> str:
            alice.client.send_message(mto=ECHO, mbody=HELLO_XMPP, mtype="chat")
            reply = await alice.next_message(STEP_TIMEOUT)
            if reply["type"] == "error" or reply["body"] != HELLO_XMPP:
                raise RuntimeError(f"expected the echo, got {reply}")
            return f'echo@gw.example answered "{reply["body"]}" ({reply["from"]}, ' \
                   "gw.example → a.example)"

        await conversation.step(Step(
            ALICE, ECHO, f'message "{HELLO_XMPP}"', "inbound",
            timing="round trip: there and back (the echo), including opening the S2S "
                   "connections both ways"), echo)
        # The echo travelled the other way: a step of its own, timed within the round trip.
        conversation.steps.append(Step(ECHO, ALICE, f'message "{HELLO_XMPP}" (the echo)',
                                       "outbound", outcome="received by alice"))

        async def subscribe() -> str:
            alice.client.send_presence(pto=ECHO, ptype="subscribe")
            await alice.presence_where(lambda p: p["from"] == ECHO and p["type"] ==
                                       "subscribed", STEP_TIMEOUT)
            await alice.presence_where(lambda p: p["from"].startswith(f"{ECHO}/") and
                                       p["type"] == "available", STEP_TIMEOUT)
            return "answered: subscribed, then echo@gw.example is available"

        await conversation.step(Step(ALICE, ECHO, "presence subscription", "inbound"),
                                subscribe)
    finally:
        await alice.stop()


async def sip(conversation: Conversation, proxy: tuple[str, int], transport: str) -> None:
    bob = await SipUserAgent("bob", "gw.example", proxy, host=IPS["gw.example"],
                             transport=transport).start()
    try:
        for response in (await bob.register(), await bob.publish("open", note=BOB_NOTE)):
            if response.status != 200:
                raise StepFailed(f"bob's {response.status} {response.reason} from Kamailio")
        alice = await XmppUser(ALICE, IPS["a.example"], password="pw").start()
        try:
            await sip_steps(conversation, alice, bob, transport)
        finally:
            await alice.stop()
    finally:
        await bob.close()


async def sip_steps(conversation: Conversation, alice: XmppUser, bob: SipUserAgent,
                    transport: str) -> None:
    leg = f"SIP over {transport.upper()} through Kamailio"

    async def to_bob() -> str:
        alice.client.send_message(mto=BOB, mbody=HELLO_XMPP, mtype="chat")
        message = await bob.messages.get()
        if message.body.decode() != HELLO_XMPP:
            raise RuntimeError(f"bob got {message.body!r}")
        return f"bob's phone got a SIP MESSAGE from {message.from_.uri}"

    await conversation.step(Step(ALICE, BOB, f'message "{HELLO_XMPP}"', "inbound",
                                 sip=f"{leg} (MESSAGE)"), to_bob)

    async def to_alice() -> str:
        response = await bob.send_message(f"sip:{ALICE}", HELLO_SIP)
        if response.status != 202:
            raise RuntimeError(f"the gateway answered {response.status} {response.reason}")
        message = await alice.next_message(STEP_TIMEOUT)
        if message["body"] != HELLO_SIP:
            raise RuntimeError(f"alice got {message}")
        return f"gateway answered 202 Accepted; alice got it from {message['from']}"

    await conversation.step(Step(BOB, ALICE, f'message "{HELLO_SIP}"', "outbound",
                                 sip=f"{leg} (MESSAGE)"), to_alice)

    async def watch_bob() -> str:
        alice.client.send_presence(pto=BOB, ptype="subscribe")
        await alice.presence_where(lambda p: p["from"] == BOB and p["type"] == "subscribed",
                                   STEP_TIMEOUT)
        seen = await alice.presence_where(
            lambda p: p["from"] == f"{BOB}/sip" and p["type"] == "available", STEP_TIMEOUT)
        return f'subscribed; bob is available, note "{seen["status"]}" (from his PIDF)'

    await conversation.step(Step(ALICE, BOB, "presence subscription", "inbound",
                                 sip=f"{leg} (SUBSCRIBE/NOTIFY)"), watch_bob)

    async def watch_alice() -> str:
        response = await bob.subscribe(f"sip:{ALICE}")
        if response.status != 200:
            raise RuntimeError(f"the gateway answered {response.status} {response.reason}")
        notify = await bob.notify_where(
            lambda n: (n.get("subscription-state") or "").startswith("active")
            and parse_pidf(n.body).available)
        return f"200 OK; NOTIFY {notify.get('subscription-state')}: alice is available"

    await conversation.step(Step(BOB, ALICE, "presence subscription", "outbound",
                                 sip=f"{leg} (SUBSCRIBE/NOTIFY)"), watch_alice)
