"""Router: between the S2S service (XMPP side) and the local backend (SIP side).

Applies the contact rules (GATEWAY-SPEC §3, pure functions in ``gateway.policy.contacts``)
with the authorization store, and turns every failure into an XMPP error to the sender
(RFC 6120 §8.3) — a stanza is delivered, refused with an error, or (only where RFC 6121
§8.5.1 demands silence) dropped *with a log line saying why*; never lost silently.

Stanzas are processed in arrival order by one worker per direction so that a slow
backend cannot reorder a conversation. Overload slows senders down instead of refusing
their stanzas (issue: SIP at the speed of S2S):

* XMPP → local: above :data:`HIGH_WATER` queued stanzas the S2S service stops reading
  inbound streams, below :data:`LOW_WATER` it resumes; the backend makes the worker wait
  while the SIP proxy has a window's worth of requests outstanding, so a burst ends up
  held back by TCP flow control at the partner. The queue therefore holds at most
  HIGH_WATER plus what one read of each inbound stream carries.
* local → XMPP: while this queue is above HIGH_WATER, or the S2S queue toward a domain
  is over ``limits.max_queue_per_domain`` (:meth:`Router.xmpp_congested`), the backend
  asks its senders to wait (SIP: 503 + Retry-After over UDP, no reading over TCP).
  A stanza that could be decided at once (nothing queued before it, no store access)
  skips the queue: the common case costs no task switch.

What still cannot be delivered or answered is counted in :class:`gateway.drops.DropCounter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import Any
from xml.etree.ElementTree import Element

from gateway.backend import DeliveryError, LocalBackend
from gateway.config.model import GatewayConfig, PartnerType
from gateway.drops import DropCounter
from gateway.logs import log_event
from gateway.policy.contacts import (
    Refusal,
    SideEffect,
    inbound_decision,
    outbound_decision,
    stanza_kind,
    strip_status,
)
from gateway.store.authorizations import StoreError, normalize_bare_jid
from gateway.xmpp.errors import make_error_reply
from gateway.xmpp.jid import JidError, bare_jid

log = logging.getLogger("gateway.router")

# Backpressure marks (see the module docstring): the queues themselves are unbounded
# because their producers stop producing at HIGH_WATER.
USER_CACHE_SECONDS = 5.0
STORE_DOWN = "the gateway's authorization store is unavailable; try again later"
HIGH_WATER = 2_000
LOW_WATER = 200
OnDecided = Callable[[], None] | None
OUTBOUND_BATCH = 512  # queued local stanzas whose authorization writes share a transaction


class Router:
    def __init__(self, config: GatewayConfig, backend: LocalBackend, store: Any,
                 metrics: Any = None) -> None:
        self.config = config
        self.backend = backend
        self.store = store  # AsyncAuthorizationStore
        self.metrics = metrics
        self.s2s: Any = None  # S2SService, set by the daemon
        self._inbound: asyncio.Queue[tuple[Element, str, str, Any]] = asyncio.Queue()
        self._outbound: asyncio.Queue[tuple[Element, OnDecided]] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self.on_pressure: Callable[[bool], None] | None = None
        # every explicit per-user switch (None until first loaded), see _user_enabled
        self._switches: dict[str, bool] | None = None
        self._switches_until = 0.0
        self._switch_refresh: asyncio.Task[None] | None = None
        self._recorded: set[tuple[str, str]] = set()  # written ahead for the current batch
        self._bounces: set[asyncio.Task[None]] = set()
        self._pressure = False
        self._local_pressure = False
        self._input_paused = False
        self._congested_domains: set[str] = set()
        self.drops = DropCounter(metrics)
        self.pressure_episodes = 0  # times the S2S streams were told to stop reading
        self.inbound_peak = 0  # most stanzas ever queued toward the backend
        self.delivered = 0
        self.refused = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._workers = [
            loop.create_task(self._inbound_worker(), name="router-inbound"),
            loop.create_task(self._outbound_worker(), name="router-outbound"),
        ]
        if hasattr(self.backend, "attach_router"):
            self.backend.attach_router(self)
        await self.backend.start(self.from_local)

    async def stop(self, grace: float = 3.0) -> None:
        """Finish what is queued (bounded by ``grace``), then stop the workers."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain(), grace)
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._outbound.empty():  # not routed within the grace period
            stanza, decided = self._outbound.get_nowait()
            self.drops.record("unrouted-at-stop", direction="outbound",
                              sender=stanza.get("from"), recipient=stanza.get("to"))
            if decided is not None:
                decided()
        while not self._inbound.empty():
            stanza, remote, _local, settled = self._inbound.get_nowait()
            if settled is not None:
                settled()
            self.drops.record("unrouted-at-stop", direction="inbound", peer=remote,
                              sender=stanza.get("from"), recipient=stanza.get("to"))
        await self.backend.stop()

    async def _drain(self) -> None:
        await self._inbound.join()
        await self._outbound.join()
        while self._bounces:
            await asyncio.gather(*list(self._bounces), return_exceptions=True)

    # ------------------------------------------------------------------ XMPP → local

    def from_xmpp(self, stanza: Element, remote: str, local: str, on_settled: Any = None) -> None:
        """Called by the S2S service for each accepted inbound stanza (never blocks, never
        refuses: above HIGH_WATER the S2S service is told to stop reading)."""
        self._inbound.put_nowait((stanza, remote, local, on_settled))
        queued = self._inbound.qsize()
        if queued > self.inbound_peak:
            self.inbound_peak = queued
        if not self._pressure and queued >= HIGH_WATER:
            self._set_pressure(True)

    def _set_pressure(self, on: bool) -> None:
        self._pressure = on
        self.pressure_episodes += on
        log_event(log, logging.INFO, "router.backpressure", state="on" if on else "off",
                  queued=self._inbound.qsize())
        if self.on_pressure is not None:
            self.on_pressure(on)

    async def _inbound_worker(self) -> None:
        while True:
            stanza, remote, local, settled = await self._inbound.get()
            try:
                await self._handle_inbound(stanza, remote, local)
            except StoreError as exc:  # database down (issue 15): say so, keep going
                log_event(log, logging.WARNING, "store.unavailable", direction="inbound",
                          peer=remote, reason=str(exc))
                self._reply_xmpp(stanza, "internal-server-error", "wait", STORE_DOWN)
            except Exception:  # keep the worker alive; the stanza gets an error
                log.exception("inbound routing failed")
                self._reply_xmpp(stanza, "internal-server-error", "wait", "")
            finally:
                self._inbound.task_done()
                if settled is not None:
                    settled()
                if self._pressure and self._inbound.qsize() <= LOW_WATER:
                    self._set_pressure(False)

    async def _handle_inbound(self, stanza: Element, remote: str, local: str) -> None:
        try:
            kind = stanza_kind(stanza)
        except ValueError as exc:
            self._reply_xmpp(stanza, "bad-request", "modify", str(exc))
            return
        sender, recipient = stanza.get("from", ""), stanza.get("to", "")
        try:
            local_user, remote_bare = bare_jid(recipient), bare_jid(sender)
        except JidError as exc:
            self._reply_xmpp(stanza, "jid-malformed", "modify", str(exc))
            return
        partner = self.config.partner_for(remote)
        enabled = await self._user_enabled(local_user)
        partner_type = partner.partner_type if partner else None
        # Only public-unverified contacts need the authorization lookup (spec §3).
        authorized = (
            partner_type is PartnerType.FEDERATED or partner_type is PartnerType.PUBLIC_VERIFIED
            or await self.store.is_authorized(local_user, remote_bare)
        )
        decision = inbound_decision(
            kind, partner.partner_type if partner else None, user_enabled=enabled,
            contact_authorized=authorized, allow_unlisted=self.config.federation.allow_unlisted)
        if not decision.allowed:
            self.refused += 1
            log_event(log, logging.INFO, "contact.refused", direction="inbound", peer=remote,
                      sender=sender, recipient=recipient, kind=str(kind),
                      reason=decision.reason, answer=str(decision.refusal))
            if self.metrics is not None:
                self.metrics.count("refusals", "contact rules")
            if decision.refusal is Refusal.ERROR:
                self._reply_xmpp(stanza, decision.error_condition or "service-unavailable",
                                 decision.error_type or "cancel", "")
            elif decision.refusal is Refusal.UNSUBSCRIBED:
                answer = Element("{jabber:server}presence",
                                 {"from": local_user, "to": remote_bare, "type": "unsubscribed"})
                self._send_xmpp(answer)
            return
        try:
            await self.backend.deliver(stanza)
            self.delivered += 1
        except DeliveryError as exc:
            log_event(log, logging.INFO, "backend.refused", direction="inbound", peer=remote,
                      sender=sender, recipient=recipient, condition=exc.condition,
                      reason=exc.text)
            self._reply_xmpp(stanza, exc.condition, exc.error_type, exc.text)

    async def _user_enabled(self, local_user: str) -> bool:
        """The per-user federation switch, from a snapshot of every explicit switch in
        the store (one query every USER_CACHE_SECONDS, in the background; users without
        one get ``federation.users_enabled_by_default``): the store is changed by
        ``xmpp-gateway users …`` from another process, so the snapshot must be recent,
        but a store lookup per new user capped a presence storm at the thread hop
        (5,000 contacts, each a different SIP user, took seconds)."""
        enabled = self._user_enabled_now(local_user)
        if enabled is None:
            await self._load_switches()
            enabled = self._user_enabled_now(local_user)
        # None only if the snapshot was dropped again meanwhile (forget_cached)
        return self.config.federation.users_enabled_by_default if enabled is None else enabled

    def _user_enabled_now(self, local_user: str) -> bool | None:
        """The switch from the current snapshot (None before the first one)."""
        switches = self._switches
        if switches is None:
            return None
        if time.monotonic() >= self._switches_until:
            self._refresh_switches()
        try:
            user = _normalized(local_user)
        except ValueError:
            user = local_user
        return switches.get(user, self.config.federation.users_enabled_by_default)

    async def _load_switches(self) -> None:
        settings = await self.store.list_users()
        self._switches = {setting.local_user: setting.enabled for setting in settings}
        self._switches_until = time.monotonic() + USER_CACHE_SECONDS

    def _refresh_switches(self) -> None:
        if self._switch_refresh is not None and not self._switch_refresh.done():
            return
        self._switches_until = time.monotonic() + USER_CACHE_SECONDS  # one attempt a period
        task = asyncio.get_running_loop().create_task(self._load_switches())
        task.add_done_callback(self._switches_loaded)
        self._switch_refresh = task

    def _switches_loaded(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log_event(log, logging.WARNING, "store.switches_not_refreshed",
                      reason=str(task.exception()),
                      consequence="routing goes on with the previous per-user switches")

    @property
    def queued(self) -> int:
        """Stanzas waiting in both directions (drain waits for 0; cluster heartbeat load)."""
        return self._inbound.qsize() + self._outbound.qsize()

    def forget_cached(self, local_user: str = "") -> None:
        """Another node or process changed the store (PostgreSQL NOTIFY, issue 15): the
        next stanza waits for a new snapshot of the per-user switches."""
        self._switches = None

    def _reply_xmpp(self, stanza: Element, condition: str, error_type: str, text: str) -> None:
        reply = make_error_reply(stanza, condition, text, error_type)
        if reply is not None:
            self._send_xmpp(reply)
        else:  # an error cannot be answered with an error (RFC 6120 §8.3.1)
            self.drops.record("error-not-deliverable", direction="inbound",
                              sender=stanza.get("from"), recipient=stanza.get("to"),
                              condition=condition)

    def _send_xmpp(self, stanza: Element) -> None:
        if self.s2s is not None:
            self.s2s.send(stanza)

    # ------------------------------------------------------------------ local → XMPP

    async def from_local(self, stanza: Element) -> None:
        """The backend's sink: a local user's stanza toward XMPP.

        Returns once the router has decided: the stanza is on its way to the S2S service,
        or its error reply has already been handed to :meth:`LocalBackend.deliver`. A SIP
        backend relies on this to answer a MESSAGE with the refusal (RFC 7247 §8.1)
        instead of a blind ``202 Accepted``. Stanzas are still handled in order.
        """
        decided = asyncio.get_running_loop().create_future()
        self.submit_local(stanza, lambda: decided.done() or decided.set_result(None))
        await asyncio.shield(decided)

    def submit_local(self, stanza: Element, on_decided: OnDecided = None) -> None:
        """Like :meth:`from_local` without a task per stanza: ``on_decided`` is called
        once the router has decided (at once when nothing is queued before the stanza
        and no store access is needed, else by the outbound worker, in order)."""
        if self._outbound.empty() and self._route_now(stanza):
            if on_decided is not None:
                on_decided()
            return
        self._outbound.put_nowait((stanza, on_decided))
        self._update_local_pressure()

    def xmpp_congested(self, domain: str) -> bool:
        """Whether a new stanza toward ``domain`` should wait (see the module docstring)."""
        return self._local_pressure or domain in self._congested_domains

    def on_s2s_congestion(self, domain: str, congested: bool) -> None:
        """The S2S service's word that its queue toward ``domain`` is over (back under)
        its bound."""
        if congested:
            self._congested_domains.add(domain)
        else:
            self._congested_domains.discard(domain)
        self._update_local_pressure()

    def _update_local_pressure(self) -> None:
        """Recompute both kinds of local backpressure: this router's own queue (every
        destination waits) and congested S2S domains (only stanzas toward them wait,
        except on a stream transport from the proxy, which can only be paused whole)."""
        queued = self._outbound.qsize()
        limit = LOW_WATER if self._local_pressure else HIGH_WATER - 1
        queue_full = queued > limit
        if queue_full != self._local_pressure:
            self._local_pressure = queue_full
            log_event(log, logging.INFO, "router.local_backpressure",
                      state="on" if queue_full else "off", queued=queued)
        paused = queue_full or bool(self._congested_domains)
        if paused != self._input_paused:
            self._input_paused = paused
            pause = getattr(self.backend, "input_paused", None)
            if pause is not None:
                pause(paused)

    async def _outbound_worker(self) -> None:
        while True:
            batch = [await self._outbound.get()]
            while len(batch) < OUTBOUND_BATCH and not self._outbound.empty():
                batch.append(self._outbound.get_nowait())
            if len(batch) > 1:
                await self._record_ahead([stanza for stanza, _ in batch])
            for stanza, decided in batch:
                try:
                    await self._handle_outbound(stanza)
                except StoreError as exc:
                    log_event(log, logging.WARNING, "store.unavailable", direction="outbound",
                              peer=stanza.get("to", ""), reason=str(exc))
                    await self._bounce_local(stanza, "internal-server-error", STORE_DOWN)
                except Exception:
                    log.exception("outbound routing failed")
                    await self._bounce_local(stanza, "internal-server-error", "")
                finally:
                    self._outbound.task_done()
                    if decided is not None:
                        decided()
            self._recorded.clear()
            if self._input_paused:
                self._update_local_pressure()

    async def _record_ahead(self, stanzas: list[Element]) -> None:
        """Record, in one store transaction, the authorizations a batch of queued stanzas
        will need (outgoing subscriptions, RFC 6121 §3.1.2; GATEWAY-SPEC §3). Each stanza
        is still routed in order and only after its write; a pair recorded here is not
        written again. If the batch write fails, each stanza tries on its own (and is
        bounced if that fails too), exactly as without the batch."""
        pairs: list[tuple[str, str]] = []
        for stanza in stanzas:
            decided = self._outbound_decision_now(stanza)
            if decided is None:
                continue
            local_user, remote_bare, decision = decided
            if decision.allowed and SideEffect.RECORD_AUTHORIZATION in decision.effects:
                pairs.append((local_user, remote_bare))
        if len(pairs) < 2:
            return
        try:
            await self.store.allow_many(pairs, "subscription")
        except StoreError as exc:
            log_event(log, logging.WARNING, "store.unavailable", direction="outbound",
                      reason=str(exc), batch=len(pairs))
            return
        self._recorded.update(pairs)

    def _route_now(self, stanza: Element) -> bool:
        """Route ``stanza`` at once if that needs no waiting: a well-formed stanza that
        the contact rules allow with no store side effect, from a user whose federation
        switch is cached. False = not handled, queue it."""
        decided = self._outbound_decision_now(stanza)
        if decided is None:
            return False
        decision = decided[2]
        if not decision.allowed or decision.effects:
            return False
        self._send_xmpp(strip_status(stanza) if decision.strip_status else stanza)
        return True

    def _outbound_decision_now(self, stanza: Element) -> tuple[str, str, Any] | None:
        """(local user, remote bare JID, contact-rules decision) of a local user's stanza
        without waiting: None when it is malformed or no switch snapshot is loaded yet
        (the outbound worker then decides, and answers what is malformed)."""
        try:
            kind = stanza_kind(stanza)
            local_user = bare_jid(stanza.get("from", ""))
            remote_bare = bare_jid(stanza.get("to", ""))
        except (ValueError, JidError):
            return None
        enabled = self._user_enabled_now(local_user)
        if enabled is None:
            return None
        return local_user, remote_bare, self._outbound_decision(kind, remote_bare, enabled)

    def _outbound_decision(self, kind: Any, remote_bare: str, enabled: bool) -> Any:
        partner = self.config.partner_for(remote_bare.rpartition("@")[2])
        return outbound_decision(
            kind, partner.partner_type if partner else None, user_enabled=enabled,
            allow_unlisted=self.config.federation.allow_unlisted)

    async def _handle_outbound(self, stanza: Element) -> None:
        try:
            kind = stanza_kind(stanza)
            local_user, remote_bare = bare_jid(stanza.get("from", "")), bare_jid(
                stanza.get("to", ""))
        except (ValueError, JidError) as exc:
            await self._bounce_local(stanza, "bad-request", str(exc))
            return
        remote = remote_bare.rpartition("@")[2]
        enabled = await self._user_enabled(local_user)
        decision = self._outbound_decision(kind, remote_bare, enabled)
        if not decision.allowed:
            log_event(log, logging.INFO, "contact.refused", direction="outbound", peer=remote,
                      sender=local_user, recipient=remote_bare, kind=str(kind),
                      reason=decision.reason)
            if decision.refusal is Refusal.ERROR:
                await self._bounce_local(stanza, decision.error_condition or "not-allowed",
                                         decision.reason)
            return
        for effect in decision.effects:  # recorded before the stanza leaves (a failure
            # bounces it, so the sender knows the subscription did not go out)
            if effect is SideEffect.RECORD_AUTHORIZATION:
                if (local_user, remote_bare) not in self._recorded:
                    await self.store.allow(local_user, remote_bare, "subscription")
            elif effect is SideEffect.REVOKE_AUTHORIZATION:
                self._recorded.discard((local_user, remote_bare))  # a later grant writes
                await self.store.revoke(local_user, remote_bare)
        if decision.strip_status:
            stanza = strip_status(stanza)
        self._send_xmpp(stanza)

    def bounce(self, stanza: Element, condition: str, text: str) -> None:
        """S2S could not deliver a local user's stanza: tell the sender (RFC 6120 §8.3)."""
        reply = make_error_reply(stanza, condition, text, _error_type(condition))
        if reply is None:  # an error that could not be delivered is not answered (§8.3.1)
            self.drops.record("error-not-deliverable", direction="outbound",
                              sender=stanza.get("from"), recipient=stanza.get("to"),
                              condition=condition, text=text)
            return
        sender_domain = (stanza.get("from") or "").partition("/")[0].rpartition("@")[2]
        if sender_domain not in self.config.domains:
            # An error reply we generated toward a remote sender failed too: nobody to
            # tell (never answer an error with an error).
            self.drops.record("reply-not-deliverable", direction="outbound",
                              sender=stanza.get("from"), recipient=stanza.get("to"),
                              condition=condition, text=text)
            return
        task = asyncio.get_running_loop().create_task(self._deliver_bounce(reply, condition, text))
        self._bounces.add(task)
        task.add_done_callback(self._bounces.discard)

    async def _deliver_bounce(self, reply: Element, condition: str, text: str) -> None:
        try:
            await self.backend.deliver(reply)
            log_event(log, logging.INFO, "s2s.bounced", to=reply.get("to"),
                      condition=condition, text=text)
        except DeliveryError as exc:
            self.drops.record("bounce-not-deliverable", direction="outbound",
                              recipient=reply.get("to"), condition=condition, text=text,
                              backend_error=exc.condition)

    async def _bounce_local(self, stanza: Element, condition: str, text: str) -> None:
        reply = make_error_reply(stanza, condition, text, _error_type(condition))
        if reply is None:
            self.drops.record("error-not-deliverable", direction="outbound",
                              sender=stanza.get("from"), recipient=stanza.get("to"),
                              condition=condition, text=text)
            return
        try:
            await self.backend.deliver(reply)
        except DeliveryError as exc:
            self.drops.record("bounce-not-deliverable", direction="outbound",
                              recipient=reply.get("to"), condition=condition, text=text,
                              backend_error=exc.condition)


def _error_type(condition: str) -> str:
    # RFC 6120 §8.3.3: the usual type for each condition we generate.
    if condition in ("remote-server-timeout", "resource-constraint", "internal-server-error"):
        return "wait"
    if condition in ("bad-request", "jid-malformed"):
        return "modify"
    return "cancel"


@functools.lru_cache(maxsize=65536)
def _normalized(local_user: str) -> str:
    return normalize_bare_jid(local_user)
