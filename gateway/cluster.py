"""One gateway node in a cluster of nodes serving the same domains (issue 15).

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
dialogs locally (``on_fenced``) so that a SIP user's presence is not watched twice, and
claims them back (or others keep them) once the database answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.config.model import ClusterSettings, GatewayConfig
from gateway.logs import log_event
from gateway.store.authorizations import StoreError, normalize_bare_jid
from gateway.store.membership import DRAINING, RUNNING, STOPPED, NodeReport

log = logging.getLogger("gateway.cluster")
RECONCILE_EVERY = 5  # heartbeats


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_fingerprint(config: GatewayConfig) -> dict[str, Any]:
    """What the nodes of one cluster must agree on (``check config --cluster``): served
    domains, the partner entries (by digest: the list can be long) and the dialback secret
    (by digest: XEP-0185 keys issued by one node are verified by another only if they share
    it; the secret itself never leaves the host)."""
    partners = sorted(
        (p.primary_domain, str(p.partner_type), str(p.tls), str(p.sasl), p.dialback,
         sorted(p.additional_domains)) for p in config.partners)
    secret = config.dialback.secret
    return {
        "domains": sorted(config.domains),
        "partners": _digest(json.dumps(partners)),
        "partner_count": len(partners),
        "secret": _digest("xmpp-gateway dialback secret\0" + secret) if secret else "",
    }


def compare_fingerprints(mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """The differences between two nodes' fingerprints, as sentences (empty = agree)."""
    problems = []
    if mine.get("domains") != theirs.get("domains"):
        problems.append(f"serves {', '.join(theirs.get('domains') or []) or 'nothing'} "
                        f"(this configuration: {', '.join(mine.get('domains') or [])})")
    if mine.get("partners") != theirs.get("partners"):
        problems.append(f"has different partner entries ({theirs.get('partner_count', '?')} "
                        f"partners, digest {theirs.get('partners')}; this configuration: "
                        f"{mine.get('partner_count')}, digest {mine.get('partners')})")
    if not theirs.get("secret"):
        problems.append("has no dialback.secret (a random one per start): keys it issues "
                        "cannot be verified by other nodes")
    elif mine.get("secret") != theirs.get("secret"):
        problems.append("uses a different dialback.secret (digests differ): a partner "
                        "verifying a key with another node gets 'invalid'")
    return problems


class ClusterMember:
    """Heartbeat, watch claims and self-fencing of this node (an asyncio task)."""

    def __init__(self, store: Any, settings: ClusterSettings,
                 report: Callable[[str], NodeReport],
                 on_claimed: Callable[[list[tuple[str, str]]], None],
                 on_fenced: Callable[[], None] | None = None,
                 held: Callable[[], list[tuple[str, str]]] | None = None,
                 on_lost: Callable[[list[tuple[str, str]]], None] | None = None) -> None:
        self.store = store  # AsyncAuthorizationStore over a ClusterStore
        self.settings = settings
        self.report = report  # state -> this node's report
        self.on_claimed = on_claimed
        self.on_fenced = on_fenced
        self.held = held  # the watches whose SIP dialog this node holds
        self.on_lost = on_lost  # end these dialogs: their row is gone or not ours
        self.state = RUNNING
        self._ticks = 0
        self._stale: set[tuple[str, str]] = set()
        self.claimed = 0
        self.fenced = False
        self._last_beat = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def start(self) -> list[tuple[str, str]]:
        """First heartbeat and claim; returns the claimed watches (the backend has not
        started yet and restores them with its own). Raises StoreError."""
        await self.store.heartbeat(self.report(self.state))
        self._last_beat = time.monotonic()
        claimed = await self.store.claim_watches(self.settings.lease)
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
                if self.on_fenced is not None:
                    self.on_fenced()
            return
        self._last_beat = time.monotonic()
        if self._failing:
            log_event(log, logging.INFO, "cluster.heartbeat_restored", node=self.node_id)
            self._failing = False
        if self.fenced:
            self.fenced = False
            # What is still ours (nobody claimed it while we were away) comes back.
            claimed = [*claimed, *await self._own_watches()]
        if claimed:
            self.claimed += len(claimed)
            log_event(log, logging.INFO, "cluster.watches_claimed", node=self.node_id,
                      count=len(claimed))
            self.on_claimed(claimed)
        self._ticks += 1
        if self._ticks % RECONCILE_EVERY == 0 and self.state == RUNNING:
            await self.reconcile()

    async def reconcile(self) -> None:
        """End the dialogs whose watch row this node no longer owns (twice in a row)."""
        if self.held is None or self.on_lost is None:
            return
        try:
            owned = set(await self.store.list_watches())
        except StoreError:
            return  # the heartbeat path reports database trouble
        held = {(normalize_bare_jid(w), normalize_bare_jid(u)) for w, u in self.held()}
        stale = held - owned
        lost = sorted(stale & self._stale)
        self._stale = stale - set(lost)
        if lost:
            log_event(log, logging.INFO, "cluster.watches_gone", node=self.node_id,
                      count=len(lost), reason="unsubscribed through another node, or "
                      "claimed by another node")
            self.on_lost(lost)

    async def _own_watches(self) -> list[tuple[str, str]]:
        with contextlib.suppress(StoreError):
            return list(await self.store.list_watches())
        return []

    @property
    def node_id(self) -> str:
        return str(self.store.node_id)

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


__all__ = ["DRAINING", "RUNNING", "STOPPED", "ClusterMember", "compare_fingerprints",
           "config_fingerprint"]
