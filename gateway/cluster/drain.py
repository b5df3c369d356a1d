"""Draining a node: a planned restart without losing a stanza.

1. announce ``draining`` in the cluster table; close the S2S listeners (partners
   connecting now are refused and use the next SRV target) and answer new SIP requests
   with 503 (the proxy's dispatcher fails over to another node);
2. end this node's SIP watch dialogs and hand the watches over in the store: a survivor
   claims them at its next heartbeat and subscribes again;
3. close inbound S2S streams gracefully: stanzas already in flight are still read and
   routed (RFC 6120 §4.4), the partner opens its next stream elsewhere;
4. wait (up to ``cluster.drain_timeout``, at least ``cluster.drain_grace``) until the
   router and S2S queues are empty and the partners closed their side.

The caller stops the node afterwards as usual (which bounces, with an error to the
sender, whatever could still not be delivered).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from gateway.backend import SipSide
from gateway.cluster.member import ClusterMember
from gateway.config.model import ClusterSettings
from gateway.contracts import S2SControl
from gateway.logs import log_event
from gateway.store.authorizations import StoreError
from gateway.store.membership import DRAINING
from gateway.store.protocols import AsyncMembership

log = logging.getLogger("gateway.daemon")

POLL = 0.05


class Queued(Protocol):
    @property
    def queued(self) -> int: ...


async def drain(*, node_id: str, settings: ClusterSettings, s2s: S2SControl, router: Queued,
                backend: SipSide, store: AsyncMembership,
                member: ClusterMember | None) -> None:
    """Drain this node (see the module docstring); ``member`` is None on a lone node."""
    started = time.monotonic()
    log_event(log, logging.INFO, "gateway.draining", node=node_id,
              timeout=settings.drain_timeout)
    if member is not None:
        await member.set_state(DRAINING)
    s2s.stop_accepting()
    backend.set_draining()
    dropped = backend.drop_watches()
    try:
        handed = await store.release_watches() if member is not None else 0
    except StoreError as exc:
        handed = 0
        log_event(log, logging.WARNING, "gateway.drain_handover_failed", node=node_id,
                  reason=str(exc),
                  action="survivors take the watches over when this node's lease ends")
    closed = s2s.close_inbound("this gateway node is draining; reconnect")
    deadline = started + settings.drain_timeout
    grace_end = started + min(settings.drain_grace, settings.drain_timeout)
    while time.monotonic() < deadline:
        idle = not s2s.inbound_streams and not router.queued and not s2s.queued
        if idle and time.monotonic() >= grace_end:
            break
        await asyncio.sleep(POLL)
    log_event(log, logging.INFO, "gateway.drained", node=node_id,
              seconds=f"{time.monotonic() - started:.2f}", watches_dropped=dropped,
              watches_handed_over=handed, inbound_closed=closed,
              still_queued=router.queued + s2s.queued)
