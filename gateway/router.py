"""Router: between the S2S service (XMPP side) and the local backend (SIP side).

Applies the contact rules (GATEWAY-SPEC §3, pure functions in ``gateway.policy.contacts``)
with the authorization store, and turns every failure into an XMPP error to the sender
(RFC 6120 §8.3) — a stanza is delivered, refused with an error, or (only where RFC 6121
§8.5.1 demands silence) dropped *with a log line saying why*; never lost silently.

Stanzas are processed in arrival order by one worker per direction so that a slow
backend cannot reorder a conversation; the queues are bounded (backpressure = bounce
with ``resource-constraint``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any
from xml.etree.ElementTree import Element

from gateway.backend import DeliveryError, LocalBackend
from gateway.config.model import GatewayConfig, PartnerType
from gateway.logs import log_event
from gateway.policy.contacts import (
    Refusal,
    SideEffect,
    inbound_decision,
    outbound_decision,
    stanza_kind,
    strip_status,
)
from gateway.store.authorizations import StoreError
from gateway.xmpp.errors import make_error_reply
from gateway.xmpp.jid import JidError, bare_jid

log = logging.getLogger("gateway.router")

MAX_PENDING = 10_000
# Inbound backpressure (issue: hardening): above HIGH queued stanzas the S2S service stops
# reading from inbound streams; below LOW it resumes. TCP flow control then slows the
# peers down instead of us buffering without bound or refusing stanzas.
USER_CACHE_SECONDS = 5.0
STORE_DOWN = "the gateway's authorization store is unavailable; try again later"
HIGH_WATER = 2_000
LOW_WATER = 200


class Router:
    def __init__(self, config: GatewayConfig, backend: LocalBackend, store: Any,
                 metrics: Any = None) -> None:
        self.config = config
        self.backend = backend
        self.store = store  # AsyncAuthorizationStore
        self.metrics = metrics
        self.s2s: Any = None  # S2SService, set by the daemon
        self._inbound: asyncio.Queue[tuple[Element, str, str]] = asyncio.Queue(MAX_PENDING)
        self._outbound: asyncio.Queue[tuple[Element, asyncio.Future[None] | None]] = (
            asyncio.Queue(MAX_PENDING))
        self._workers: list[asyncio.Task[None]] = []
        self.on_pressure: Callable[[bool], None] | None = None
        self._enabled_cache: dict[str, tuple[bool, float]] = {}
        self._bounces: set[asyncio.Task[None]] = set()
        self._pressure = False
        self.delivered = 0
        self.refused = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._workers = [
            loop.create_task(self._inbound_worker(), name="router-inbound"),
            loop.create_task(self._outbound_worker(), name="router-outbound"),
        ]
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
            log_event(log, logging.WARNING, "router.unrouted_at_stop", sender=stanza.get("from"),
                      recipient=stanza.get("to"), reason="gateway stopping")
            if decided is not None and not decided.done():
                decided.set_result(None)
        await self.backend.stop()

    async def _drain(self) -> None:
        await self._inbound.join()
        await self._outbound.join()
        while self._bounces:
            await asyncio.gather(*list(self._bounces), return_exceptions=True)

    # ------------------------------------------------------------------ XMPP → local

    def from_xmpp(self, stanza: Element, remote: str, local: str) -> None:
        """Called by the S2S service for each accepted inbound stanza (never blocks)."""
        try:
            self._inbound.put_nowait((stanza, remote, local))
        except asyncio.QueueFull:
            self._reply_xmpp(stanza, "resource-constraint", "wait", "gateway overloaded")
        if not self._pressure and self._inbound.qsize() >= HIGH_WATER:
            self._set_pressure(True)

    def _set_pressure(self, on: bool) -> None:
        self._pressure = on
        log_event(log, logging.INFO, "router.backpressure", state="on" if on else "off",
                  queued=self._inbound.qsize())
        if self.on_pressure is not None:
            self.on_pressure(on)

    async def _inbound_worker(self) -> None:
        while True:
            stanza, remote, local = await self._inbound.get()
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
        """The per-user federation switch, cached for USER_CACHE_SECONDS: the store is
        changed by ``xmpp-gateway users …`` from another process, so the cache must be
        short-lived, but one lookup per stanza would cap throughput at the thread hop."""
        now = time.monotonic()
        cached = self._enabled_cache.get(local_user)
        if cached is not None and cached[1] > now:
            return cached[0]
        enabled = await self.store.user_enabled(
            local_user, self.config.federation.users_enabled_by_default)
        if len(self._enabled_cache) > 100_000:
            self._enabled_cache.clear()
        self._enabled_cache[local_user] = (enabled, now + USER_CACHE_SECONDS)
        return enabled

    @property
    def queued(self) -> int:
        """Stanzas waiting in both directions (drain waits for 0; cluster heartbeat load)."""
        return self._inbound.qsize() + self._outbound.qsize()

    def forget_cached(self, local_user: str = "") -> None:
        """Drop the cached per-user switch of ``local_user`` (every user when empty):
        another node or process changed the store (PostgreSQL NOTIFY, issue 15)."""
        if local_user:
            self._enabled_cache.pop(local_user, None)
        else:
            self._enabled_cache.clear()

    def _reply_xmpp(self, stanza: Element, condition: str, error_type: str, text: str) -> None:
        reply = make_error_reply(stanza, condition, text, error_type)
        if reply is not None:
            self._send_xmpp(reply)

    def _send_xmpp(self, stanza: Element) -> None:
        if self.s2s is not None:
            self.s2s.send(stanza)

    # ------------------------------------------------------------------ local → XMPP

    async def from_local(self, stanza: Element) -> None:
        """The backend's sink: a local user's stanza toward XMPP.

        Returns once the router has decided: the stanza is on its way to the S2S service,
        or its error reply has already been handed to :meth:`LocalBackend.deliver`. A SIP
        backend relies on this to answer a MESSAGE with the refusal (RFC 7247 §8.1)
        instead of a blind ``202 Accepted``. Stanzas are still handled one at a time, in
        order, by the outbound worker.
        """
        decided: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            self._outbound.put_nowait((stanza, decided))
        except asyncio.QueueFull:
            await self._bounce_local(stanza, "resource-constraint", "gateway overloaded")
            return
        await asyncio.shield(decided)

    async def _outbound_worker(self) -> None:
        while True:
            stanza, decided = await self._outbound.get()
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
                if decided is not None and not decided.done():
                    decided.set_result(None)

    async def _handle_outbound(self, stanza: Element) -> None:
        try:
            kind = stanza_kind(stanza)
            local_user, remote_bare = bare_jid(stanza.get("from", "")), bare_jid(
                stanza.get("to", ""))
        except (ValueError, JidError) as exc:
            await self._bounce_local(stanza, "bad-request", str(exc))
            return
        remote = remote_bare.rpartition("@")[2]
        partner = self.config.partner_for(remote)
        enabled = await self._user_enabled(local_user)
        decision = outbound_decision(
            kind, partner.partner_type if partner else None, user_enabled=enabled,
            allow_unlisted=self.config.federation.allow_unlisted)
        if not decision.allowed:
            log_event(log, logging.INFO, "contact.refused", direction="outbound", peer=remote,
                      sender=local_user, recipient=remote_bare, kind=str(kind),
                      reason=decision.reason)
            if decision.refusal is Refusal.ERROR:
                await self._bounce_local(stanza, decision.error_condition or "not-allowed",
                                         decision.reason)
            return
        for effect in decision.effects:
            if effect is SideEffect.RECORD_AUTHORIZATION:
                await self.store.allow(local_user, remote_bare, "subscription")
            elif effect is SideEffect.REVOKE_AUTHORIZATION:
                await self.store.revoke(local_user, remote_bare)
        if decision.strip_status:
            stanza = strip_status(stanza)
        self._send_xmpp(stanza)

    def bounce(self, stanza: Element, condition: str, text: str) -> None:
        """S2S could not deliver a local user's stanza: tell the sender (RFC 6120 §8.3)."""
        reply = make_error_reply(stanza, condition, text, _error_type(condition))
        if reply is None:
            log_event(log, logging.INFO, "s2s.dropped_error", condition=condition, reason=text,
                      to=stanza.get("to"))
            return
        sender_domain = (stanza.get("from") or "").partition("/")[0].rpartition("@")[2]
        if sender_domain not in self.config.domains:
            # An error reply we generated toward a remote sender failed too: log only
            # (never answer an error with an error).
            log_event(log, logging.INFO, "s2s.undeliverable", to=stanza.get("to"),
                      condition=condition, reason=text)
            return
        task = asyncio.get_running_loop().create_task(self._deliver_bounce(reply, condition, text))
        self._bounces.add(task)
        task.add_done_callback(self._bounces.discard)

    async def _deliver_bounce(self, reply: Element, condition: str, text: str) -> None:
        try:
            await self.backend.deliver(reply)
            log_event(log, logging.INFO, "s2s.bounced", to=reply.get("to"),
                      condition=condition, reason=text)
        except DeliveryError as exc:
            log_event(log, logging.WARNING, "s2s.bounce_failed", to=reply.get("to"),
                      condition=condition, reason=text, backend_error=exc.condition)

    async def _bounce_local(self, stanza: Element, condition: str, text: str) -> None:
        reply = make_error_reply(stanza, condition, text, _error_type(condition))
        if reply is not None:
            with contextlib.suppress(DeliveryError):
                await self.backend.deliver(reply)


def _error_type(condition: str) -> str:
    # RFC 6120 §8.3.3: the usual type for each condition we generate.
    if condition in ("remote-server-timeout", "resource-constraint", "internal-server-error"):
        return "wait"
    if condition in ("bad-request", "jid-malformed"):
        return "modify"
    return "cancel"
