"""S2S service: the XMPP side of the gateway, as the rest of it sees it.

The sans-I/O streams know one connection each; this is the orchestration they cannot do
alone, in two halves kept apart:

* :mod:`gateway.net.inbound_streams` — listeners, admission limits, the streams partners
  open to us, what they send (to the router), when to stop reading them;
* :mod:`gateway.net.outbound_sessions` — one session per (local, remote) domain pair:
  queues, the connect loop (:mod:`gateway.net.connector`), bounces, congestion.

They meet for dialback (XEP-0220 §2.1.2): a verification an inbound stream needs rides
on the outbound session to the claimed domain's authoritative server, and its answer
comes back. The configuration and stream context in force are one
:class:`gateway.net.context.S2SSetup`, replaced whole on reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from xml.etree.ElementTree import Element

from gateway.auth.dialback_key import DialbackKeyGenerator
from gateway.config.model import GatewayConfig, PartnerPolicy
from gateway.contracts import RouterForS2S
from gateway.dns.resolver import Resolver
from gateway.net.connection import StreamConnection
from gateway.net.context import S2SSetup
from gateway.net.inbound_streams import InboundStreams
from gateway.net.outbound_sessions import OutboundSession, OutboundSessions
from gateway.xmpp.stream import S2SStream, StreamContext

if TYPE_CHECKING:
    from gateway.metrics import Metrics

__all__ = ["OutboundSession", "S2SService"]


class S2SService:
    """The XMPP side (implements :class:`gateway.contracts.S2SControl`): accepted
    stanzas go to ``router.from_xmpp``, what cannot be sent to ``router.bounce``."""

    def __init__(self, config: GatewayConfig, keys: DialbackKeyGenerator, resolver: Resolver,
                 router: RouterForS2S, *, metrics: Metrics | None = None) -> None:
        self.setup = S2SSetup(config, keys)  # raises TlsConfigError
        self.resolver = resolver
        self.inbound = InboundStreams(self.setup, router, metrics)
        self.outbound = OutboundSessions(self.setup, resolver, router, self.inbound, metrics)

    @property
    def config(self) -> GatewayConfig:
        return self.setup.config

    @property
    def ctx(self) -> StreamContext:
        return self.setup.ctx

    def partner_for(self, domain: str) -> PartnerPolicy | None:
        return self.setup.partner_for(domain)

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        await self.inbound.start(self.outbound.request_verify)

    def apply(self, config: GatewayConfig) -> int:
        """Reload (see :meth:`gateway.contracts.S2SControl.apply`)."""
        self.setup.apply(config)  # raises before changing anything

        def no_longer_permitted(stream: S2SStream) -> bool:
            for (remote, _local), method in stream.pairs.items():
                partner = self.setup.partner_for(remote)
                if partner is None or not partner.negotiation.permits(method):
                    return True
            return False

        return self._close(self.connections, no_longer_permitted, "policy-violation",
                           "partner removed or its policy changed by a configuration reload")

    def stop_accepting(self) -> None:
        self.inbound.stop_accepting()

    def close_inbound(self, text: str) -> int:
        """Close every inbound stream gracefully (RFC 6120 §4.4: stanzas already in
        flight are still read and routed; the partner opens its next stream elsewhere)."""
        return self._close(list(self.inbound.streams), lambda _stream: True, "", text)

    @staticmethod
    def _close(connections: Any, predicate: Callable[[S2SStream], bool], condition: str,
               text: str) -> int:
        closed = 0
        for conn in list(connections):
            if not conn.stream.closed and predicate(conn.stream):
                conn.stream.close(condition, text)
                conn.pump()
                closed += 1
        return closed

    async def stop(self, grace: float = 5.0) -> None:
        """Graceful shutdown: stop accepting, give queued stanzas a chance, bounce the rest,
        close every stream with ``</stream:stream>``, then drop what is left."""
        self.inbound.stop_accepting()
        deadline = time.monotonic() + grace
        await self.outbound.stop_connecting(max(0.0, min(grace / 2,
                                                         deadline - time.monotonic())))
        connections = self.connections
        self._close(connections, lambda _stream: True, "system-shutdown",
                    "the gateway is shutting down")
        waits = [conn.closed.wait() for conn in connections]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits),
                                       max(0.1, deadline - time.monotonic()))
        for conn in self.connections:
            conn.abort()
        await self.inbound.servers_closed()

    # ------------------------------------------------------------------ XmppSide

    def send(self, stanza: Element) -> None:
        """Route one stanza from a local user toward its XMPP domain (never blocks)."""
        self.outbound.send(stanza)

    def set_reading_paused(self, paused: bool) -> None:
        """Backpressure from the router: stop (or resume) reading inbound streams."""
        self.inbound.set_reading_paused(paused)

    # ------------------------------------------------------------------ figures

    @property
    def connections(self) -> set[StreamConnection]:
        """Every open connection, both directions."""
        return {*self.inbound.streams, *self.outbound.streams}

    @property
    def sessions(self) -> dict[tuple[str, str], OutboundSession]:
        return self.outbound.sessions

    @property
    def reading_paused(self) -> bool:
        return self.inbound.reading_paused

    @property
    def listening_addresses(self) -> list[tuple[str, int]]:
        return self.inbound.listening_addresses

    @property
    def streams(self) -> int:
        return len(self.inbound.streams) + len(self.outbound.streams)

    @property
    def inbound_streams(self) -> int:
        return len(self.inbound.streams)

    @property
    def queued(self) -> int:
        """Stanzas waiting in outbound session queues, all domains."""
        return self.outbound.queued

    def queues(self) -> dict[str, int]:
        return self.outbound.queues()

    def describe(self) -> list[dict[str, Any]]:
        rows = []
        for conn in sorted(self.connections, key=lambda c: c.conn_id):
            row = conn.describe()
            row["queue"] = self.outbound.queue_of(conn)
            rows.append(row)
        return rows
