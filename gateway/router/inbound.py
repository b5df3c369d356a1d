"""XMPP → local: the contact rules for each inbound stanza, then the backend.

One worker takes the stanzas in arrival order, so a slow backend cannot reorder a
conversation; it also delivers the error replies of what the S2S service could not
send (bounces), in order with the rest of what reaches local users. Above
:data:`~gateway.router.backpressure.HIGH_WATER` queued items the S2S service stops
reading inbound streams, below ``LOW_WATER`` it resumes; the backend makes the worker
wait while the SIP proxy has a window's worth of requests outstanding, so a burst ends
up held back by TCP flow control at the partner.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from xml.etree.ElementTree import Element

from gateway.backend import DeliveryError, LocalBackend
from gateway.config.model import GatewayConfig, PartnerType
from gateway.contracts import OnSettled, XmppSide
from gateway.logs import log_event
from gateway.policy.contacts import Refusal, inbound_decision, stanza_kind
from gateway.router.backpressure import Watermarks
from gateway.router.lane import Lane
from gateway.router.replies import ErrorReplies
from gateway.router.switches import SwitchCache
from gateway.store.authorizations import StoreError
from gateway.store.protocols import AsyncAuthorizations
from gateway.xmpp.jid import JidError, bare_jid

if TYPE_CHECKING:
    from gateway.metrics import Metrics

log = logging.getLogger("gateway.router")

STORE_DOWN = "the gateway's authorization store is unavailable; try again later"

Bounced = tuple[str, str]
"""(condition, text) of an error reply the gateway made for a local sender."""
Item = tuple[Element, str, str, OnSettled, Bounced | None]
"""(stanza, remote domain, local domain, settle callback, what a bounce says)."""


@dataclass(slots=True)
class InboundFigures:
    delivered: int = 0
    refused: int = 0
    pressure_episodes: int = 0  # times the S2S streams were told to stop reading
    peak: int = 0  # most items ever queued toward the backend


class InboundRouting:
    """The XMPP → local lane and its worker."""

    def __init__(self, config: GatewayConfig, backend: LocalBackend,
                 store: AsyncAuthorizations, switches: SwitchCache, replies: ErrorReplies,
                 metrics: Metrics | None) -> None:
        self.config = config
        self.backend = backend
        self.store = store
        self.switches = switches
        self.replies = replies
        self.metrics = metrics
        self.lane: Lane[Item] = Lane()
        self.marks = Watermarks()
        self.figures = InboundFigures()
        self._send: Callable[[Element], None] = _not_started
        self._pause: Callable[[bool], None] = _no_pause

    def start(self, xmpp: XmppSide) -> asyncio.Task[None]:
        self._send = xmpp.send
        self._pause = xmpp.set_reading_paused
        return asyncio.get_running_loop().create_task(self._work(), name="router-inbound")

    def put(self, stanza: Element, remote: str, local: str, on_settled: OnSettled,
            bounced: Bounced | None = None) -> None:
        lane = self.lane
        lane.put((stanza, remote, local, on_settled, bounced))
        queued = lane.queued
        if queued > self.figures.peak:
            self.figures.peak = queued
        if queued >= self.marks.high and self.marks.update(queued):
            self._pressure(True)

    def _pressure(self, on: bool) -> None:
        self.figures.pressure_episodes += on
        log_event(log, logging.INFO, "router.backpressure", state="on" if on else "off",
                  queued=self.lane.queued)
        self._pause(on)

    async def _work(self) -> None:
        lane = self.lane
        while True:
            item = await lane.take()
            stanza, remote, local, settled, bounced = item
            try:
                if bounced is not None:
                    await self.replies.to_local(stanza, *bounced, bounced=True)
                else:
                    await self._route(stanza, remote, local)
            except StoreError as exc:  # database down: say so, keep going
                log_event(log, logging.WARNING, "store.unavailable", direction="inbound",
                          peer=remote, reason=str(exc))
                self._refuse(stanza, "internal-server-error", "wait", STORE_DOWN)
            except asyncio.CancelledError:  # stopping while this one was in hand
                self.unrouted(item)
                raise
            except Exception:  # keep the worker alive; the stanza gets an error
                log.exception("inbound routing failed")
                self._refuse(stanza, "internal-server-error", "wait", "")
            finally:
                lane.done()
                if settled is not None:
                    settled()
                if self.marks.full and self.marks.update(lane.queued):
                    self._pressure(False)

    def unrouted(self, item: Item) -> None:
        """Count a stanza the gateway stopped before routing (its settle callback is the
        caller's to call)."""
        stanza, remote, _local, _settled, bounced = item
        self.replies.drops.record("unrouted-at-stop",
                                  direction="outbound" if bounced else "inbound",
                                  peer=remote or None, sender=stanza.get("from"),
                                  recipient=stanza.get("to"))

    async def _route(self, stanza: Element, remote: str, local: str) -> None:
        try:
            kind = stanza_kind(stanza)
        except ValueError as exc:
            self._refuse(stanza, "bad-request", "modify", str(exc))
            return
        sender, recipient = stanza.get("from", ""), stanza.get("to", "")
        try:
            local_user, remote_bare = bare_jid(recipient), bare_jid(sender)
        except JidError as exc:
            self._refuse(stanza, "jid-malformed", "modify", str(exc))
            return
        config = self.config
        partner = config.partner_for(remote)
        enabled = self.switches.now(local_user)
        if enabled is None:
            enabled = await self.switches.enabled(local_user)
        partner_type = partner.partner_type if partner else None
        # Only public-unverified contacts need the authorization lookup.
        authorized = (
            partner_type is PartnerType.FEDERATED or partner_type is PartnerType.PUBLIC_VERIFIED
            or await self.store.is_authorized(local_user, remote_bare)
        )
        decision = inbound_decision(
            kind, partner_type, user_enabled=enabled, contact_authorized=authorized,
            allow_unlisted=config.federation.allow_unlisted)
        if not decision.allowed:
            self.figures.refused += 1
            log_event(log, logging.INFO, "contact.refused", direction="inbound", peer=remote,
                      sender=sender, recipient=recipient, kind=str(kind),
                      reason=decision.reason, answer=str(decision.refusal))
            if self.metrics is not None:
                self.metrics.count("refusals", "contact rules")
            if decision.refusal is Refusal.ERROR:
                self._refuse(stanza, decision.error_condition or "service-unavailable",
                             decision.error_type or "cancel", "")
            elif decision.refusal is Refusal.UNSUBSCRIBED:
                self._send(Element("{jabber:server}presence",
                                   {"from": local_user, "to": remote_bare,
                                    "type": "unsubscribed"}))
            return
        try:
            await self.backend.deliver(stanza)
            self.figures.delivered += 1
        except DeliveryError as exc:
            log_event(log, logging.INFO, "backend.refused", direction="inbound", peer=remote,
                      sender=sender, recipient=recipient, condition=exc.condition,
                      reason=exc.text)
            self._refuse(stanza, exc.condition, exc.error_type, exc.text)

    def _refuse(self, stanza: Element, condition: str, error_type: str, text: str) -> None:
        """Answer a remote sender with an error (or count why it cannot be)."""
        reply = self.replies.reply(stanza, condition, text, direction="inbound",
                                   error_type=error_type)
        if reply is not None:
            self._send(reply)


def _not_started(stanza: Element) -> None:
    raise RuntimeError("the router is not started")


def _no_pause(paused: bool) -> None:
    pass
