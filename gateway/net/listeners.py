"""Listening for peers: the sockets on port 5269 (and direct TLS ones, XEP-0368), the
admission of each connection, and what an inbound stream's events mean.

A peer's connection is admitted or refused before any byte is read (connection limits,
RFC 6120 §13.12), then carries an :class:`~gateway.xmpp.inbound.InboundStream`. Its
events are answered here; where one concerns our sending side (a dialback key to verify
with the claimed domain's Authoritative Server, XEP-0220 §2.1.2; a stream that will carry
our stanzas too, XEP-0288; acknowledgements of what we sent over it, XEP-0198) it goes to
the outbound sessions through :class:`SessionsForInbound`, the only thing this side
knows of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Protocol

from gateway.logs import log_event
from gateway.net.connection import StreamConnection
from gateway.net.inbound_streams import InboundStreams
from gateway.net.links import Links, S2SSettings, dispatcher
from gateway.policy.refusals import is_policy_failure, setting_to_change
from gateway.xmpp.events import (
    BidiNegotiated,
    DialbackVerifyNeeded,
    PairAuthenticated,
    StanzasAcked,
    StreamClosed,
)
from gateway.xmpp.inbound import InboundStream

log = logging.getLogger("gateway.s2s")

PEER_NOT_READING = "peer-not-reading"


class SessionsForInbound(Protocol):
    """What the inbound side asks of the outbound sessions."""

    def request_verify(self, local: str, remote: str, stream_id: str, key: str) -> None:
        """Ask ``remote``'s Authoritative Server whether ``key`` is valid for the stream
        ``stream_id`` (XEP-0220 §2.1.2); the answer comes to
        :meth:`InboundStreams.answer_verify`."""
        ...

    def carry_over_bidi(self, conn: StreamConnection, local: str, remote: str) -> None:
        """``conn``, an inbound stream with XEP-0288 bidi, authenticated ``remote`` →
        ``local``: it may carry the ``local`` → ``remote`` session."""
        ...

    def on_acked(self, conn: StreamConnection, event: StanzasAcked) -> None:
        """The peer acknowledged stanzas we sent over ``conn`` (XEP-0198)."""
        ...

    def link_ended(self, conn: StreamConnection) -> None:
        """``conn`` is gone: the sessions it carried need another link, and what it left
        unacknowledged is sent again or bounced."""
        ...


class Listeners:
    """The listening sockets and the inbound connections they accept."""

    def __init__(self, settings: S2SSettings, links: Links, inbound: InboundStreams,
                 sessions: SessionsForInbound) -> None:
        self.settings = settings
        self.links = links
        self.inbound = inbound
        self.sessions = sessions
        self._servers: list[asyncio.base_events.Server] = []
        self._on_event = dispatcher({
            **links.common_handlers(),
            StanzasAcked: sessions.on_acked,
            DialbackVerifyNeeded: self._on_verify_needed,
            PairAuthenticated: self._on_authenticated,
            BidiNegotiated: links.on_bidi,
            StreamClosed: self._on_closed,
        })

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for address in self.settings.config.listen:
            server = await loop.create_server(
                functools.partial(self._accept, address.direct_tls),
                host=address.host, port=address.port, reuse_address=True,
            )
            self._servers.append(server)
            for sock in server.sockets:
                log_event(log, logging.INFO, "s2s.listening", address=sock.getsockname()[:2],
                          direct_tls=address.direct_tls or None)

    def stop_accepting(self) -> None:
        """Close the listening sockets: a partner connecting now is refused and tries
        its next SRV target (RFC 6120 §3.2); established streams carry on."""
        self.inbound.accepting = False
        for server in self._servers:
            server.close()

    async def wait_closed(self) -> None:
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [s.getsockname()[:2] for server in self._servers for s in server.sockets]

    def _accept(self, direct_tls: bool) -> asyncio.Protocol:
        stream = InboundStream(self.settings.ctx, now=asyncio.get_running_loop().time(),
                               direct_tls=direct_tls)
        conn = StreamConnection(stream, self._on_event, self._on_gone,
                                rate_limit=self.settings.config.limits.inbound_bytes_per_second)
        self.links.connections.add(conn)
        self.inbound.add(conn, stream)
        return AdmissionGuard(self, conn)

    def refused(self, conn: StreamConnection) -> None:
        """The admission guard closed ``conn`` at once."""
        self.links.connections.discard(conn)
        self.inbound.forget(conn)

    def _on_gone(self, conn: StreamConnection) -> None:
        self.links.ended(conn)
        self.inbound.forget(conn)
        self.sessions.link_ended(conn)

    # ------------------------------------------------------------------ events

    def _on_verify_needed(self, conn: StreamConnection, event: DialbackVerifyNeeded) -> None:
        """Receiving Server role: ask the Authoritative Server (XEP-0220 §2.1.2)."""
        log_event(log, logging.DEBUG, "s2s.dialback_verify", **conn.log_fields(),
                  claimed=event.remote_domain)
        self.inbound.expect_verify(
            conn, (event.local_domain, event.remote_domain, event.stream_id))
        self.sessions.request_verify(event.local_domain, event.remote_domain,
                                     event.stream_id, event.key)

    def _on_authenticated(self, conn: StreamConnection, event: PairAuthenticated) -> None:
        self.links.authenticated(conn, event, "inbound")
        if conn.stream.bidi:  # XEP-0288: the peer's stream carries our stanzas to it too
            self.sessions.carry_over_bidi(conn, event.local_domain, event.remote_domain)

    def _on_closed(self, conn: StreamConnection, event: StreamClosed) -> None:
        """An incoming stream that ended before anything was authenticated because the two
        policies do not meet (we refused, or the peer gave up on what we offer): a WARNING
        naming the partner and the setting to change, not just a closed stream."""
        if conn.stream.pairs or not is_policy_failure(event.reason, event.error):
            return
        fields = conn.log_fields()
        peer = fields.get("peer") or ""
        log_event(log, logging.WARNING, "s2s.policy_mismatch", **fields,
                  by="peer" if event.by_peer else "us", error=event.error or None,
                  reason=event.reason, change=setting_to_change(
                      peer, self.settings.partner_for(peer) if peer else None,
                      f"{event.error} {event.reason}"))


class AdmissionGuard(asyncio.Protocol):
    """Applies connection limits before handing the transport to the stream connection."""

    def __init__(self, listeners: Listeners, conn: StreamConnection) -> None:
        self.listeners = listeners
        self.conn = conn
        self.refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.conn.peer_address = f"{peer[0]}:{peer[1]}" if peer else ""
        inbound = self.listeners.inbound
        refusal = inbound.admit(self.conn)
        if refusal:
            self.refused = True
            log_event(log, logging.WARNING, "s2s.connection_refused", direction="inbound",
                      addr=self.conn.peer_address, reason=refusal)
            self.listeners.refused(self.conn)
            # RFC 6120 §4.9.3.13 policy-violation would need a header; a limit is cheaper
            # to enforce by closing at once.
            transport.close()
            return
        self.conn.connection_made(transport)
        if inbound.reading_paused:
            self.conn.set_reading(False)

    def data_received(self, data: bytes) -> None:
        if not self.refused:
            self.conn.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self.refused else self.conn.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.refused:
            self.conn.connection_lost(exc)

    # The peer does not read what we write (our buffer passed its high-water mark): stop
    # reading from it too, as one more reason among the connection's others (router
    # backpressure, the rate limit, a congested queue), so that the buffer draining
    # resumes reading only when no other reason holds.
    def pause_writing(self) -> None:
        if not self.refused:
            self.conn.pause_writing()
            self.conn.set_reading(False, PEER_NOT_READING)

    def resume_writing(self) -> None:
        if not self.refused:
            self.conn.set_reading(True, PEER_NOT_READING)
            self.conn.resume_writing()
