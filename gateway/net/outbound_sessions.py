"""The outbound half of the S2S service: one session per (local domain, remote domain).

* Stanzas queue while the session is set up (DNS SRV → TCP → negotiation, the loop of
  :mod:`gateway.net.connector`) and flush once the pair is authenticated; on failure
  every queued stanza is bounced to its sender with the RFC 6120 §8.3.3 condition the
  core chose (remote-server-not-found, -timeout, …) — nothing is dropped silently.
* A queue is never refused for being one too many: over ``limits.max_queue_per_domain``
  the domain is *congested*, which holds its sources back (the local side through the
  router, and the streams that domain opened to us) until it drains.
* An open stream to the same peer carries another local domain too (XEP-0220 §2.4).
* **Dialback, Receiving Server role** (XEP-0220 §2.1.2): a ``db:verify`` the inbound
  half needs rides on the session to the claimed domain's authoritative server; the
  answer goes back to the inbound half.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from xml.etree.ElementTree import Element

from gateway.config.model import PartnerPolicy
from gateway.contracts import RouterForS2S
from gateway.dns.resolver import Resolver
from gateway.dns.srv import ConnectTarget
from gateway.logs import log_event
from gateway.net.connection import StreamConnection
from gateway.net.connector import Attempt, Outcome, connect
from gateway.net.context import S2SSetup
from gateway.net.inbound_streams import InboundStreams
from gateway.policy.refusals import POLICY_VIOLATION, bounce_for, setting_to_change
from gateway.xmpp.events import (
    DialbackVerifyAnswered,
    Event,
    PairAuthenticated,
    PairFailed,
    StreamClosed,
    TlsEstablished,
)
from gateway.xmpp.jid import JidError, domain_of
from gateway.xmpp.outbound import NotAuthenticated, OutboundStream

if TYPE_CHECKING:
    from gateway.metrics import Metrics

log = logging.getLogger("gateway.s2s")

FLUSH_SLICE = 256  # stanzas written between checks of the transport's write buffer
VerifyRequest = tuple[str, str, str, str]  # (local, remote, stream id, key)


@dataclass(eq=False)
class OutboundSession:
    """Everything about sending from ``local`` to ``remote``."""

    local: str
    remote: str
    queue: deque[Element] = field(default_factory=deque)
    connection: StreamConnection | None = None  # the stream carrying the pair, once open
    stream: OutboundStream | None = None
    task: asyncio.Task[None] | None = None  # the connect loop, while it runs
    attempt: Attempt | None = None  # the connection the loop is trying
    # db:verify requests waiting for a stream
    pending_verifies: list[VerifyRequest] = field(default_factory=list)
    failures: int = 0
    last_failure: str = ""
    congested: bool = False  # queue over limits.max_queue_per_domain

    def carried_by(self, conn: StreamConnection, stream: OutboundStream) -> None:
        self.connection, self.stream = conn, stream

    def uncarried(self) -> None:
        self.connection = self.stream = None


class OutboundSessions:
    """The sessions toward XMPP domains and the streams that carry them."""

    def __init__(self, setup: S2SSetup, resolver: Resolver, router: RouterForS2S,
                 inbound: InboundStreams, metrics: Metrics | None = None) -> None:
        self.setup = setup
        self.resolver = resolver
        self.router = router
        self.inbound = inbound
        self.metrics = metrics
        self.sessions: dict[tuple[str, str], OutboundSession] = {}
        self.streams: dict[StreamConnection, OutboundStream] = {}
        self._handlers: dict[type[Event], Callable[[StreamConnection, Any], None]] = {
            PairAuthenticated: self._authenticated,
            PairFailed: self._pair_failed,
            DialbackVerifyAnswered: self._verify_answered,
            TlsEstablished: self._tls,
            StreamClosed: self._closed,
        }

    # ------------------------------------------------------------------ sending

    def send(self, stanza: Element) -> None:
        """Route one stanza from a local user toward its XMPP domain (never blocks)."""
        try:
            local = domain_of(stanza.get("from", ""))
            remote = domain_of(stanza.get("to", ""))
        except JidError as exc:
            self.router.bounce(stanza, "jid-malformed", str(exc))
            return
        setup = self.setup
        if remote in setup.ctx.local_domains:
            self.router.bounce(stanza, "service-unavailable", f"{remote} is served here")
            return
        if setup.partner_for(remote) is None:
            log_event(log, logging.INFO, "s2s.refused", peer=remote, direction="outbound",
                      reason="domain is not a federation partner")
            self.router.bounce(stanza, "not-allowed", f"{remote} is not a federation partner")
            return
        session = self._session(local, remote)
        conn, stream = session.connection, session.stream
        if conn is not None and stream is not None and not session.queue \
                and not conn.write_paused and stream.can_send(local, remote):
            try:
                stream.send_stanza(stanza)
                conn.schedule_pump()
                self._count("stanzas_out", remote)
                return
            except NotAuthenticated:
                pass
        if session.connection is None and (session.task is None or session.task.done()):
            self._piggyback(session)
        # Never refused for being one too many: the queue is the wait.
        session.queue.append(stanza)
        if not session.congested and \
                len(session.queue) > setup.config.limits.max_queue_per_domain:
            self._set_congested(session, True)
        self._ensure_connecting(session)

    def _session(self, local: str, remote: str) -> OutboundSession:
        session = self.sessions.get((local, remote))
        if session is None:
            session = self.sessions[(local, remote)] = OutboundSession(local, remote)
        return session

    def _set_congested(self, session: OutboundSession, congested: bool) -> None:
        session.congested = congested
        log_event(log, logging.INFO, "s2s.congestion", peer=session.remote,
                  local=session.local, direction="outbound",
                  state="on" if congested else "off", queued=len(session.queue))
        self.inbound.pause_from(session.remote, congested)
        self.router.s2s_congestion(session.remote, congested)

    def _piggyback(self, session: OutboundSession) -> None:
        """Reuse an open stream to the same peer for another local domain (XEP-0220 §2.4)."""
        for other in self.sessions.values():
            conn, stream = other.connection, other.stream
            if other is session or other.remote != session.remote or conn is None \
                    or stream is None:
                continue
            if stream.add_local_domain(session.local):
                session.carried_by(conn, stream)
                conn.pump()
                log_event(log, logging.DEBUG, "s2s.piggyback", **conn.log_fields(),
                          added=session.local)
                return

    def _flush(self, session: OutboundSession) -> None:
        """Send what is queued, in slices, until the peer stops taking it (the transport
        buffer passes its high-water mark: the rest waits for :meth:`_writable`)."""
        conn, stream = session.connection, session.stream
        if conn is None or stream is None:
            return
        queue = session.queue
        while queue and not conn.write_paused and stream.can_send(session.local,
                                                                  session.remote):
            for _ in range(min(len(queue), FLUSH_SLICE)):
                stream.send_stanza(queue.popleft())
                self._count("stanzas_out", session.remote)
            conn.pump()
        conn.pump()
        if session.congested and \
                len(queue) <= self.setup.config.limits.max_queue_per_domain // 2:
            self._set_congested(session, False)

    def _writable(self, conn: StreamConnection) -> None:
        for session in list(self.sessions.values()):
            if session.connection is conn and session.queue:
                self._flush(session)

    # ------------------------------------------------------------------ connecting

    def _ensure_connecting(self, session: OutboundSession) -> None:
        if session.task is not None and not session.task.done():
            return
        if session.stream is not None and not session.stream.closed:
            return  # negotiating; the queue flushes on PairAuthenticated
        session.task = asyncio.get_running_loop().create_task(
            self._connect(session), name=f"s2s-connect-{session.local}-{session.remote}"
        )

    async def _connect(self, session: OutboundSession) -> None:
        started = time.monotonic()
        setup = self.setup
        partner = setup.partner_for(session.remote)
        if partner is None:
            self._fail(session, "not-allowed", f"{session.remote} is no longer a partner",
                       count=True)
            return
        outcome = await connect(session.remote, self.resolver,
                                setup.config.limits.connect_timeout,
                                _SessionDialer(self, session, partner))
        if outcome.ok:
            if self.metrics is not None:
                self.metrics.handshake(time.monotonic() - started, outcome.method)
            return
        if outcome.dns_failed:
            self._count("dns_failures", session.remote)
        # A failed negotiation was counted as its pair failed (_pair_failed); a session
        # that never got that far is counted here.
        self._fail(session, outcome.condition, outcome.reason, count=outcome.unreachable)

    def _fail(self, session: OutboundSession, condition: str, reason: str, *,
              count: bool = False) -> None:
        session.failures += 1
        session.last_failure = reason
        condition, text = bounce_for(condition, reason, session.local, session.remote)
        if count:
            self._count("s2s_failures", condition)
        change = setting_to_change(session.remote, self.setup.partner_for(session.remote),
                                   reason) if condition == POLICY_VIOLATION else None
        log_event(log, logging.WARNING, "s2s.outbound_failed", peer=session.remote,
                  local=session.local, direction="outbound", condition=condition, reason=reason,
                  bounced=len(session.queue), change=change)
        self.bounce_queue(session, condition, text)
        for local, remote, stream_id, _key in session.pending_verifies:
            self.inbound.answer_verify(local, remote, stream_id, None,
                                       "remote-connection-failed", reason)
        session.pending_verifies = []

    def bounce_queue(self, session: OutboundSession, condition: str, reason: str) -> None:
        while session.queue:
            stanza = session.queue.popleft()
            self._count("bounces", session.remote)
            self.router.bounce(stanza, condition, reason)
        if session.congested:
            self._set_congested(session, False)

    def request_verify(self, local: str, remote: str, stream_id: str, key: str) -> None:
        """A ``db:verify`` for the inbound half, on the session to ``remote``'s
        authoritative server (queued until a stream is open)."""
        session = self._session(local, remote)
        stream = session.stream
        if session.connection is not None and stream is not None and not stream.closed:
            stream.request_verify(local, remote, stream_id, key)
            session.connection.pump()
        else:
            session.pending_verifies.append((local, remote, stream_id, key))
            self._ensure_connecting(session)

    # ------------------------------------------------------------------ events

    def _on_event(self, conn: StreamConnection, event: Event) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(conn, event)

    def _authenticated(self, conn: StreamConnection, event: PairAuthenticated) -> None:
        stream = self.streams[conn]
        log_event(log, logging.INFO, "s2s.authenticated", peer=event.remote_domain,
                  local=event.local_domain, direction="outbound", stream=stream.stream_id,
                  method=str(event.method), tls=stream.tls_version or "none",
                  addr=conn.peer_address)
        if self.metrics is not None:
            self.metrics.session_authenticated("outbound", str(event.method))
        session = self.sessions.get((event.local_domain, event.remote_domain))
        if session is None:
            return
        session.carried_by(conn, stream)
        if session.attempt is not None:
            session.attempt.settle(Outcome(True, method=str(event.method)))
        self._flush(session)

    def _pair_failed(self, conn: StreamConnection, event: PairFailed) -> None:
        log_event(log, logging.WARNING, "s2s.refused", **conn.log_fields(),
                  pair=f"{event.local_domain}->{event.remote_domain}",
                  condition=event.condition, reason=event.reason)
        self._count("refusals", event.reason.split(":")[0][:60])
        session = self.sessions.get((event.local_domain, event.remote_domain))
        stream = self.streams[conn]
        retry = not stream.peer_header_received
        attempt = session.attempt if session is not None else None
        trying = attempt is not None and attempt.conn is conn and not attempt.outcome.done()
        if not (trying and retry):  # else the next target may still succeed
            self._count("s2s_failures", bounce_for(event.condition, event.reason,
                                                   event.local_domain, event.remote_domain)[0])
        if session is None:
            return
        if trying and attempt is not None:
            attempt.settle(Outcome(False, event.condition, event.reason, retry=retry))
        elif session.connection is conn:
            self.bounce_queue(session, *bounce_for(event.condition, event.reason,
                                                   session.local, session.remote))
            if (event.remote_domain, event.local_domain) != (stream.remote_domain,
                                                             stream.local_domain):
                session.uncarried()  # a piggybacked pair: next time, a new stream

    def _verify_answered(self, conn: StreamConnection, event: DialbackVerifyAnswered) -> None:
        self.inbound.answer_verify(event.local_domain, event.remote_domain, event.stream_id,
                                   event.valid, "remote-connection-failed", event.error)

    def _tls(self, conn: StreamConnection, event: TlsEstablished) -> None:
        log_event(log, logging.DEBUG, "s2s.tls", **conn.log_fields(), version=event.version,
                  cipher=event.cipher, peer_cert=event.peer_certificate_present)

    def _closed(self, conn: StreamConnection, event: StreamClosed) -> None:
        stream = self.streams[conn]
        session = self.sessions.get((stream.local_domain or "", stream.remote_domain or ""))
        if session is not None and session.attempt is not None \
                and session.attempt.conn is conn:
            session.attempt.settle(Outcome(False, "remote-server-not-found", event.reason,
                                           retry=not stream.peer_header_received))

    def _gone(self, conn: StreamConnection) -> None:
        stream = self.streams.pop(conn, None)
        if stream is None:
            return
        for session in self.sessions.values():
            if session.connection is not conn:
                continue
            session.uncarried()
            attempt = session.attempt
            if attempt is not None and attempt.conn is conn and not attempt.outcome.done():
                attempt.settle(Outcome(False, "remote-server-not-found",
                                       stream.close_reason or "closed",
                                       retry=not stream.peer_header_received))
            elif session.queue:
                self._ensure_connecting(session)

    def _count(self, what: str, label: str) -> None:
        if self.metrics is not None:
            self.metrics.count(what, label)

    # ------------------------------------------------------------------ status, stop

    @property
    def queued(self) -> int:
        return sum(len(session.queue) for session in self.sessions.values())

    def queues(self) -> dict[str, int]:
        return {f"{s.local}->{s.remote}": len(s.queue)
                for s in self.sessions.values() if s.queue}

    def queue_of(self, conn: StreamConnection) -> int:
        """Stanzas waiting for the stream ``conn`` (its own pair's session)."""
        stream = self.streams.get(conn)
        if stream is None:
            return 0
        session = self.sessions.get((stream.local_domain or "", stream.remote_domain or ""))
        return len(session.queue) if session is not None and session.connection is conn else 0

    async def stop_connecting(self, budget: float) -> None:
        """Give the connect loops still running ``budget`` seconds, then end them and
        bounce every queue (RFC 6120 §8.3: the senders are told)."""
        pending = [s.task for s in self.sessions.values() if s.task and not s.task.done()]
        if pending:
            await asyncio.wait(pending, timeout=budget)
        for session in self.sessions.values():
            if session.task is not None and not session.task.done():
                session.task.cancel()
            self.bounce_queue(session, "remote-server-timeout", "gateway shutting down")


class _SessionDialer:
    """The connect loop's attempts for one session (a :class:`~gateway.net.connector.Dialer`)."""

    def __init__(self, sessions: OutboundSessions, session: OutboundSession,
                 partner: PartnerPolicy) -> None:
        self.sessions = sessions
        self.session = session
        self.partner = partner

    def open(self, target: ConnectTarget, address: str) -> Attempt:
        owner, session, partner = self.sessions, self.session, self.partner
        loop = asyncio.get_running_loop()
        stream = OutboundStream(
            owner.setup.ctx, local_domain=session.local, remote_domain=session.remote,
            partner=partner, now=loop.time(), direct_tls=target.direct_tls,
        )
        conn = StreamConnection(stream, owner._on_event, owner._gone)
        conn.on_writable = owner._writable
        owner.streams[conn] = stream
        attempt = Attempt(target, address, stream, conn, loop.create_future())
        session.attempt = attempt
        return attempt

    def unreachable(self, attempt: Attempt, reason: str) -> None:
        log_event(log, logging.INFO, "s2s.connect_failed", peer=self.session.remote,
                  direction="outbound", target=attempt.where, reason=reason)
        self.sessions.streams.pop(attempt.conn, None)

    def connected(self, attempt: Attempt) -> None:
        """This stream now carries the session, and the db:verify requests that waited
        for a connection (XEP-0220 §2.1.2)."""
        session = self.session
        session.carried_by(attempt.conn, attempt.stream)
        for request in session.pending_verifies:
            attempt.stream.request_verify(*request)
        session.pending_verifies = []
        attempt.conn.pump()
        log_event(log, logging.DEBUG, "s2s.connected", peer=session.remote,
                  direction="outbound", target=attempt.where, source=attempt.target.source)

    def ended(self, attempt: Attempt, outcome: Outcome) -> None:
        if not outcome.ok and self.session.connection is attempt.conn:
            self.session.uncarried()
