"""S2S service: listeners, outbound sessions, queues, dialback routing, bounces.

The orchestration the sans-I/O streams cannot do alone (they know one connection each):

* **Outbound sessions** per (local domain, remote domain): stanzas queue while the
  session is set up (DNS SRV → TCP → negotiation) and flush once the pair is
  authenticated; on failure every queued stanza is bounced to its sender with the
  RFC 6120 §8.3.3 condition the core chose (remote-server-not-found, -timeout, …) —
  nothing is dropped silently. Queues are bounded (``limits.max_queue_per_domain``).
* **Targets** are tried in DNS order (RFC 2782 / XEP-0368); connection-level failures
  move on to the next target, policy failures do not (they would fail the same way).
* **Dialback routing** (XEP-0220 §2.1.2): an inbound stream's ``DialbackVerifyNeeded``
  becomes a ``db:verify`` on our outbound session to the claimed domain's authoritative
  server, and its answer goes back to the inbound stream that asked.
* **Stream management** (XEP-0198): a received stanza is acknowledged only once the
  router settled it; a sent one is kept until the peer acknowledges it, and re-sent over
  a new link or bounced when its link dies (gateway/net/delivery.py). At most
  ``limits.max_unacked`` are unacknowledged per stream (the window); the rest wait in
  the domain's queue, whose bound holds the senders back.
* **Bidi** (XEP-0288): an inbound stream that negotiated it also carries our stanzas
  to its peer; no outbound connection is opened while it lives.
* **Connecting**: DANE (RFC 7673) per partner policy, the addresses of each target
  raced (Happy Eyeballs, RFC 8305), and a backoff per partner after a failed round; the
  loop is :mod:`gateway.net.connector`, which ``check connectivity`` runs too.

Inbound and outbound connections are kept apart (:attr:`S2SService.inbound`,
:attr:`S2SService.outbound`, each stream typed), and each direction has its own table of
what its streams' events mean, so nothing asks a stream which way it goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from xml.etree.ElementTree import Element

from gateway.auth.dialback_key import DialbackKeyGenerator
from gateway.config.model import GatewayConfig, PartnerPolicy, PartnerType
from gateway.contracts import OnSent, RouterForS2S
from gateway.dns.dane import DaneExpectation
from gateway.dns.resolver import Resolver
from gateway.dns.srv import ConnectTarget
from gateway.logs import log_event
from gateway.net import delivery, resent
from gateway.net.backoff import QUEUE_WAIT, Backoff
from gateway.net.connection import StreamConnection
from gateway.net.connector import Attempt, Outcome, connect
from gateway.net.context import stream_context
from gateway.policy.refusals import (
    POLICY_VIOLATION,
    bounce_for,
    is_policy_failure,
    setting_to_change,
)
from gateway.xmpp.events import (
    BidiNegotiated,
    DialbackVerifyAnswered,
    DialbackVerifyNeeded,
    Event,
    PairAuthenticated,
    PairFailed,
    StanzaReceived,
    StanzasAcked,
    StreamClosed,
    StreamManagementEnabled,
    StreamManagementFailed,
    TlsEstablished,
)
from gateway.xmpp.inbound import InboundStream
from gateway.xmpp.jid import JidError, domain_of
from gateway.xmpp.outbound import NotAuthenticated, OutboundStream

if TYPE_CHECKING:
    from gateway.metrics import Metrics

log = logging.getLogger("gateway.s2s")

EventHandlers = dict[type[Event], Callable[[StreamConnection, Any], None]]
FLUSH_SLICE = 256  # stanzas written between checks of the transport's write buffer


@dataclass(eq=False)
class OutboundSession:
    """Everything about sending from ``local`` to ``remote``."""

    local: str
    remote: str
    queue: deque[delivery.Queued] = field(default_factory=deque)
    # The stream carrying the session: our outbound stream, or the peer's inbound one
    # when it negotiated bidi (XEP-0288).
    connection: StreamConnection | None = None
    task: asyncio.Task[None] | None = None
    # db:verify requests waiting for a stream: (local, remote, stream_id, key)
    pending_verifies: list[tuple[str, str, str, str]] = field(default_factory=list)
    attempt: Attempt | None = None  # the connection the connect loop is trying
    failures: int = 0
    last_failure: str = ""
    congested: bool = False  # queue over limits.max_queue_per_domain (see S2SService.send)
    backoff: Backoff = field(default_factory=Backoff)
    resent: int = 0  # stanzas sent again after a link died before acknowledging them


def unlisted_partner(domain: str) -> PartnerPolicy:
    """With ``federation.allow_unlisted`` an unlisted domain federates as
    public-unverified with the default (optional/optional/dialback) settings."""
    return PartnerPolicy(domain, PartnerType.PUBLIC_UNVERIFIED)


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
        self.config = config
        self.keys = keys
        self.ctx = stream_context(config, keys, self.partner_for)
        self.resolver = resolver
        self.router = router
        self.metrics = metrics
        self.connections: set[StreamConnection] = set()
        # The same connections by direction, with their stream typed: nothing asks a
        # stream which way it goes.
        self.inbound: dict[StreamConnection, InboundStream] = {}
        self.outbound: dict[StreamConnection, OutboundStream] = {}
        self.sessions: dict[tuple[str, str], OutboundSession] = {}
        self._verify_waiters: dict[tuple[str, str, str], StreamConnection] = {}
        self._servers: list[asyncio.base_events.Server] = []
        self._accepting = True
        self._stopping = False  # stop(): what links give back is bounced, not re-sent
        self.recent = resent.RecentStanzas()  # delivered lately (re-sends recognised)
        self._per_ip: dict[str, int] = {}
        self._counted_ip: dict[StreamConnection, str] = {}  # admitted inbound connections
        self.reading_paused = False
        # What each event of a stream means, by the stream's direction.
        common: EventHandlers = {
            StanzaReceived: self._on_stanza,
            StanzasAcked: self._on_acked,
            PairFailed: self._on_pair_failed,
            DialbackVerifyNeeded: self._on_verify_needed,
            DialbackVerifyAnswered: self._on_verify_answered,
            TlsEstablished: self._on_tls,
            StreamManagementEnabled: self._on_sm_enabled,
            StreamManagementFailed: self._on_sm_failed,
        }
        self._inbound_handlers: EventHandlers = {
            **common,
            PairAuthenticated: self._on_inbound_authenticated,
            BidiNegotiated: self._on_bidi,
            StreamClosed: self._on_inbound_closed,
        }
        self._outbound_handlers: EventHandlers = {
            **common,
            PairAuthenticated: self._on_outbound_authenticated,
            BidiNegotiated: self._on_outbound_bidi,
            StreamClosed: self._on_outbound_closed,
        }

    # ------------------------------------------------------------------ config

    def partner_for(self, domain: str) -> PartnerPolicy | None:
        partner = self.config.partner_for(domain)
        if partner is None and self.config.federation.allow_unlisted:
            return unlisted_partner(domain)
        return partner

    # ------------------------------------------------------------------ listening

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for address in self.config.listen:
            server = await loop.create_server(
                functools.partial(self._accept, address.direct_tls),
                host=address.host, port=address.port, reuse_address=True,
            )
            self._servers.append(server)
            for sock in server.sockets:
                log_event(log, logging.INFO, "s2s.listening", address=sock.getsockname()[:2],
                          direct_tls=address.direct_tls or None)

    def apply(self, config: GatewayConfig) -> int:
        """Reload (see :meth:`gateway.contracts.S2SControl.apply`)."""
        context = stream_context(config, self.keys, self.partner_for)  # may raise: first
        self.config, self.ctx = config, context

        def no_longer_permitted(conn: StreamConnection) -> bool:
            for (remote, _local), method in conn.stream.pairs.items():
                partner = self.partner_for(remote)
                if partner is None or not partner.negotiation.permits(method):
                    return True
            return False

        return self.close_sessions(
            no_longer_permitted, "policy-violation",
            "partner removed or its policy changed by a configuration reload")

    def stop_accepting(self) -> None:
        """Close the listening sockets (drain): a partner connecting now is
        refused and tries the next SRV target; established streams carry on."""
        self._accepting = False
        for server in self._servers:
            server.close()

    @property
    def listening_addresses(self) -> list[tuple[str, int]]:
        return [s.getsockname()[:2] for server in self._servers for s in server.sockets]

    def _accept(self, direct_tls: bool) -> asyncio.Protocol:
        stream = InboundStream(self.ctx, now=asyncio.get_running_loop().time(),
                               direct_tls=direct_tls)
        conn = StreamConnection(stream, self._on_inbound_event, self._on_gone,
                                rate_limit=self.config.limits.inbound_bytes_per_second)
        self.connections.add(conn)
        self.inbound[conn] = stream
        return _AdmissionGuard(self, conn)

    def refused(self, conn: StreamConnection) -> None:
        """The admission guard closed ``conn`` at once."""
        self.connections.discard(conn)
        self.inbound.pop(conn, None)

    def admit(self, conn: StreamConnection) -> str:
        """Connection limits (RFC 6120 §13.12): '' to accept, else the refusal reason."""
        limits = self.config.limits
        if not self._accepting:
            return "shutting down"
        ip = conn.peer_address.rpartition(":")[0]
        if len(self.inbound) > limits.max_connections:
            return f"more than {limits.max_connections} connections"
        count = self._per_ip.get(ip, 0) + 1
        if count > limits.max_connections_per_ip:
            return f"more than {limits.max_connections_per_ip} connections from {ip}"
        self._per_ip[ip] = count
        self._counted_ip[conn] = ip
        return ""

    def set_reading_paused(self, paused: bool) -> None:
        """Backpressure from the router: stop (or resume) reading the streams that bring
        stanzas in (inbound ones, and outbound ones with XEP-0288 bidi)."""
        self.reading_paused = paused
        for conn in self.inbound:
            conn.set_reading(not paused)
        for conn, stream in self.outbound.items():
            if stream.bidi:
                conn.set_reading(not paused)

    # ------------------------------------------------------------------ sending

    def send(self, stanza: Element, on_sent: OnSent = None) -> None:
        """Route one stanza from a local user toward its XMPP domain (never blocks).

        ``on_sent`` is told True once the peer server has the stanza (acknowledged under
        stream management, else written), False once it was bounced to its sender (the
        error reply delivered)."""
        on_done = on_sent
        try:
            local = domain_of(stanza.get("from", ""))
            remote = domain_of(stanza.get("to", ""))
        except JidError as exc:
            self._bounce(stanza, on_done, "jid-malformed", str(exc))
            return
        if remote in self.ctx.local_domains:
            self._bounce(stanza, on_done, "service-unavailable", f"{remote} is served here")
            return
        if self.partner_for(remote) is None:
            log_event(log, logging.INFO, "s2s.refused", peer=remote, direction="outbound",
                      reason="domain is not a federation partner")
            self._bounce(stanza, on_done, "not-allowed", f"{remote} is not a federation partner")
            return
        session = self.sessions.get((local, remote))
        if session is None:
            session = self.sessions[(local, remote)] = OutboundSession(local, remote)
        conn = session.connection
        if conn is not None and not session.queue and not conn.write_paused:
            stream = conn.stream
            window = stream.sm_out
            if window is None or window.sent - window.acked < self.config.limits.max_unacked:
                try:
                    stream.send_stanza(stanza, on_done)
                except NotAuthenticated:
                    pass  # not (yet, or any more) for this pair: queued below
                else:
                    conn.schedule_pump()
                    self._count("stanzas_out", remote)
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
        session.queue.append(stanza if on_done is None else delivery.Pending(stanza, on_done))
        if not session.congested and len(session.queue) > self.config.limits.max_queue_per_domain:
            self._set_congested(session, True)
        self._ensure_connecting(session)

    def _bounce(self, stanza: Element, on_done: OnSent, condition: str, reason: str) -> None:
        """Tell the sender; ``on_done`` learns it once the error reply is delivered."""
        self.router.bounce(stanza, condition, reason,
                           None if on_done is None else functools.partial(on_done, False))

    def _adopt_bidi(self, session: OutboundSession) -> bool:
        """Send over the peer's inbound stream when it negotiated XEP-0288 for the pair."""
        for conn, stream in self.inbound.items():
            if stream.bidi and stream.can_send(session.local, session.remote):
                session.connection = conn
                log_event(log, logging.DEBUG, "s2s.bidi_adopted", **conn.log_fields(),
                          pair=f"{session.local}->{session.remote}")
                return True
        return False

    def _set_congested(self, session: OutboundSession, congested: bool) -> None:
        session.congested = congested
        log_event(log, logging.INFO, "s2s.congestion", peer=session.remote,
                  local=session.local, direction="outbound",
                  state="on" if congested else "off", queued=len(session.queue))
        for conn, stream in self.inbound.items():
            # Not a bidi stream: it carries the acknowledgements that drain this queue.
            if not stream.bidi and stream.remote_domain == session.remote:
                conn.set_reading(not congested, f"queue-{session.remote}")
        self.router.s2s_congestion(session.remote, congested)

    def _piggyback(self, session: OutboundSession) -> None:
        """Reuse an open stream to the same peer for another local domain (XEP-0220 §2.4)."""
        for other in self.sessions.values():
            conn = other.connection
            if other is session or other.remote != session.remote or conn is None:
                continue
            stream = self.outbound.get(conn)
            if stream is not None and stream.add_local_domain(session.local):
                session.connection = conn
                conn.pump()
                log_event(log, logging.DEBUG, "s2s.piggyback", **conn.log_fields(),
                          added=session.local)
                return

    def _ensure_connecting(self, session: OutboundSession) -> None:
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
        partner = self.partner_for(session.remote)
        if partner is None:
            self._unreachable(session, "not-allowed", f"{session.remote} is no longer a partner")
            return
        outcome = await connect(session.remote, partner, self.resolver,
                                self.config.limits.connect_timeout,
                                _SessionDialer(self, session, partner))
        if outcome.ok:
            if self.metrics is not None:
                self.metrics.handshake(time.monotonic() - started, outcome.method)
            return
        if outcome.dns_failed:
            self._count("dns_failures", session.remote)
        if outcome.unreachable:
            self._unreachable(session, outcome.condition, outcome.reason)
        else:  # a failed negotiation: counted as its pair failed
            self._fail_session(session, outcome.condition, outcome.reason)

    def _unreachable(self, session: OutboundSession, condition: str, reason: str) -> None:
        """The session failed before any stream negotiated (no partner, DNS, no target
        answered): counted as an S2S failure, under the condition its stanzas bounce with
        (a failed negotiation is counted as its pair fails)."""
        self._fail_session(session, condition, reason, count=True)

    def _fail_session(self, session: OutboundSession, condition: str, reason: str, *,
                      count: bool = False) -> None:
        session.failures += 1
        session.last_failure = reason
        condition, text = bounce_for(condition, reason, session.local, session.remote)
        if count:
            self._count("s2s_failures", condition)
        change = setting_to_change(session.remote, self.partner_for(session.remote), reason) \
            if condition == POLICY_VIOLATION else None
        retry_in = session.backoff.failed(time.monotonic(), reason)
        log_event(log, logging.WARNING, "s2s.outbound_failed", peer=session.remote,
                  local=session.local, direction="outbound", condition=condition, reason=reason,
                  bounced=len(session.queue), change=change, retry_in=f"{retry_in:.1f}s")
        self._bounce_queue(session, condition, text)
        for request in session.pending_verifies:
            local, remote, stream_id, _key = request
            self._answer_verify(local, remote, stream_id, None, "remote-connection-failed",
                                reason)
        session.pending_verifies = []

    def _bounce_queue(self, session: OutboundSession, condition: str, reason: str) -> None:
        while session.queue:
            stanza, token = delivery.unpack(session.queue.popleft())
            self._count("bounces", session.remote)
            self.router.bounce(stanza, condition, reason,
                               None if token is None else functools.partial(
                                   delivery.settle, token, False))
        if session.congested:
            self._set_congested(session, False)

    # ------------------------------------------------------------------ events

    def _on_inbound_event(self, conn: StreamConnection, event: Event) -> None:
        handler = self._inbound_handlers.get(type(event))
        if handler is not None:
            handler(conn, event)

    def _on_outbound_event(self, conn: StreamConnection, event: Event) -> None:
        handler = self._outbound_handlers.get(type(event))
        if handler is not None:
            handler(conn, event)

    def _on_stanza(self, conn: StreamConnection, event: StanzaReceived) -> None:
        stream = conn.stream
        self._count("stanzas_in", event.remote_domain)
        if self.recent.keys and self.recent.seen(event.stanza, event.remote_domain):
            # Sent again after a lost link, and delivered here already (resent.py).
            self._count("duplicates_dropped", event.remote_domain)
            if stream.stanza_settled(event.seq):
                conn.schedule_pump()
            return
        # XEP-0198: acknowledged to the peer only once the router settled it.
        settled = None if event.seq < 0 else functools.partial(self._settled, conn, event.seq)
        self.router.from_xmpp(event.stanza, event.remote_domain, event.local_domain, settled)

    def _on_verify_answered(self, conn: StreamConnection, event: DialbackVerifyAnswered) -> None:
        self._answer_verify(event.local_domain, event.remote_domain, event.stream_id,
                            event.valid, "remote-connection-failed", event.error)

    def _on_tls(self, conn: StreamConnection, event: TlsEstablished) -> None:
        log_event(log, logging.DEBUG, "s2s.tls", **conn.log_fields(), version=event.version,
                  cipher=event.cipher, peer_cert=event.peer_certificate_present)

    def _on_sm_enabled(self, conn: StreamConnection, event: StreamManagementEnabled) -> None:
        log_event(log, logging.INFO, "s2s.stream_management", **conn.log_fields(),
                  state="enabled", requested_by="us" if event.initiated_by_us else "peer")

    def _on_sm_failed(self, conn: StreamConnection, event: StreamManagementFailed) -> None:
        log_event(log, logging.INFO, "s2s.stream_management", **conn.log_fields(),
                  state="refused by peer", condition=event.condition)

    def _on_bidi(self, conn: StreamConnection, event: BidiNegotiated) -> None:
        log_event(log, logging.INFO, "s2s.bidi", **conn.log_fields())

    def _on_outbound_bidi(self, conn: StreamConnection, event: BidiNegotiated) -> None:
        self._on_bidi(conn, event)
        if self.reading_paused:
            conn.set_reading(False)  # it brings stanzas in now: router backpressure

    def _on_outbound_closed(self, conn: StreamConnection, event: StreamClosed) -> None:
        stream = self.outbound[conn]
        session = self.sessions.get((stream.local_domain or "", stream.remote_domain or ""))
        attempt = session.attempt if session is not None else None
        if attempt is not None and attempt.conn is conn:
            attempt.settle(Outcome(False, "remote-server-not-found", event.reason,
                                   retry=not stream.peer_header_received))

    def _on_inbound_closed(self, conn: StreamConnection, event: StreamClosed) -> None:
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
                      peer, self.partner_for(peer) if peer else None,
                      f"{event.error} {event.reason}"))

    def _authenticated(self, conn: StreamConnection, event: PairAuthenticated,
                       direction: str) -> OutboundSession | None:
        """Log and count an authenticated pair; its session, if there is one."""
        stream = conn.stream
        log_event(log, logging.INFO, "s2s.authenticated", peer=event.remote_domain,
                  local=event.local_domain, direction=direction, stream=stream.stream_id,
                  method=str(event.method), tls=stream.tls_version or "none",
                  addr=conn.peer_address)
        if self.metrics is not None:
            self.metrics.session_authenticated(direction, str(event.method))
        return self.sessions.get((event.local_domain, event.remote_domain))

    def _on_outbound_authenticated(self, conn: StreamConnection,
                                   event: PairAuthenticated) -> None:
        session = self._authenticated(conn, event, "outbound")
        if session is None:
            return
        session.connection = conn
        session.backoff.succeeded()
        if session.attempt is not None:
            session.attempt.settle(Outcome(True, method=str(event.method)))
        self._flush(session)

    def _on_inbound_authenticated(self, conn: StreamConnection,
                                  event: PairAuthenticated) -> None:
        session = self._authenticated(conn, event, "inbound")
        if not conn.stream.bidi:
            return
        # XEP-0288: the peer's stream carries our stanzas to it too.
        if session is None:
            session = self.sessions[(event.local_domain, event.remote_domain)] = \
                OutboundSession(event.local_domain, event.remote_domain)
        if session.connection is None or session.connection.stream.closed:
            session.connection = conn
            session.backoff.succeeded()
            self._flush(session)

    def _flush(self, session: OutboundSession) -> None:
        """Send what is queued, in slices, until the peer stops taking it (the transport
        buffer passes its high-water mark: the rest waits for :meth:`_on_writable`; or
        max_unacked stanzas wait for the peer's acknowledgement: :meth:`_on_acked`)."""
        conn = session.connection
        if conn is None:
            return
        stream = conn.stream
        queue = session.queue
        window = self.config.limits.max_unacked
        while queue and not conn.write_paused and stream.unacked < window \
                and stream.can_send(session.local, session.remote):
            for _ in range(min(len(queue), FLUSH_SLICE, window - stream.unacked)):
                stanza, token = delivery.unpack(queue.popleft())
                stream.send_stanza(stanza, token)
                if stream.sm_out is None and token is not None:
                    delivery.settle(token, True)  # plain S2S: written is all we know
                self._count("stanzas_out", session.remote)
            conn.pump()
        conn.pump()
        if session.congested and \
                len(session.queue) <= self.config.limits.max_queue_per_domain // 2:
            self._set_congested(session, False)

    @staticmethod
    def _settled(conn: StreamConnection, seq: int) -> None:
        """The router is done with received stanza ``seq``: it may be acknowledged."""
        if conn.stream.stanza_settled(seq):
            conn.schedule_pump()

    def _on_acked(self, conn: StreamConnection, event: StanzasAcked) -> None:
        """The peer has these stanzas: tell who waited, and let more through the window."""
        for token in event.tokens:
            delivery.settle(token, True)
        for session in self.sessions.values():
            if session.connection is conn and session.queue:
                self._flush(session)
            elif session.connection is conn and session.congested \
                    and len(session.queue) <= self.config.limits.max_queue_per_domain // 2:
                self._set_congested(session, False)

    def _take_back(self, conn: StreamConnection) -> None:
        """A stream ended with stanzas the peer never acknowledged: send them again over
        a new link (``federation.resend_unacked``) or bounce them (delivery.py)."""
        left = conn.stream.take_unacked()
        if not left:
            return
        peer = conn.stream.remote_domain or ""
        reason = (f"the link to {peer} ended before it acknowledged the stanza "
                  f"({conn.stream.close_reason or 'closed'})")
        resend = self.config.federation.resend_unacked and not self._stopping
        touched: list[OutboundSession] = []
        bounced = 0
        for stanza, token in reversed(left):
            item = delivery.again(stanza, token)
            local = domain_of(stanza.get("from", ""))
            remote = domain_of(stanza.get("to", ""))
            session = self.sessions.get((local, remote))
            if not resend or session is None or item.attempts >= delivery.MAX_ATTEMPTS:
                bounced += 1
                self._count("bounces", remote)
                self._bounce(stanza, item.on_done, "remote-server-timeout", reason)
                continue
            resent.mark(stanza, local)
            session.queue.appendleft(item)
            session.resent += 1
            self._count("resent", remote)
            if session not in touched:
                touched.append(session)
        log_event(log, logging.WARNING, "s2s.unacked", **conn.log_fields(), left=len(left),
                  resent=len(left) - bounced, bounced=bounced, reason=reason)
        for session in touched:
            if session.connection is conn:
                session.connection = None
            self._ensure_connecting(session)

    def _on_writable(self, conn: StreamConnection) -> None:
        for session in list(self.sessions.values()):
            if session.connection is conn and session.queue:
                self._flush(session)

    def _on_pair_failed(self, conn: StreamConnection, event: PairFailed) -> None:
        log_event(log, logging.WARNING, "s2s.refused", **conn.log_fields(),
                  pair=f"{event.local_domain}->{event.remote_domain}",
                  condition=event.condition, reason=event.reason)
        self._count("refusals", event.reason.split(":")[0][:60])
        session = self.sessions.get((event.local_domain, event.remote_domain))
        outbound = self.outbound.get(conn)
        retry = outbound is not None and not outbound.peer_header_received
        trying = session.attempt if session is not None else None
        attempt = trying is not None and trying.conn is conn and not trying.outcome.done()
        if not (attempt and retry):  # else the next target may still succeed
            self._count("s2s_failures", bounce_for(event.condition, event.reason,
                                                   event.local_domain, event.remote_domain)[0])
        if session is None:
            return
        if attempt:
            assert trying is not None
            trying.settle(Outcome(False, event.condition, event.reason, retry=retry))
        elif session.connection is conn:
            self._bounce_queue(session, *bounce_for(event.condition, event.reason,
                                                    session.local, session.remote))
            if (event.remote_domain, event.local_domain) != (conn.stream.remote_domain,
                                                             conn.stream.local_domain):
                session.connection = None  # a piggybacked pair: next time, a new stream

    def _on_verify_needed(self, conn: StreamConnection, event: DialbackVerifyNeeded) -> None:
        """Receiving Server role: ask the Authoritative Server (XEP-0220 §2.1.2)."""
        log_event(log, logging.DEBUG, "s2s.dialback_verify", **conn.log_fields(),
                  claimed=event.remote_domain)
        key = (event.local_domain, event.remote_domain, event.stream_id)
        self._verify_waiters[key] = conn
        session = self.sessions.get((event.local_domain, event.remote_domain))
        if session is None:
            session = OutboundSession(event.local_domain, event.remote_domain)
            self.sessions[(event.local_domain, event.remote_domain)] = session
        request = (event.local_domain, event.remote_domain, event.stream_id, event.key)
        out = session.connection
        out_stream = self.outbound.get(out) if out is not None else None
        if out is not None and out_stream is not None and not out_stream.closed:
            out_stream.request_verify(*request)
            out.pump()
        else:
            session.pending_verifies.append(request)
            self._ensure_connecting(session)

    def _answer_verify(self, local: str, remote: str, stream_id: str, valid: bool | None,
                       condition: str, text: str) -> None:
        waiter = self._verify_waiters.pop((local, remote, stream_id), None)
        stream = self.inbound.get(waiter) if waiter is not None else None
        if waiter is None or stream is None:
            return
        stream.dialback_verified(remote, local, valid, condition if valid is None else "", text)
        waiter.pump()

    def _on_gone(self, conn: StreamConnection) -> None:
        self.connections.discard(conn)
        self.inbound.pop(conn, None)
        outbound = self.outbound.pop(conn, None)
        ip = self._counted_ip.pop(conn, None)
        if ip is not None:
            left = self._per_ip.get(ip, 1) - 1
            if left > 0:
                self._per_ip[ip] = left
            else:
                self._per_ip.pop(ip, None)
        for key, waiter in list(self._verify_waiters.items()):
            if waiter is conn:
                del self._verify_waiters[key]
        stream = conn.stream
        carried = [s for s in self.sessions.values() if s.connection is conn]
        for session in carried:
            session.connection = None
            attempt = session.attempt
            if outbound is not None and attempt is not None and attempt.conn is conn:
                attempt.settle(Outcome(False, "remote-server-not-found",
                                       outbound.close_reason or "closed",
                                       retry=not outbound.peer_header_received))
        self._take_back(conn)
        if stream.sm_in is not None and stream.remote_domain:
            for stanza in stream.received_unacked():  # the peer sends these again
                self.recent.remember(stanza, stream.remote_domain)
        for session in carried:
            if session.queue:
                self._ensure_connecting(session)

    def _count(self, what: str, label: str) -> None:
        if self.metrics is not None:
            self.metrics.count(what, label)

    # ------------------------------------------------------------------ status, shutdown

    def describe(self) -> list[dict[str, Any]]:
        rows = []
        for conn in sorted(self.connections, key=lambda c: c.conn_id):
            row = conn.describe()
            stream = conn.stream
            queue = 0
            session = self.sessions.get((stream.local_domain or "", stream.remote_domain or ""))
            if session is not None and session.connection is conn:
                queue = len(session.queue)
            row["queue"] = queue
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
        return sum(len(session.queue) for session in self.sessions.values())

    def queues(self) -> dict[str, int]:
        return {f"{s.local}->{s.remote}": len(s.queue)
                for s in self.sessions.values() if s.queue}

    def close_inbound(self, text: str) -> int:
        """Close every inbound stream gracefully (RFC 6120 §4.4: stanzas already in
        flight are still read and routed; the partner opens its next stream elsewhere)."""
        return self.close_sessions(lambda c: c in self.inbound, "", text)

    def close_sessions(self, predicate: Callable[[StreamConnection], bool], condition: str,
                       text: str) -> int:
        closed = 0
        for conn in list(self.connections):
            if not conn.stream.closed and predicate(conn):
                conn.stream.close(condition, text)
                conn.pump()
                closed += 1
        return closed

    async def stop(self, grace: float = 5.0) -> None:
        """Graceful shutdown: stop accepting, give queued stanzas a chance, bounce the rest,
        close every stream with ``</stream:stream>``, then drop what is left."""
        self._accepting = False
        self._stopping = True
        for server in self._servers:
            server.close()
        deadline = time.monotonic() + grace
        pending = [s.task for s in self.sessions.values() if s.task and not s.task.done()]
        if pending:
            budget = max(0.0, min(grace / 2, deadline - time.monotonic()))
            await asyncio.wait(pending, timeout=budget)
        for session in self.sessions.values():
            if session.task is not None and not session.task.done():
                session.task.cancel()
            self._bounce_queue(session, "remote-server-timeout", "gateway shutting down")
        # XEP-0198: what was sent and not yet acknowledged gets its acknowledgement
        # (asked for now) before the links close; what is still unacknowledged then is
        # bounced by _take_back.
        budget_end = time.monotonic() + max(0.0, min(grace / 2, deadline - time.monotonic()))
        while time.monotonic() < budget_end and any(
                c.stream.unacked and not c.stream.closed for c in self.connections):
            for conn in self.connections:
                if conn.stream.unacked:
                    conn.pump()
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            if not conn.stream.closed:
                conn.stream.close("system-shutdown", "the gateway is shutting down")
                conn.pump()
        waits = [c.closed.wait() for c in list(self.connections)]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits),
                                       max(0.1, deadline - time.monotonic()))
        for conn in list(self.connections):
            conn.abort()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)


