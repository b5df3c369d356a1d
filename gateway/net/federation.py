"""The S2S service: the XMPP side of the gateway, as one object for the rest of it.

It implements :class:`gateway.contracts.XmppSide` (what the router asks: send a stanza,
stop reading) and :class:`gateway.contracts.S2SControl` (what the assembly, the daemon,
the drain and the admin socket ask: start, stop, reload, status) and wires the parts
that do the work, each knowing the others only through a small Protocol:

* :mod:`gateway.net.listeners` — the listening sockets, admission (connection limits,
  RFC 6120 §13.12) and what an inbound stream's events mean;
* :mod:`gateway.net.inbound_streams` — the open inbound streams and what the outbound
  side may ask of them: dialback answers (XEP-0220 §2.1.2), a bidi carrier (XEP-0288),
  holding a congested domain's streams;
* :mod:`gateway.net.outbound_sessions` — one session per (local, remote) domain pair:
  queue, flush, XEP-0198 acknowledgement and take-back, bounces (RFC 6120 §8.3.3),
  congestion, bidi adoption and piggybacking (XEP-0220 §2.4);
* :mod:`gateway.net.outbound_links` — our outbound streams: the connect task per session
  (backoff, :mod:`gateway.net.connector`: SRV, DANE, Happy Eyeballs) and their events;
* :mod:`gateway.net.links` — what both directions share: the configuration, the open
  connections, the path of received stanzas to the router.

Inbound and outbound are kept apart: each direction has its own table of streams, typed,
and its own table of what their events mean, so nothing asks a stream which way it goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any
from xml.etree.ElementTree import Element

from gateway.auth.dialback_key import DialbackKeyGenerator
from gateway.config.model import GatewayConfig, PartnerPolicy
from gateway.contracts import OnSent, RouterForS2S
from gateway.dns.resolver import Resolver
from gateway.net.connection import StreamConnection
from gateway.net.inbound_streams import InboundStreams
from gateway.net.links import Links, S2SSettings
from gateway.net.listeners import Listeners
from gateway.net.outbound_sessions import OutboundSession, OutboundSessions
from gateway.net.resent import RecentStanzas
from gateway.xmpp.stream import StreamContext

if TYPE_CHECKING:
    from gateway.metrics import Metrics

class S2SService:
    """The XMPP side (implements :class:`gateway.contracts.S2SControl`): accepted
    stanzas go to ``router.from_xmpp``, what cannot be sent to ``router.bounce``."""

    def __init__(
        self,
        config: GatewayConfig,
        keys: DialbackKeyGenerator,
        resolver: Resolver,
        router: RouterForS2S,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = S2SSettings(config, keys)
        self.resolver = resolver
        self.links = Links(router, metrics)
        self.inbound = InboundStreams(self.settings)
        self.outbound = OutboundSessions(self.settings, self.links, self.inbound, resolver)
        self.listeners = Listeners(self.settings, self.links, self.inbound, self.outbound)

    # ------------------------------------------------------------------ config

    @property
    def config(self) -> GatewayConfig:
        return self.settings.config

    @property
    def ctx(self) -> StreamContext:
        return self.settings.ctx

    def partner_for(self, domain: str) -> PartnerPolicy | None:
        return self.settings.partner_for(domain)

    def apply(self, config: GatewayConfig) -> int:
        """Reload (see :meth:`gateway.contracts.S2SControl.apply`)."""
        self.settings.apply(config)  # may raise: first

        def no_longer_permitted(conn: StreamConnection) -> bool:
            for (remote, _local), method in conn.stream.pairs.items():
                partner = self.partner_for(remote)
                if partner is None or not partner.negotiation.permits(method):
                    return True
            return False

        return self.links.close(
            no_longer_permitted, "policy-violation",
            "partner removed or its policy changed by a configuration reload")

    # ------------------------------------------------------------------ XmppSide

    def send(self, stanza: Element, on_sent: OnSent = None) -> None:
        """Route one stanza from a local user toward its XMPP domain (never blocks).

        ``on_sent`` is told True once the peer server has the stanza (acknowledged under
        stream management, else written), False once it was bounced to its sender (the
        error reply delivered)."""
        self.outbound.send(stanza, on_sent)

    def set_reading_paused(self, paused: bool) -> None:
        """Backpressure from the router: stop (or resume) reading the streams that bring
        stanzas in (inbound ones, and outbound ones with XEP-0288 bidi)."""
        self.inbound.set_reading_paused(paused)
        self.outbound.set_reading_paused(paused)

    @property
    def reading_paused(self) -> bool:
        return self.inbound.reading_paused

    # ------------------------------------------------------------------ listening

    async def start(self) -> None:
        await self.listeners.start()

    def stop_accepting(self) -> None:
        """Close the listening sockets (drain): a partner connecting now is
        refused and tries the next SRV target; established streams carry on."""
        self.listeners.stop_accepting()

    @property
    def listening_addresses(self) -> list[tuple[str, int]]:
        return self.listeners.addresses

    # ------------------------------------------------------------------ status

    @property
    def connections(self) -> set[StreamConnection]:
        """Every open stream, both directions."""
        return self.links.connections

    @property
    def sessions(self) -> dict[tuple[str, str], OutboundSession]:
        return self.outbound.sessions

    @property
    def recent(self) -> RecentStanzas:
        return self.links.recent

    def describe(self) -> list[dict[str, Any]]:
        rows = []
        for conn in sorted(self.connections, key=lambda c: c.conn_id):
            row = conn.describe()
            row["queue"] = self.outbound.queue_length(conn)
            rows.append(row)
        return rows

    def backoffs(self) -> dict[str, dict[str, object]]:
        """Partners whose last connection round failed: failures in a row, seconds
        before the next round may start, and why the last one failed (for ``status``)."""
        now = time.monotonic()
        return {f"{s.local}->{s.remote}": s.backoff.describe(now)
                for s in self.sessions.values() if s.backoff.failures}

    @property
    def streams(self) -> int:
        return len(self.connections)

    @property
    def inbound_streams(self) -> int:
        return len(self.inbound)

    @property
    def queued(self) -> int:
        """Stanzas waiting in outbound session queues, all domains."""
        return sum(session.queued() for session in self.sessions.values())

    def queues(self) -> dict[str, int]:
        return {f"{s.local}->{s.remote}": s.queued()
                for s in self.sessions.values() if s.queue}

    # ------------------------------------------------------------------ shutdown

    def close_inbound(self, text: str) -> int:
        """Close every inbound stream gracefully (RFC 6120 §4.4: stanzas already in
        flight are still read and routed; the partner opens its next stream elsewhere)."""
        return self.links.close(lambda c: c in self.inbound.streams, "", text)

    async def stop(self, grace: float = 5.0) -> None:
        """Graceful shutdown: stop accepting, give queued stanzas a chance, bounce the rest,
        close every stream with ``</stream:stream>``, then drop what is left."""
        self.listeners.stop_accepting()
        deadline = time.monotonic() + grace
        await self.outbound.give_up(max(0.0, min(grace / 2, deadline - time.monotonic())))
        # XEP-0198: what was sent and not yet acknowledged gets its acknowledgement
        # (asked for now) before the links close; what is still unacknowledged then is
        # bounced as each link goes (OutboundSessions.link_ended).
        budget_end = time.monotonic() + max(0.0, min(grace / 2, deadline - time.monotonic()))
        while time.monotonic() < budget_end and any(
                c.stream.unacked and not c.stream.closed for c in self.connections):
            for conn in self.connections:
                if conn.stream.unacked:
                    conn.pump()
            await asyncio.sleep(0.02)
        self.links.close(lambda c: True, "system-shutdown", "the gateway is shutting down")
        waits = [c.closed.wait() for c in list(self.connections)]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits),
                                       max(0.1, deadline - time.monotonic()))
        for conn in list(self.connections):
            conn.abort()
        await self.listeners.wait_closed()
