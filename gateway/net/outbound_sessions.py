"""Sending toward XMPP domains: one session per (local domain, remote domain).

* Stanzas queue while the session is set up (:mod:`gateway.net.outbound_links` opens the
  stream) and flush once the pair is authenticated; on failure every queued stanza is
  bounced to its sender with the RFC 6120 §8.3.3 condition the core chose
  (remote-server-not-found, -timeout, …): nothing is dropped silently. Over
  ``limits.max_queue_per_domain`` the domain is *congested*: its senders are held back
  (the router's local side, and the streams the domain opened to us) until it drains.
* Stream management (XEP-0198): a sent stanza is kept until the peer acknowledges it, at
  most ``limits.max_unacked`` per stream (the window; the rest wait in the queue), and
  re-sent over a new link or bounced when its link dies (:mod:`gateway.net.delivery`).
* A session is carried by our outbound stream, by the peer's inbound stream when that
  negotiated XEP-0288 bidi, or by an open stream to the same peer for another local
  domain (XEP-0220 §2.4, piggybacking).
* Dialback (XEP-0220 §2.1.2): a ``db:verify`` an inbound stream needs rides on the
  session toward the claimed domain's Authoritative Server.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element

from gateway.contracts import OnSent
from gateway.dns.resolver import Resolver
from gateway.logs import log_event
from gateway.net import delivery, resent
from gateway.net.backoff import QUEUE_WAIT, Backoff
from gateway.net.connection import StreamConnection
from gateway.net.connector import Attempt
from gateway.net.links import Links, S2SSettings
from gateway.net.outbound_links import InboundForOutbound, OutboundLinks
from gateway.policy.refusals import POLICY_VIOLATION, bounce_for, setting_to_change
from gateway.xmpp.events import StanzasAcked
from gateway.xmpp.jid import JidError, domain_of
from gateway.xmpp.outbound import NotAuthenticated

log = logging.getLogger("gateway.s2s")

FLUSH_SLICE = 256  # stanzas written between checks of the transport's write buffer


@dataclass(eq=False, slots=True)
class OutboundSession:
    """Everything about sending from ``local`` to ``remote``."""

    local: str
    remote: str
    # Stanzas waiting for the stream (or its window); None while there are none: every
    # inbound session the peer made bidi (XEP-0288) has a session here, mostly idle, and
    # an empty deque would be 0.6 KiB of each (docs/performance.md).
    queue: deque[delivery.Queued] | None = None
    # The stream carrying the session: our outbound stream, or the peer's inbound one
    # when it negotiated bidi (XEP-0288).
    connection: StreamConnection | None = None
    task: asyncio.Task[None] | None = None
    # db:verify requests waiting for a stream: (local, remote, stream_id, key)
    pending_verifies: list[tuple[str, str, str, str]] = field(default_factory=list)
    attempt: Attempt | None = None  # the connection the connect loop is trying
    failures: int = 0
    last_failure: str = ""
    congested: bool = False  # queue over limits.max_queue_per_domain (see send)
    backoff: Backoff = field(default_factory=Backoff)
    resent: int = 0  # stanzas sent again after a link died before acknowledging them

    def queued(self) -> int:
        return 0 if self.queue is None else len(self.queue)

    def enqueue(self, item: delivery.Queued, *, front: bool = False) -> None:
        queue = self.queue
        if queue is None:
            queue = self.queue = deque()
        if front:
            queue.appendleft(item)
        else:
            queue.append(item)

    def drop_queue_if_empty(self) -> None:
        if not self.queue:
            self.queue = None


class OutboundSessions:
    """The sessions by (local, remote) (answers :class:`~gateway.net.listeners.
    SessionsForInbound` and :class:`~gateway.net.outbound_links.SessionsForLinks`)."""

    def __init__(self, settings: S2SSettings, links: Links, inbound: InboundForOutbound,
                 resolver: Resolver) -> None:
        self.settings = settings
        self.links = links
        self.inbound = inbound
        self.sessions: dict[tuple[str, str], OutboundSession] = {}
        # The sessions with a queue or marked congested: the only ones an acknowledgement
        # or a drained write buffer can have work for. Every <a/> of a busy link looks
        # here, so it must not walk every session (one per partner and local domain).
        # Kept by _note wherever a queue fills or empties or congestion changes.
        self._waiting: set[OutboundSession] = set()
        self.stopping = False  # shutting down: what links give back is bounced, not re-sent
        self.out_streams = OutboundLinks(settings, links, inbound, self, resolver)

    def set_reading_paused(self, paused: bool) -> None:
        """Router backpressure (see :meth:`OutboundLinks.set_reading_paused`)."""
        self.out_streams.set_reading_paused(paused)

    def find(self, local: str, remote: str) -> OutboundSession | None:
        return self.sessions.get((local, remote))

    def _session(self, local: str, remote: str) -> OutboundSession:
        session = self.sessions.get((local, remote))
        if session is None:
            session = self.sessions[(local, remote)] = OutboundSession(local, remote)
        return session

    def carried_by(self, conn: StreamConnection) -> list[OutboundSession]:
        return [s for s in self.sessions.values() if s.connection is conn]

    def _note(self, session: OutboundSession) -> None:
        """Keep :attr:`_waiting` true for ``session`` after its queue or congestion changed."""
        if session.queue or session.congested:
            self._waiting.add(session)
        else:
            self._waiting.discard(session)

    def _waiting_on(self, conn: StreamConnection) -> list[OutboundSession]:
        return [s for s in self._waiting if s.connection is conn]

    # ------------------------------------------------------------------ sending

    def send(self, stanza: Element, on_sent: OnSent = None) -> None:
        """See :meth:`gateway.contracts.XmppSide.send`."""
        on_done = on_sent
        try:
            local = domain_of(stanza.get("from", ""))
            remote = domain_of(stanza.get("to", ""))
        except JidError as exc:
            self._bounce(stanza, on_done, "jid-malformed", str(exc))
            return
        if remote in self.settings.ctx.local_domains:
            self._bounce(stanza, on_done, "service-unavailable", f"{remote} is served here")
            return
        if self.settings.partner_for(remote) is None:
            log_event(log, logging.INFO, "s2s.refused", peer=remote, direction="outbound",
                      reason="domain is not a federation partner")
            self._bounce(stanza, on_done, "not-allowed", f"{remote} is not a federation partner")
            return
        session = self._session(local, remote)
        conn = session.connection
        if conn is not None and not session.queue and not conn.write_paused:
            stream = conn.stream
            window = stream.sm_out
            if window is None or \
                    window.sent - window.acked < self.settings.config.limits.max_unacked:
                try:
                    stream.send_stanza(stanza, on_done)
                except NotAuthenticated:
                    pass  # not (yet, or any more) for this pair: queued below
                else:
                    conn.schedule_pump()
                    self.links.count("stanzas_out", remote)
                    if on_done is not None and window is None:
                        on_done(True)  # plain S2S: written is all we will ever know
                    return
        if session.connection is None and (session.task is None or session.task.done()):
            if not self._adopt_bidi(session):
                self._piggyback(session)
            waiting = session.backoff.waiting(time.monotonic())
            if session.connection is None and waiting > QUEUE_WAIT and not session.queue:
                # The last rounds of attempts failed and the next is a while away: answer
                # now rather than queue behind it (gateway/net/backoff.py).
                self._bounce(stanza, on_done, "remote-server-not-found",
                             f"{session.backoff.last_failure} (next attempt to {remote} in "
                             f"{waiting:.0f} s)")
                return
        # Never refused for being one too many: the queue is the wait. Over its bound the
        # domain is congested, which holds back its sources (the local side, and inbound
        # streams from that domain, whose error replies land here) until it drains.
        session.enqueue(stanza if on_done is None else delivery.Pending(stanza, on_done))
        self._waiting.add(session)
        if not session.congested and \
                session.queued() > self.settings.config.limits.max_queue_per_domain:
            self._set_congested(session, True)
        self.out_streams.ensure_connecting(session)

    def _bounce(self, stanza: Element, on_done: OnSent, condition: str, reason: str) -> None:
        """Tell the sender; ``on_done`` learns it once the error reply is delivered."""
        self.links.router.bounce(stanza, condition, reason,
                                 None if on_done is None else functools.partial(on_done, False))

    def _adopt_bidi(self, session: OutboundSession) -> bool:
        """Send over the peer's inbound stream when it negotiated XEP-0288 for the pair."""
        conn = self.inbound.bidi_carrier(session.local, session.remote)
        if conn is None:
            return False
        session.connection = conn
        log_event(log, logging.DEBUG, "s2s.bidi_adopted", **conn.log_fields(),
                  pair=f"{session.local}->{session.remote}")
        return True

    def _piggyback(self, session: OutboundSession) -> None:
        """Reuse an open stream to the same peer for another local domain (XEP-0220 §2.4)."""
        for other in self.sessions.values():
            conn = other.connection
            if other is session or other.remote != session.remote or conn is None:
                continue
            stream = self.out_streams.stream_of(conn)
            if stream is not None and stream.add_local_domain(session.local):
                session.connection = conn
                conn.pump()
                log_event(log, logging.DEBUG, "s2s.piggyback", **conn.log_fields(),
                          added=session.local)
                return

    def _set_congested(self, session: OutboundSession, congested: bool) -> None:
        session.congested = congested
        self._note(session)
        log_event(log, logging.INFO, "s2s.congestion", peer=session.remote,
                  local=session.local, direction="outbound",
                  state="on" if congested else "off", queued=session.queued())
        self.inbound.hold_reading_from(session.remote, congested)
        self.links.router.s2s_congestion(session.remote, congested)

    def _drained(self, session: OutboundSession) -> bool:
        return session.queued() <= self.settings.config.limits.max_queue_per_domain // 2

    def flush(self, session: OutboundSession) -> None:
        """Send what is queued, in slices, until the peer stops taking it (the transport
        buffer passes its high-water mark: the rest waits for :meth:`on_writable`; or
        max_unacked stanzas wait for the peer's acknowledgement: :meth:`on_acked`)."""
        conn = session.connection
        if conn is None:
            return
        stream = conn.stream
        queue = session.queue  # None: nothing queued, but still pump what the stream has
        window = self.settings.config.limits.max_unacked
        while queue and not conn.write_paused and stream.unacked < window \
                and stream.can_send(session.local, session.remote):
            for _ in range(min(len(queue), FLUSH_SLICE, window - stream.unacked)):
                stanza, token = delivery.unpack(queue.popleft())
                stream.send_stanza(stanza, token)
                if stream.sm_out is None and token is not None:
                    delivery.settle(token, True)  # plain S2S: written is all we know
                self.links.count("stanzas_out", session.remote)
            conn.pump()
        conn.pump()
        session.drop_queue_if_empty()
        if session.congested and self._drained(session):
            self._set_congested(session, False)
        self._note(session)

    def on_acked(self, conn: StreamConnection, event: StanzasAcked) -> None:
        """The peer has these stanzas: tell who waited, and let more through the window."""
        for token in event.tokens:
            delivery.settle(token, True)
        if not self._waiting:
            return
        for session in self._waiting_on(conn):
            if session.queue:
                self.flush(session)
            elif session.congested and self._drained(session):
                self._set_congested(session, False)

    def on_writable(self, conn: StreamConnection) -> None:
        for session in self._waiting_on(conn):
            if session.queue:
                self.flush(session)

    # ------------------------------------------------------------------ failures

    def fail(self, session: OutboundSession, condition: str, reason: str, *,
             count: bool = False) -> None:
        """No stream could be set up: bounce the queue, tell the dialback requests that
        waited, and back off (gateway/net/backoff.py)."""
        session.failures += 1
        session.last_failure = reason
        condition, text = bounce_for(condition, reason, session.local, session.remote)
        if count:
            self.links.count("s2s_failures", condition)
        change = setting_to_change(session.remote, self.settings.partner_for(session.remote),
                                   reason) if condition == POLICY_VIOLATION else None
        retry_in = session.backoff.failed(time.monotonic(), reason)
        log_event(log, logging.WARNING, "s2s.outbound_failed", peer=session.remote,
                  local=session.local, direction="outbound", condition=condition, reason=reason,
                  bounced=session.queued(), change=change, retry_in=f"{retry_in:.1f}s")
        self.bounce_queue(session, condition, text)
        for request in session.pending_verifies:
            local, remote, stream_id, _key = request
            self.inbound.answer_verify(local, remote, stream_id, None,
                                       "remote-connection-failed", reason)
        session.pending_verifies = []

    def bounce_queue(self, session: OutboundSession, condition: str, reason: str) -> None:
        while session.queue:
            stanza, token = delivery.unpack(session.queue.popleft())
            self.links.count("bounces", session.remote)
            self.links.router.bounce(stanza, condition, reason,
                                     None if token is None else functools.partial(
                                         delivery.settle, token, False))
        session.queue = None
        if session.congested:
            self._set_congested(session, False)
        self._note(session)

    def link_ended(self, conn: StreamConnection) -> None:
        """The sessions ``conn`` carried need another link; what it left unacknowledged
        is sent again or bounced."""
        carried = self.carried_by(conn)
        for session in carried:
            session.connection = None
        self._take_back(conn)
        for session in carried:
            if session.queue:
                self.out_streams.ensure_connecting(session)

    def _take_back(self, conn: StreamConnection) -> None:
        """A stream ended with stanzas the peer never acknowledged: send them again over
        a new link (``federation.resend_unacked``) or bounce them (delivery.py)."""
        left = conn.stream.take_unacked()
        if not left:
            return
        peer = conn.stream.remote_domain or ""
        reason = (f"the link to {peer} ended before it acknowledged the stanza "
                  f"({conn.stream.close_reason or 'closed'})")
        resend = self.settings.config.federation.resend_unacked and not self.stopping
        touched: list[OutboundSession] = []
        bounced = 0
        for stanza, token in reversed(left):
            item = delivery.again(stanza, token)
            local = domain_of(stanza.get("from", ""))
            remote = domain_of(stanza.get("to", ""))
            session = self.sessions.get((local, remote))
            if not resend or session is None or item.attempts >= delivery.MAX_ATTEMPTS:
                bounced += 1
                self.links.count("bounces", remote)
                self._bounce(stanza, item.on_done, "remote-server-timeout", reason)
                continue
            resent.mark(stanza, local)
            session.enqueue(item, front=True)
            self._waiting.add(session)
            session.resent += 1
            self.links.count("resent", remote)
            if session not in touched:
                touched.append(session)
        log_event(log, logging.WARNING, "s2s.unacked", **conn.log_fields(), left=len(left),
                  resent=len(left) - bounced, bounced=bounced, reason=reason)
        for session in touched:
            if session.connection is conn:
                session.connection = None
            self.out_streams.ensure_connecting(session)

    # ------------------------------------------------------------------ for the inbound side

    def carry_over_bidi(self, conn: StreamConnection, local: str, remote: str) -> None:
        """XEP-0288: the peer's inbound stream carries our stanzas to it too."""
        session = self._session(local, remote)
        if session.connection is None or session.connection.stream.closed:
            session.connection = conn
            session.backoff.succeeded()
            self.flush(session)

    def request_verify(self, local: str, remote: str, stream_id: str, key: str) -> None:
        """Send the ``db:verify`` on the session toward ``remote`` (XEP-0220 §2.1.2), or
        keep it until that session has a stream."""
        session = self._session(local, remote)
        out = session.connection
        out_stream = self.out_streams.stream_of(out) if out is not None else None
        if out is not None and out_stream is not None and not out_stream.closed:
            out_stream.request_verify(local, remote, stream_id, key)
            out.pump()
        else:
            session.pending_verifies.append((local, remote, stream_id, key))
            self.out_streams.ensure_connecting(session)

    # ------------------------------------------------------------------ status, shutdown

    def queue_length(self, conn: StreamConnection) -> int:
        """Stanzas queued for the session ``conn`` carries for its own pair."""
        stream = conn.stream
        session = self.sessions.get((stream.local_domain or "", stream.remote_domain or ""))
        return session.queued() if session is not None and session.connection is conn else 0

    async def give_up(self, budget: float) -> None:
        """Shutting down: let the connect tasks run for ``budget`` seconds, then cancel
        them and bounce every queue (RFC 6120 §8.3.3 remote-server-timeout)."""
        self.stopping = True
        pending = [s.task for s in self.sessions.values() if s.task and not s.task.done()]
        if pending:
            await asyncio.wait(pending, timeout=budget)
        for session in self.sessions.values():
            if session.task is not None and not session.task.done():
                session.task.cancel()
            self.bounce_queue(session, "remote-server-timeout", "gateway shutting down")