class _SessionDialer:
    """The connect loop's attempts for one session (a :class:`~gateway.net.connector.Dialer`)."""

    def __init__(self, service: S2SService, session: OutboundSession,
                 partner: PartnerPolicy) -> None:
        self.service = service
        self.session = session
        self.partner = partner

    def open(self, target: ConnectTarget, address: str,
             expectation: DaneExpectation | None) -> Attempt:
        service, session = self.service, self.session
        loop = asyncio.get_running_loop()
        stream = OutboundStream(
            service.ctx, local_domain=session.local, remote_domain=session.remote,
            partner=self.partner, now=loop.time(), direct_tls=target.direct_tls,
            dane_expectation=expectation,
        )
        conn = StreamConnection(stream, service._on_outbound_event, service._on_gone)
        conn.on_writable = service._on_writable
        service.connections.add(conn)
        service.outbound[conn] = stream
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


PEER_NOT_READING = "peer-not-reading"


class _AdmissionGuard(asyncio.Protocol):
    """Applies connection limits before handing the transport to the stream connection."""

    def __init__(self, service: S2SService, conn: StreamConnection) -> None:
        self.service = service
        self.conn = conn
        self.refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.conn.peer_address = f"{peer[0]}:{peer[1]}" if peer else ""
        refusal = self.service.admit(self.conn)
        if refusal:
            self.refused = True
            log_event(log, logging.WARNING, "s2s.connection_refused", direction="inbound",
                      addr=self.conn.peer_address, reason=refusal)
            self.service.refused(self.conn)
            # RFC 6120 §4.9.3.13 policy-violation would need a header; a limit is cheaper
            # to enforce by closing at once.
            transport.close()
            return
        self.conn.connection_made(transport)
        if self.service.reading_paused:
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

