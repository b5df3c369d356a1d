"""The inbound half of the S2S service: listeners, admission, the streams partners open.

* **Admission** (RFC 6120 §13.12): connection limits in total and per address are
  applied before a connection reaches a stream; over them it is closed at once.
* **Reading** stops for several independent reasons, each kept by the connection
  (:meth:`gateway.net.connection.StreamConnection.set_reading`): the router's queue is
  full, the queue toward the peer's domain is congested (its error replies land
  there), the peer sends faster than its rate limit, or the peer does not read what we
  write. Reading resumes only when none holds.
* **Stanzas** the streams accept go to the router in arrival order.
* **Dialback, Receiving Server role** (XEP-0220 §2.1.2): a stream's
  ``DialbackVerifyNeeded`` is handed to the outbound half (a ``db:verify`` to the claimed
  domain's authoritative server) and its answer comes back here, to the stream that asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.contracts import RouterForS2S
from gateway.logs import log_event
from gateway.net.connection import StreamConnection
from gateway.net.context import S2SSetup
from gateway.policy.refusals import is_policy_failure, setting_to_change
from gateway.xmpp.events import (
    DialbackVerifyNeeded,
    Event,
    PairAuthenticated,
    PairFailed,
    StanzaReceived,
    StreamClosed,
    TlsEstablished,
)
from gateway.xmpp.inbound import InboundStream

if TYPE_CHECKING:
    from gateway.metrics import Metrics

log = logging.getLogger("gateway.s2s")

VerifyRequest = Callable[[str, str, str, str], None]  # (local, remote, stream id, key)
ROUTER_FULL = "router"
PEER_NOT_READING = "peer-not-reading"


def _no_verifier(local: str, remote: str, stream_id: str, key: str) -> None:
    raise RuntimeError("inbound streams are not started")


class InboundStreams:
    """Listeners and the inbound streams they accepted."""

    def __init__(self, setup: S2SSetup, router: RouterForS2S,
                 metrics: Metrics | None = None) -> None:
        self.setup = setup
        self.router = router
        self.metrics = metrics
        self.streams: dict[StreamConnection, InboundStream] = {}
        self.reading_paused = False  # the router's backpressure
        self._servers: list[asyncio.base_events.Server] = []
        self._accepting = True
        self._per_ip: dict[str, int] = {}
        self._counted_ip: dict[StreamConnection, str] = {}  # admitted connections' address
        self._verify_waiters: dict[tuple[str, str, str], StreamConnection] = {}
        self._request_verify: VerifyRequest = _no_verifier
        self._handlers: dict[type[Event], Callable[[StreamConnection, Any], None]] = {
            StanzaReceived: self._stanza,
            PairAuthenticated: self._authenticated,
            PairFailed: self._pair_failed,
            DialbackVerifyNeeded: self._verify_needed,
            TlsEstablished: self._tls,
            StreamClosed: self._closed,
        }

    # ------------------------------------------------------------------ listening

    async def start(self, request_verify: VerifyRequest) -> None:
        """Listen on ``listen:``; a stream's dialback verification goes to
        ``request_verify``."""
        self._request_verify = request_verify
        loop = asyncio.get_running_loop()
        for address in self.setup.config.listen:
            server = await loop.create_server(
                functools.partial(self._accept, address.direct_tls),
                host=address.host, port=address.port, reuse_address=True,
            )
            self._servers.append(server)
            for sock in server.sockets:
                log_event(log, logging.INFO, "s2s.listening", address=sock.getsockname()[:2],
                          direct_tls=address.direct_tls or None)

    def stop_accepting(self) -> None:
        """Close the listening sockets: a partner connecting now is refused and tries the
        next SRV target; established streams carry on."""
        self._accepting = False
        for server in self._servers:
            server.close()

    async def servers_closed(self) -> None:
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    @property
    def listening_addresses(self) -> list[tuple[str, int]]:
        return [s.getsockname()[:2] for server in self._servers for s in server.sockets]

    def _accept(self, direct_tls: bool) -> asyncio.Protocol:
        setup = self.setup
        stream = InboundStream(setup.ctx, now=asyncio.get_running_loop().time(),
                               direct_tls=direct_tls)
        conn = StreamConnection(stream, self._on_event, self._on_gone,
                                rate_limit=setup.config.limits.inbound_bytes_per_second)
        self.streams[conn] = stream
        return _AdmissionGuard(self, conn)

    def admit(self, conn: StreamConnection) -> str:
        """Connection limits: '' to accept, else the refusal reason."""
        limits = self.setup.config.limits
        if not self._accepting:
            return "shutting down"
        ip = conn.peer_address.rpartition(":")[0]
        if len(self.streams) > limits.max_connections:
            return f"more than {limits.max_connections} connections"
        count = self._per_ip.get(ip, 0) + 1
        if count > limits.max_connections_per_ip:
            return f"more than {limits.max_connections_per_ip} connections from {ip}"
        self._per_ip[ip] = count
        self._counted_ip[conn] = ip
        return ""

    def refused(self, conn: StreamConnection) -> None:
        del self.streams[conn]

    # ------------------------------------------------------------------ reading

    def set_reading_paused(self, paused: bool) -> None:
        """Backpressure from the router: stop (or resume) reading every inbound stream."""
        self.reading_paused = paused
        for conn in self.streams:
            conn.set_reading(not paused, ROUTER_FULL)

    def pause_from(self, domain: str, paused: bool) -> None:
        """The queue toward ``domain`` is congested (drained): stop (resume) reading the
        streams ``domain`` opened to us, whose error replies would queue there too."""
        for conn, stream in self.streams.items():
            if stream.remote_domain == domain:
                conn.set_reading(not paused, f"queue-{domain}")

    # ------------------------------------------------------------------ events

    def _on_event(self, conn: StreamConnection, event: Event) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(conn, event)

    def _stanza(self, conn: StreamConnection, event: StanzaReceived) -> None:
        if self.metrics is not None:
            self.metrics.count("stanzas_in", event.remote_domain)
        self.router.from_xmpp(event.stanza, event.remote_domain, event.local_domain)

    def _authenticated(self, conn: StreamConnection, event: PairAuthenticated) -> None:
        stream = conn.stream
        log_event(log, logging.INFO, "s2s.authenticated", peer=event.remote_domain,
                  local=event.local_domain, direction="inbound", stream=stream.stream_id,
                  method=str(event.method), tls=stream.tls_version or "none",
                  addr=conn.peer_address)
        if self.metrics is not None:
            self.metrics.session_authenticated("inbound", str(event.method))

    def _pair_failed(self, conn: StreamConnection, event: PairFailed) -> None:
        log_event(log, logging.WARNING, "s2s.refused", **conn.log_fields(),
                  pair=f"{event.local_domain}->{event.remote_domain}",
                  condition=event.condition, reason=event.reason)
        if self.metrics is not None:
            self.metrics.count("refusals", event.reason.split(":")[0][:60])

    def _tls(self, conn: StreamConnection, event: TlsEstablished) -> None:
        log_event(log, logging.DEBUG, "s2s.tls", **conn.log_fields(), version=event.version,
                  cipher=event.cipher, peer_cert=event.peer_certificate_present)

    def _closed(self, conn: StreamConnection, event: StreamClosed) -> None:
        """A stream that ended before anything was authenticated because the two policies
        do not meet (we refused, or the peer gave up on what we offer): a WARNING naming
        the partner and the setting to change, not just a closed stream."""
        if conn.stream.pairs or not is_policy_failure(event.reason, event.error):
            return
        fields = conn.log_fields()
        peer = fields.get("peer") or ""
        log_event(log, logging.WARNING, "s2s.policy_mismatch", **fields,
                  by="peer" if event.by_peer else "us", error=event.error or None,
                  reason=event.reason, change=setting_to_change(
                      peer, self.setup.partner_for(peer) if peer else None,
                      f"{event.error} {event.reason}"))

    def _verify_needed(self, conn: StreamConnection, event: DialbackVerifyNeeded) -> None:
        """Receiving Server role: ask the Authoritative Server (XEP-0220 §2.1.2)."""
        log_event(log, logging.DEBUG, "s2s.dialback_verify", **conn.log_fields(),
                  claimed=event.remote_domain)
        self._verify_waiters[(event.local_domain, event.remote_domain, event.stream_id)] = conn
        self._request_verify(event.local_domain, event.remote_domain, event.stream_id,
                             event.key)

    def answer_verify(self, local: str, remote: str, stream_id: str, valid: bool | None,
                      condition: str, text: str) -> None:
        """The Authoritative Server's answer (None: it could not be asked) goes to the
        stream that asked."""
        waiter = self._verify_waiters.pop((local, remote, stream_id), None)
        stream = self.streams.get(waiter) if waiter is not None else None
        if waiter is None or stream is None:
            return
        stream.dialback_verified(remote, local, valid, condition if valid is None else "", text)
        waiter.pump()

    def _on_gone(self, conn: StreamConnection) -> None:
        self.streams.pop(conn, None)
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


class _AdmissionGuard(asyncio.Protocol):
    """Applies connection limits before handing the transport to the stream connection."""

    def __init__(self, streams: InboundStreams, conn: StreamConnection) -> None:
        self.streams = streams
        self.conn = conn
        self.refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.conn.peer_address = f"{peer[0]}:{peer[1]}" if peer else ""
        refusal = self.streams.admit(self.conn)
        if refusal:
            self.refused = True
            log_event(log, logging.WARNING, "s2s.connection_refused", direction="inbound",
                      addr=self.conn.peer_address, reason=refusal)
            self.streams.refused(self.conn)
            # RFC 6120 §4.9.3.13 policy-violation would need a header; a limit is cheaper
            # to enforce by closing at once.
            transport.close()
            return
        self.conn.connection_made(transport)
        if self.streams.reading_paused:
            self.conn.set_reading(False, ROUTER_FULL)

    def data_received(self, data: bytes) -> None:
        if not self.refused:
            self.conn.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self.refused else self.conn.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.refused:
            self.conn.connection_lost(exc)

    # The peer does not read what we write (our buffer passed its high-water mark): stop
    # reading from it too, as one more reason among the connection's others, so that the
    # buffer draining resumes reading only when no other reason holds.
    def pause_writing(self) -> None:
        if not self.refused:
            self.conn.pause_writing()
            self.conn.set_reading(False, PEER_NOT_READING)

    def resume_writing(self) -> None:
        if not self.refused:
            self.conn.set_reading(True, PEER_NOT_READING)
            self.conn.resume_writing()
