"""Router: between the S2S service (XMPP side) and the local backend (SIP side).

Applies the contact rules (pure functions in :mod:`gateway.policy.contacts`) with the
authorization store, and turns every failure into an XMPP error to the sender
(RFC 6120 §8.3) — a stanza is delivered, refused with an error, or (only where RFC 6121
§8.5.1 demands silence) dropped *with a log line saying why*; never lost silently. What
still cannot be delivered or answered is counted in :class:`gateway.drops.DropCounter`.

Its parts, one module each:

* :mod:`~gateway.router.inbound` — XMPP → local: one ordered lane and its worker;
* :mod:`~gateway.router.outbound` — local → XMPP: the fast path, one ordered lane, its
  worker;
* :mod:`~gateway.router.lane` — the ordered queue both use;
* :mod:`~gateway.router.backpressure` — when producers must wait (high/low marks);
* :mod:`~gateway.router.switches` — the per-user federation switch snapshot;
* :mod:`~gateway.router.batch` — authorization writes of a batch in one transaction;
* :mod:`~gateway.router.replies` — error replies and the drops nobody can be told of.

:class:`Router` implements :class:`gateway.contracts.RouterForS2S` and
:class:`gateway.contracts.RouterForBackend`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Protocol
from xml.etree.ElementTree import Element

from gateway.backend import LocalBackend
from gateway.config.model import GatewayConfig
from gateway.contracts import OnDecided, OnSettled, XmppSide
from gateway.drops import DropCounter
from gateway.router.backpressure import HIGH_WATER, LOW_WATER
from gateway.router.batch import AuthorizationBatch
from gateway.router.inbound import STORE_DOWN, InboundRouting
from gateway.router.outbound import OUTBOUND_BATCH, OutboundRouting
from gateway.router.replies import ErrorReplies
from gateway.router.switches import USER_CACHE_SECONDS, SwitchCache
from gateway.store.protocols import AsyncAuthorizations, AsyncUserSwitches
from gateway.xmpp.jid import JidError, domain_of

if TYPE_CHECKING:
    from gateway.metrics import Metrics

__all__ = ["HIGH_WATER", "LOW_WATER", "OUTBOUND_BATCH", "STORE_DOWN", "USER_CACHE_SECONDS",
           "Router", "RouterStore"]


class RouterStore(AsyncAuthorizations, AsyncUserSwitches, Protocol):
    """What the router reads and writes: authorizations and the per-user switches."""


class Router:
    """The contact rules between the two sides (see the module docstring)."""

    def __init__(self, config: GatewayConfig, backend: LocalBackend, store: RouterStore,
                 metrics: Metrics | None = None) -> None:
        self.config = config
        self.drops = DropCounter(metrics)
        self.switches = SwitchCache(store, config.federation.users_enabled_by_default)
        replies = ErrorReplies(backend, self.drops)
        self.inbound = InboundRouting(config, backend, store, self.switches, replies, metrics)
        self.outbound = OutboundRouting(config, backend, self.switches,
                                        AuthorizationBatch(store), replies)
        self._replies = replies
        self._workers: list[asyncio.Task[None]] = []

    async def start(self, xmpp: XmppSide) -> None:
        """Start the workers; replies and routed stanzas toward XMPP go to ``xmpp``."""
        self._workers = [self.inbound.start(xmpp), self.outbound.start(xmpp)]

    def apply(self, config: GatewayConfig) -> None:
        """Reload: new partners and federation settings apply to the next stanza."""
        self.config = self.inbound.config = self.outbound.config = config
        self.switches.apply(config.federation.users_enabled_by_default)

    async def stop(self, grace: float = 3.0) -> None:
        """Finish what is queued (bounded by ``grace``), then stop the workers; what is
        left is counted as dropped (and settled)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain(), grace)
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        for stanza, decided in [*self.outbound.unrouted_in_hand(),
                                *self.outbound.lane.take_all()]:
            self.drops.record("unrouted-at-stop", direction="outbound",
                              sender=stanza.get("from"), recipient=stanza.get("to"))
            if decided is not None:
                decided()
        for item in self.inbound.lane.take_all():
            self.inbound.unrouted(item)
            settled = item[3]
            if settled is not None:
                settled()

    async def _drain(self) -> None:
        while self.inbound.lane.pending or self.outbound.lane.pending:
            await self.inbound.lane.join()
            await self.outbound.lane.join()

    # ------------------------------------------------------------------ RouterForS2S

    def from_xmpp(self, stanza: Element, remote: str, local: str,
                  on_settled: OnSettled = None) -> None:
        """See :meth:`gateway.contracts.RouterForS2S.from_xmpp`."""
        self.inbound.put(stanza, remote, local, on_settled)

    def bounce(self, stanza: Element, condition: str, text: str,
               on_settled: OnSettled = None) -> None:
        """S2S could not deliver a local user's stanza: tell the sender (RFC 6120 §8.3),
        through the inbound lane, in order with what else reaches local users."""
        reply = self._replies.reply(stanza, condition, text, direction="outbound")
        if reply is None:
            if on_settled is not None:
                on_settled()
            return
        try:
            sender_domain = domain_of(stanza.get("from") or "")
        except JidError:
            sender_domain = ""
        if sender_domain not in self.config.domains:
            # An error reply we generated toward a remote sender failed too: nobody to
            # tell (never answer an error with an error).
            self.drops.record("reply-not-deliverable", direction="outbound",
                              sender=stanza.get("from"), recipient=stanza.get("to"),
                              condition=condition, text=text)
            if on_settled is not None:
                on_settled()
            return
        self.inbound.put(reply, "", "", on_settled, (condition, text))

    def s2s_congestion(self, domain: str, congested: bool) -> None:
        self.outbound.s2s_congestion(domain, congested)

    # ------------------------------------------------------------------ RouterForBackend

    def submit_local(self, stanza: Element, on_decided: OnDecided = None) -> None:
        """See :meth:`gateway.contracts.RouterForBackend.submit_local`."""
        self.outbound.submit(stanza, on_decided)

    async def from_local(self, stanza: Element) -> None:
        decided: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def now_decided() -> None:
            if not decided.done():
                decided.set_result(None)

        self.outbound.submit(stanza, now_decided)
        await asyncio.shield(decided)

    def xmpp_congested(self, domain: str) -> bool:
        """Whether senders toward ``domain`` are held back (stream readers paused)."""
        return self.outbound.congested(domain)

    def xmpp_saturated(self, domain: str) -> bool:
        return self.outbound.saturated(domain)

    # ------------------------------------------------------------------ figures

    def forget_cached(self, local_user: str = "") -> None:
        """Another node or process changed the per-user switches."""
        self.switches.forget()

    @property
    def queued(self) -> int:
        """Stanzas queued or in hand in both directions (drain waits for 0; cluster
        heartbeat load)."""
        return self.inbound.lane.pending + self.outbound.lane.pending

    @property
    def delivered(self) -> int:
        return self.inbound.figures.delivered

    @property
    def refused(self) -> int:
        return self.inbound.figures.refused

    @property
    def pressure_episodes(self) -> int:
        return self.inbound.figures.pressure_episodes

    @property
    def inbound_peak(self) -> int:
        return self.inbound.figures.peak

    def describe(self) -> dict[str, int]:
        figures = self.inbound.figures
        return {"delivered": figures.delivered, "refused": figures.refused,
                "pressure_episodes": figures.pressure_episodes, "inbound_peak": figures.peak}
