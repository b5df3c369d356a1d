"""Our outbound S2S streams: opening one for a session, and what its events mean.

A session (:mod:`gateway.net.outbound_sessions`) that has stanzas and no stream gets a
connect task here: after the partner's backoff (:mod:`gateway.net.backoff`), the connect
loop of :mod:`gateway.net.connector` (DNS SRV, RFC 2782 / XEP-0368; DANE, RFC 7673; Happy
Eyeballs, RFC 8305) with a :class:`SessionDialer` that makes each attempt's stream and
connection. The stream's events then settle the attempt (authenticated, refused, closed)
and feed the session: its queue flushes once the pair is authenticated (RFC 6120 §6,
XEP-0220), is bounced when the pair fails (RFC 6120 §8.3.3), and acknowledgements
(XEP-0198) let more through. Answers to our ``db:verify`` requests (XEP-0220 §2.1.2) go
back to the inbound stream that asked, through :class:`InboundForOutbound`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Protocol

from gateway.dns.dane import DaneExpectation
from gateway.dns.resolver import Resolver
from gateway.dns.srv import ConnectTarget
from gateway.logs import log_event
from gateway.net.connection import StreamConnection
from gateway.net.connector import Attempt, Outcome, connect
from gateway.net.links import Links, S2SSettings, dispatcher
from gateway.policy.refusals import bounce_for
from gateway.xmpp.events import (
    BidiNegotiated,
    DialbackVerifyAnswered,
    PairAuthenticated,
    PairFailed,
    StanzasAcked,
    StreamClosed,
)
from gateway.xmpp.outbound import OutboundStream

if TYPE_CHECKING:
    from gateway.config.model import PartnerPolicy
    from gateway.net.outbound_sessions import OutboundSession

log = logging.getLogger("gateway.s2s")


class InboundForOutbound(Protocol):
    """What the outbound side asks of the inbound streams
    (:class:`gateway.net.inbound_streams.InboundStreams` answers)."""

    def bidi_carrier(self, local: str, remote: str) -> StreamConnection | None: ...

    def hold_reading_from(self, remote: str, held: bool) -> None: ...

    def answer_verify(self, local: str, remote: str, stream_id: str, valid: bool | None,
                      condition: str, text: str) -> None: ...


class SessionsForLinks(Protocol):
    """What the outbound streams ask of the sessions they carry."""

    def find(self, local: str, remote: str) -> OutboundSession | None: ...

    def carried_by(self, conn: StreamConnection) -> list[OutboundSession]: ...

    def flush(self, session: OutboundSession) -> None: ...

    def bounce_queue(self, session: OutboundSession, condition: str, reason: str) -> None: ...

    def fail(self, session: OutboundSession, condition: str, reason: str, *,
             count: bool = False) -> None: ...

    def on_acked(self, conn: StreamConnection, event: StanzasAcked) -> None: ...

    def on_writable(self, conn: StreamConnection) -> None: ...

    def link_ended(self, conn: StreamConnection) -> None: ...


class OutboundLinks:
    """Our outbound streams by connection, typed, and the tasks that open them."""

    def __init__(self, settings: S2SSettings, links: Links, inbound: InboundForOutbound,
                 sessions: SessionsForLinks, resolver: Resolver) -> None:
        self.settings = settings
        self.links = links
        self.inbound = inbound
        self.sessions = sessions
        self.resolver = resolver
        self.streams: dict[StreamConnection, OutboundStream] = {}
        self.reading_paused = False
        self.on_event = dispatcher({
            **links.common_handlers(),
            StanzasAcked: sessions.on_acked,
            PairFailed: self._on_pair_failed,
            DialbackVerifyAnswered: self._on_verify_answered,
            PairAuthenticated: self._on_authenticated,
            BidiNegotiated: self._on_bidi,
            StreamClosed: self._on_closed,
        })

    def stream_of(self, conn: StreamConnection) -> OutboundStream | None:
        """``conn``'s stream when it is one of ours (not a peer's bidi inbound stream)."""
        return self.streams.get(conn)

    def set_reading_paused(self, paused: bool) -> None:
        """Router backpressure: an outbound stream with XEP-0288 bidi brings stanzas in."""
        self.reading_paused = paused
        for conn, stream in self.streams.items():
            if stream.bidi:
                conn.set_reading(not paused)

    # ------------------------------------------------------------------ connecting

    def ensure_connecting(self, session: OutboundSession) -> None:
        if session.task is not None and not session.task.done():
            return
        if session.connection is not None and not session.connection.stream.closed:
            return  # negotiating; the queue flushes on PairAuthenticated
        session.task = asyncio.get_running_loop().create_task(
            self._connect(session), name=f"s2s-connect-{session.local}-{session.remote}"
        )

    async def _connect(self, session: OutboundSession) -> None:
        delay = session.backoff.waiting(time.monotonic())
        if delay:  # the last round failed: the next one starts no earlier than this
            await asyncio.sleep(delay)
        started = time.monotonic()
        partner = self.settings.partner_for(session.remote)
        if partner is None:
            self._unreachable(session, "not-allowed", f"{session.remote} is no longer a partner")
            return
        outcome = await connect(session.remote, partner, self.resolver,
                                self.settings.config.limits.connect_timeout,
                                SessionDialer(self, session, partner))
        if outcome.ok:
            if self.links.metrics is not None:
                self.links.metrics.handshake(time.monotonic() - started, outcome.method)
            return
        if outcome.dns_failed:
            self.links.count("dns_failures", session.remote)
        if outcome.unreachable:
            self._unreachable(session, outcome.condition, outcome.reason)
        else:  # a failed negotiation: counted as its pair failed
            self.sessions.fail(session, outcome.condition, outcome.reason)

    def _unreachable(self, session: OutboundSession, condition: str, reason: str) -> None:
        """The session failed before any stream negotiated (no partner, DNS, no target
        answered): counted as an S2S failure, under the condition its stanzas bounce with
        (a failed negotiation is counted as its pair fails)."""
        self.sessions.fail(session, condition, reason, count=True)

    def open(self, session: OutboundSession, stream: OutboundStream) -> StreamConnection:
        """The connection for a new outbound ``stream`` of ``session``."""
        conn = StreamConnection(stream, self.on_event, self._on_gone)
        conn.on_writable = self.sessions.on_writable
        self.links.connections.add(conn)
        self.streams[conn] = stream
        return conn

    def _on_gone(self, conn: StreamConnection) -> None:
        stream = self.streams.pop(conn, None)
        self.links.ended(conn)
        if stream is not None:
            for session in self.sessions.carried_by(conn):
                _attempt_lost(session, conn, stream, stream.close_reason or "closed")
        self.sessions.link_ended(conn)

    # ------------------------------------------------------------------ events

    def _on_authenticated(self, conn: StreamConnection, event: PairAuthenticated) -> None:
        self.links.authenticated(conn, event, "outbound")
        session = self.sessions.find(event.local_domain, event.remote_domain)
        if session is None:
            return
        session.connection = conn
        session.backoff.succeeded()
        if session.attempt is not None:
            session.attempt.settle(Outcome(True, method=str(event.method)))
        self.sessions.flush(session)

    def _on_bidi(self, conn: StreamConnection, event: BidiNegotiated) -> None:
        self.links.on_bidi(conn, event)
        if self.reading_paused:
            conn.set_reading(False)  # it brings stanzas in now: router backpressure

    def _on_closed(self, conn: StreamConnection, event: StreamClosed) -> None:
        stream = self.streams[conn]
        session = self.sessions.find(stream.local_domain or "", stream.remote_domain or "")
        if session is not None:
            _attempt_lost(session, conn, stream, event.reason)

    def _on_verify_answered(self, conn: StreamConnection, event: DialbackVerifyAnswered) -> None:
        self.inbound.answer_verify(event.local_domain, event.remote_domain, event.stream_id,
                                   event.valid, "remote-connection-failed", event.error)

    def _on_pair_failed(self, conn: StreamConnection, event: PairFailed) -> None:
        log_event(log, logging.WARNING, "s2s.refused", **conn.log_fields(),
                  pair=f"{event.local_domain}->{event.remote_domain}",
                  condition=event.condition, reason=event.reason)
        self.links.count("refusals", event.reason.split(":")[0][:60])
        session = self.sessions.find(event.local_domain, event.remote_domain)
        stream = self.streams.get(conn)
        retry = stream is not None and not stream.peer_header_received
        trying = session.attempt if session is not None else None
        attempt = trying is not None and trying.conn is conn and not trying.outcome.done()
        if not (attempt and retry):  # else the next target may still succeed
            self.links.count("s2s_failures", bounce_for(
                event.condition, event.reason, event.local_domain, event.remote_domain)[0])
        if session is None:
            return
        if attempt:
            assert trying is not None
            trying.settle(Outcome(False, event.condition, event.reason, retry=retry))
        elif session.connection is conn:
            self.sessions.bounce_queue(session, *bounce_for(event.condition, event.reason,
                                                            session.local, session.remote))
            if (event.remote_domain, event.local_domain) != (conn.stream.remote_domain,
                                                             conn.stream.local_domain):
                session.connection = None  # a piggybacked pair: next time, a new stream


def _attempt_lost(session: OutboundSession, conn: StreamConnection, stream: OutboundStream,
                  reason: str) -> None:
    """``conn`` closed while it was the session's connection attempt: the attempt failed,
    and the connect loop may try the next target if the peer never answered."""
    attempt = session.attempt
    if attempt is not None and attempt.conn is conn:
        attempt.settle(Outcome(False, "remote-server-not-found", reason,
                               retry=not stream.peer_header_received))


class SessionDialer:
    """The connect loop's attempts for one session (a :class:`~gateway.net.connector.Dialer`)."""

    def __init__(self, links: OutboundLinks, session: OutboundSession,
                 partner: PartnerPolicy) -> None:
        self.links = links
        self.session = session
        self.partner = partner

    def open(self, target: ConnectTarget, address: str,
             expectation: DaneExpectation | None) -> Attempt:
        session = self.session
        loop = asyncio.get_running_loop()
        stream = OutboundStream(
            self.links.settings.ctx, local_domain=session.local, remote_domain=session.remote,
            partner=self.partner, now=loop.time(), direct_tls=target.direct_tls,
            dane_expectation=expectation,
        )
        conn = self.links.open(session, stream)
        attempt = Attempt(target, address, stream, conn, loop.create_future())
        session.attempt = attempt
        return attempt

    def unreachable(self, target: ConnectTarget, address: str, reason: str) -> None:
        log_event(log, logging.INFO, "s2s.connect_failed", peer=self.session.remote,
                  direction="outbound", target=f"{target.host}[{address}]:{target.port}",
                  reason=reason)

    def connected(self, attempt: Attempt) -> None:
        """This stream now carries the session, and the db:verify requests that waited
        for a connection (XEP-0220 §2.1.2)."""
        session = self.session
        session.connection = attempt.conn
        for request in session.pending_verifies:
            attempt.stream.request_verify(*request)
        session.pending_verifies = []
        attempt.conn.pump()
        log_event(log, logging.DEBUG, "s2s.connected", peer=session.remote,
                  direction="outbound", target=attempt.where, source=attempt.target.source)

    def ended(self, attempt: Attempt, outcome: Outcome) -> None:
        if not outcome.ok and self.session.connection is attempt.conn:
            self.session.connection = None
