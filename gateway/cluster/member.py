"""One gateway node in a cluster of nodes serving the same domains.

The node heartbeats into the shared store (:mod:`gateway.store.membership`) and, on the
same tick, claims the SIP presence watches of nodes whose lease ran out (or that handed
them over while draining) and gives them to the SIP backend to subscribe again. All the
state is in the database; this module is only the timer and the glue.

Why claims ride on the heartbeat: a survivor must re-subscribe "within the lease time";
claiming every ``heartbeat_interval`` bounds the takeover at ``lease + heartbeat_interval``
after the dead node's last heartbeat, with no extra timer.

Reconciliation: an XMPP user's ``unsubscribe`` may reach another node than the one holding
the SIP dialog (partners pick any SRV target); that node deletes the watch row. Every
:data:`RECONCILE_EVERY` heartbeats the holder compares the dialogs it holds with the rows
it owns and ends those whose row is gone (or was claimed by another node) in two
consecutive checks (one check could race a row still being written).

Self-fencing: a node that cannot write its heartbeat for longer than the lease must assume
the others consider it dead and have claimed its watches; it drops its own SIP watch
dialogs locally so that a SIP user's presence is not watched twice, and
claims them back (or others keep them) once the database answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from gateway.backend import WatchHolder
from gateway.config.model import ClusterSettings
from gateway.logs import log_event
from gateway.store.authorizations import StoreError, normalize_bare_jid
from gateway.store.membership import RUNNING, NodeReport
from gateway.store.notifiers import AsyncNotifierStore, NotifierRecord
from gateway.store.protocols import AsyncMembership, AsyncWatchStore, Pair

log = logging.getLogger("gateway.cluster")
RECONCILE_EVERY = 5  # heartbeats


class ClusterStore(AsyncMembership, AsyncWatchStore, AsyncNotifierStore, Protocol):
    """What a node's membership reads and writes."""


class ClusterMember:
    """Heartbeat, watch claims and self-fencing of this node (an asyncio task)."""

    def __init__(self, store: ClusterStore, settings: ClusterSettings,
                 report: Callable[[str], NodeReport], watches: WatchHolder) -> None:
        self.store = store
        self.settings = settings
        self.report = report  # state -> this node's report
        self.watches = watches  # the SIP side's watch dialogs
        self.state = RUNNING
        self._ticks = 0
        self._stale: set[Pair] = set()
        self.claimed = 0
        self.fenced = False
        self._last_beat = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def start(self) -> list[Pair]:
        """First heartbeat and claim; returns the claimed watches (the backend has not
        started yet and restores them with its own). Raises StoreError."""
        await self.store.heartbeat(self.report(self.state))
        self._last_beat = time.monotonic()
        claimed = await self.store.claim_watches(self.settings.lease)
        # The phones' dialogs claimed now are this node's rows: the SIP side resumes
        # every row it owns when it starts.
        await self.store.claim_notifiers(self.settings.lease)
        self.claimed += len(claimed)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cluster")
        return claimed

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            await self.tick()

    async def tick(self) -> None:
        try:
            await self.store.heartbeat(self.report(self.state))
            claimed = [] if self.state != RUNNING else \
                await self.store.claim_watches(self.settings.lease)
            dialogs: list[NotifierRecord] = [] if self.state != RUNNING else \
                await self.store.claim_notifiers(self.settings.lease)
        except StoreError as exc:
            silent = time.monotonic() - self._last_beat
            if not self._failing:
                log_event(log, logging.WARNING, "cluster.heartbeat_failed", node=self.node_id,
                          reason=str(exc))
                self._failing = True
            if silent > self.settings.lease and not self.fenced:
                self.fenced = True
                log_event(log, logging.WARNING, "cluster.fenced", node=self.node_id,
                          silent_seconds=f"{silent:.1f}", reason="no heartbeat within the "
                          "lease: other nodes may have taken over this node's SIP watches")
                log_event(log, logging.WARNING, "cluster.watches_dropped", node=self.node_id,
                          count=self.watches.drop_watches(),
                          phone_subscriptions=self.watches.drop_notifiers())
            return
        self._last_beat = time.monotonic()
        if self._failing:
            log_event(log, logging.INFO, "cluster.heartbeat_restored", node=self.node_id)
            self._failing = False
        if self.fenced:
            self.fenced = False
            # What is still ours (nobody claimed it while we were away) comes back.
            claimed = [*claimed, *await self._own_watches()]
            dialogs = [*dialogs, *await self._own_notifiers()]
        if claimed:
            self.claimed += len(claimed)
            log_event(log, logging.INFO, "cluster.watches_claimed", node=self.node_id,
                      count=len(claimed))
            self._take_over(claimed)
        if dialogs:
            # A dead node's phones learn nothing until a NOTIFY reaches them: go on
            # notifying them here, in their dialogs (gateway.sip.notifying.resume).
            resumed = self.watches.take_over_notifiers(dialogs) \
                if self.state == RUNNING else 0
            log_event(log, logging.INFO, "cluster.phone_subscriptions_claimed",
                      node=self.node_id, claimed=len(dialogs), resumed=resumed)
        self._ticks += 1
        if self._ticks % RECONCILE_EVERY == 0 and self.state == RUNNING:
            await self.reconcile()

    def _take_over(self, pairs: list[Pair]) -> None:
        taken = self.watches.take_over_watches(pairs) if self.state == RUNNING else 0
        log_event(log, logging.INFO, "cluster.watches_taken_over", node=self.node_id,
                  claimed=len(pairs), subscribing=taken)

    async def reconcile(self) -> None:
        """End the dialogs whose watch row this node no longer owns (twice in a row)."""
        try:
            owned = set(await self.store.list_watches())
        except StoreError:
            return  # the heartbeat path reports database trouble
        held = {(normalize_bare_jid(w), normalize_bare_jid(u))
                for w, u in self.watches.held_watches()}
        stale = held - owned
        lost = sorted(stale & self._stale)
        self._stale = stale - set(lost)
        if lost:
            log_event(log, logging.INFO, "cluster.watches_gone", node=self.node_id,
                      count=len(lost), reason="unsubscribed through another node, or "
                      "claimed by another node")
            self.watches.drop_watches(lost)

    async def _own_notifiers(self) -> list[NotifierRecord]:
        with contextlib.suppress(StoreError):
            return list(await self.store.list_notifiers())
        return []

    async def _own_watches(self) -> list[Pair]:
        with contextlib.suppress(StoreError):
            return list(await self.store.list_watches())
        return []

    @property
    def node_id(self) -> str:
        return self.store.node_id

    async def set_state(self, state: str) -> None:
        """Announce a state change now rather than at the next tick."""
        self.state = state
        try:
            await self.store.heartbeat(self.report(state))
        except StoreError as exc:
            log_event(log, logging.WARNING, "cluster.heartbeat_failed", node=self.node_id,
                      state=state, reason=str(exc))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
