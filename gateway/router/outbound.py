"""Local → XMPP: the contact rules for each local user's stanza, then the S2S service.

A stanza that can be decided at once (no store access, the sender's switch is in the
snapshot) *and* has nothing of its direction queued or in flight before it skips the
queue: the common case costs no task switch, and order between one sender and one
recipient holds by construction (a stanza never overtakes one still waiting for its
store write). The rest is routed by one worker, in order, in batches whose
authorization writes share a transaction (:mod:`gateway.router.batch`).

While this queue is above HIGH_WATER, or the S2S queue toward a domain is over
``limits.max_queue_per_domain``, the backend stops reading its stream senders (SIP over
TCP/TLS). A sender that cannot be paused (SIP over UDP: what it sends is read or dropped
by the kernel) is answered 503 + Retry-After only once the wait is no longer a burst
being worked off (:meth:`OutboundRouting.saturated`): a 503 reaches a phone behind a
proxy as a failure (Kamailio's tm turns it into 500, RFC 3261 §16.7 step 6), whereas a
request already read costs less answered and queued than retransmitted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from xml.etree.ElementTree import Element

from gateway.backend import LocalBackend
from gateway.config.model import GatewayConfig
from gateway.contracts import OnDecided, OnSent, XmppSide
from gateway.logs import log_event
from gateway.policy.contacts import (
    ContactDecision,
    Refusal,
    SideEffect,
    StanzaKind,
    outbound_decision,
    stanza_kind,
    strip_status,
)
from gateway.router.backpressure import HIGH_WATER, Watermarks
from gateway.router.batch import AuthorizationBatch
from gateway.router.inbound import STORE_DOWN
from gateway.router.lane import Lane
from gateway.router.replies import ErrorReplies
from gateway.router.switches import SwitchCache
from gateway.store.authorizations import StoreError
from gateway.store.protocols import Pair
from gateway.xmpp.jid import JidError, bare_jid, domain_of

log = logging.getLogger("gateway.router")

OUTBOUND_BATCH = 512  # queued local stanzas whose authorization writes share a transaction
# When new work from a sender that cannot be paused gets 503 + Retry-After: this many
# local stanzas waiting for their decision, or a congested domain's S2S queue this many
# times ``limits.max_queue_per_domain``. A storm of 5,000 phones subscribing at once is a
# burst (this queue peaks at the 5,000 authorization writes, the S2S queue at what the
# peer has not acknowledged yet); a partner that stopped acknowledging is not.
SATURATED_LANE = 8 * HIGH_WATER
SATURATED_QUEUE_FACTOR = 10
Item = tuple[Element, OnDecided]


class OutboundRouting:
    """The local → XMPP lane, its fast path and its worker."""

    def __init__(self, config: GatewayConfig, backend: LocalBackend, switches: SwitchCache,
                 batch: AuthorizationBatch, replies: ErrorReplies) -> None:
        self.config = config
        self.backend = backend
        self.switches = switches
        self.batch = batch
        self.replies = replies
        self.lane: Lane[Item] = Lane()
        self.marks = Watermarks()
        self._congested_domains: set[str] = set()
        self._input_paused = False
        self._send: Callable[[Element, OnSent], None] = _not_started
        self._queues: Callable[[], dict[str, int]] = dict
        self._in_hand: deque[Item] = deque()  # the batch the worker is routing

    def start(self, xmpp: XmppSide) -> asyncio.Task[None]:
        self._send = xmpp.send
        self._queues = xmpp.queues
        return asyncio.get_running_loop().create_task(self._work(), name="router-outbound")

    def submit(self, stanza: Element, on_decided: OnDecided) -> None:
        if not self.lane.pending and self._route_now(stanza, on_decided):
            return
        self.lane.put((stanza, on_decided))
        self._update_pressure()

    # ------------------------------------------------------------------ backpressure

    def congested(self, domain: str) -> bool:
        return self.marks.full or domain in self._congested_domains

    def saturated(self, domain: str) -> bool:
        """Whether new work toward ``domain`` from a sender that cannot be paused must
        be refused for now: see :data:`SATURATED_LANE` (asked per request only while
        the backend is told to hold its senders back, so the S2S queues are summed then)."""
        if self.lane.queued >= SATURATED_LANE:
            return True
        if domain not in self._congested_domains:
            return False
        suffix = f"->{domain}"
        waiting = sum(n for pair, n in self._queues().items() if pair.endswith(suffix))
        return waiting >= SATURATED_QUEUE_FACTOR * self.config.limits.max_queue_per_domain

    def s2s_congestion(self, domain: str, congested: bool) -> None:
        if congested:
            self._congested_domains.add(domain)
        else:
            self._congested_domains.discard(domain)
        self._update_pressure()

    def _update_pressure(self) -> None:
        """Both kinds of local backpressure: this lane's own queue (every destination
        waits) and congested S2S domains (only stanzas toward them wait, except on a
        stream transport from the proxy, which can only be paused whole)."""
        marks = self.marks
        if marks.update(self.lane.queued):
            log_event(log, logging.INFO, "router.local_backpressure",
                      state="on" if marks.full else "off", queued=self.lane.queued)
        paused = marks.full or bool(self._congested_domains)
        if paused != self._input_paused:
            self._input_paused = paused
            self.backend.input_paused(paused)

    # ------------------------------------------------------------------ deciding

    def _route_now(self, stanza: Element, on_decided: OnDecided) -> bool:
        """Route ``stanza`` at once if that needs no waiting: a well-formed stanza that
        the contact rules allow with no store side effect, from a user whose federation
        switch is in the snapshot. False = not handled, queue it. ``on_decided`` then
        goes with it to the S2S service (see :func:`_sent`)."""
        decided = self._decision_now(stanza)
        if decided is None:
            return False
        decision = decided[2]
        if not decision.allowed or decision.effects:
            return False
        self._send(strip_status(stanza) if decision.strip_status else stanza,
                   _sent(on_decided))
        return True

    def _decision_now(self, stanza: Element) -> tuple[str, str, ContactDecision] | None:
        """(local user, remote bare JID, contact-rules decision) of a local user's stanza
        without waiting: None when it is malformed or no switch snapshot is loaded yet
        (the worker then decides, and answers what is malformed)."""
        try:
            kind = stanza_kind(stanza)
            local_user = bare_jid(stanza.get("from", ""))
            remote_bare = bare_jid(stanza.get("to", ""))
        except (ValueError, JidError):
            return None
        enabled = self.switches.now(local_user)
        if enabled is None:
            return None
        return local_user, remote_bare, self._decision(kind, remote_bare, enabled)

    def _decision(self, kind: StanzaKind, remote_bare: str, enabled: bool) -> ContactDecision:
        config = self.config
        partner = config.partner_for(domain_of(remote_bare))
        return outbound_decision(
            kind, partner.partner_type if partner else None, user_enabled=enabled,
            allow_unlisted=config.federation.allow_unlisted)

    # ------------------------------------------------------------------ the worker

    async def _work(self) -> None:
        lane = self.lane
        while True:
            batch = self._in_hand = deque((await lane.take(),))
            batch.extend(lane.take_nowait(OUTBOUND_BATCH - 1))
            if len(batch) > 1:
                await self.batch.record_ahead(self._needed_records(batch))
            while batch:
                stanza, decided = batch[0]
                sent = False
                try:
                    sent = await self._route(stanza, decided)
                except StoreError as exc:
                    log_event(log, logging.WARNING, "store.unavailable", direction="outbound",
                              peer=stanza.get("to", ""), reason=str(exc))
                    await self._bounce(stanza, "internal-server-error", STORE_DOWN)
                except asyncio.CancelledError:
                    raise  # stopping: what is in hand is counted by unrouted_in_hand
                except Exception:
                    log.exception("outbound routing failed")
                    await self._bounce(stanza, "internal-server-error", "")
                batch.popleft()
                lane.done()
                if decided is not None and not sent:
                    decided()  # refused here (its error reply delivered), or failed
            self.batch.clear()
            if self._input_paused:
                self._update_pressure()

    def unrouted_in_hand(self) -> list[Item]:
        """What the stopped worker held (counted as done)."""
        batch, self._in_hand = list(self._in_hand), deque()
        if batch:
            self.lane.done(len(batch))
        return batch

    def _needed_records(self, batch: deque[Item]) -> list[Pair]:
        pairs: list[Pair] = []
        for stanza, _decided in batch:
            decided = self._decision_now(stanza)
            if decided is None:
                continue
            local_user, remote_bare, decision = decided
            if decision.allowed and SideEffect.RECORD_AUTHORIZATION in decision.effects:
                pairs.append((local_user, remote_bare))
        return pairs

    async def _route(self, stanza: Element, on_decided: OnDecided) -> bool:
        """Decide ``stanza``; True once handed to the S2S service (with ``on_decided``,
        which it calls when the outcome is known), False when refused here."""
        try:
            kind = stanza_kind(stanza)
            local_user = bare_jid(stanza.get("from", ""))
            remote_bare = bare_jid(stanza.get("to", ""))
        except (ValueError, JidError) as exc:
            await self._bounce(stanza, "bad-request", str(exc))
            return False
        enabled = self.switches.now(local_user)
        if enabled is None:
            enabled = await self.switches.enabled(local_user)
        decision = self._decision(kind, remote_bare, enabled)
        if not decision.allowed:
            log_event(log, logging.INFO, "contact.refused", direction="outbound",
                      peer=domain_of(remote_bare), sender=local_user,
                      recipient=remote_bare, kind=str(kind), reason=decision.reason)
            if decision.refusal is Refusal.ERROR:
                await self._bounce(stanza, decision.error_condition or "not-allowed",
                                   decision.reason)
            return False
        # Recorded before the stanza leaves: a failure bounces it, so the sender knows
        # the subscription did not go out.
        for effect in decision.effects:
            if effect is SideEffect.RECORD_AUTHORIZATION:
                await self.batch.record(local_user, remote_bare)
            elif effect is SideEffect.REVOKE_AUTHORIZATION:
                await self.batch.revoke(local_user, remote_bare)
        self._send(strip_status(stanza) if decision.strip_status else stanza,
                   _sent(on_decided))
        return True

    async def _bounce(self, stanza: Element, condition: str, text: str) -> None:
        """Refuse a local user's stanza: its error reply reaches the backend before the
        stanza counts as decided."""
        reply = self.replies.reply(stanza, condition, text, direction="outbound")
        if reply is not None:
            await self.replies.to_local(reply, condition, text)


class _Decided:
    """An :data:`OnSent` that tells the local sender's :data:`OnDecided`.

    One small object rather than a closure (a function, a cell and a tuple): under
    stream management it waits for the peer's acknowledgement, per stanza, long enough
    to be walked by the garbage collector's older generations."""

    __slots__ = ("on_decided",)

    def __init__(self, on_decided: Callable[[], None]) -> None:
        self.on_decided = on_decided

    def __call__(self, _delivered: bool) -> None:
        self.on_decided()


def _sent(on_decided: OnDecided) -> OnSent:
    """What the S2S service tells once a stanza's outcome is known (the peer server has
    it, or its error reply reached the backend) is the local sender's decision: a SIP
    MESSAGE is answered then (docs/delivery.md)."""
    return None if on_decided is None else _Decided(on_decided)


def _not_started(stanza: Element, on_sent: OnSent = None) -> None:
    raise RuntimeError("the router is not started")
