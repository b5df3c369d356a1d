"""The thin asyncio layer under one sans-I/O S2S stream.

It moves bytes between a transport and an :class:`~gateway.xmpp.stream.S2SStream`,
keeps the stream's single timer armed, and hands every event to an owner (the
:class:`~gateway.net.federation.S2SService`). All protocol decisions live in the core.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import sys
from collections.abc import Callable
from typing import Any, cast

from gateway.logs import log_event
from gateway.net import heap
from gateway.xmpp.events import Event, PairAuthenticated, StreamClosed
from gateway.xmpp.inbound import InboundStream
from gateway.xmpp.outbound import OutboundStream
from gateway.xmpp.stream import S2SStream

log = logging.getLogger("gateway.s2s")
_ids = itertools.count(1)

EventHandler = Callable[["StreamConnection", Event], None]

# Bytes buffered for a slow peer before we stop reading from that peer too (backpressure).
WRITE_HIGH_WATER = 1024 * 1024

# Under stream management we write <a/> on a stream we otherwise only read, and Linux then
# takes the connection for an interactive one and delays its TCP ACKs. A peer that leaves
# Nagle's algorithm on (Prosody does by default) holds each small write while one is
# unacknowledged, so its stanzas would wait for our next <a/> (docs/performance.md,
# "Acknowledgements and Nagle"). TCP_QUICKACK after each read sends the pending ACK at
# once; it is not sticky (man 7 tcp), hence after every read under stream management.
QUICKACK: int | None = socket.TCP_QUICKACK if sys.platform == "linux" else None


class StreamConnection(asyncio.Protocol):
    """One TCP connection carrying one S2S stream.

    Slotted, and its ``closed`` event made only when someone waits for it: there is one
    per session, most sessions are idle, and an instance dict and an asyncio.Event (with
    its deque of waiters) are about 1.5 KiB of each (docs/performance.md).
    """

    __slots__ = ("_closed_event", "_is_closed", "_loop", "_on_event", "_on_gone",
                 "_pause_reasons", "_pump_scheduled", "_quickack", "_rate",
                 "_throttled", "_timer",
                 "_timer_at", "_tokens", "_tokens_at", "authenticated_at", "conn_id",
                 "connected_at", "counted_ip", "on_writable", "peer_address", "stream",
                 "transport", "write_paused")

    def __init__(self, stream: S2SStream, on_event: EventHandler,
                 on_gone: Callable[[StreamConnection], None], *, rate_limit: int = 0) -> None:
        self.stream = stream
        # Token bucket on received bytes (0 = unlimited): a flooding peer is slowed down
        # by pausing reads (TCP backpressure), other sessions are not affected.
        self._rate = rate_limit
        self._tokens = float(rate_limit)
        self._tokens_at = 0.0
        self._throttled = False
        self._pause_reasons: set[str] = set()
        self._pump_scheduled = False
        self.conn_id = next(_ids)
        self._on_event = on_event
        self._on_gone = on_gone
        self.transport: asyncio.Transport | None = None
        self._quickack: socket.socket | None = None  # the TCP socket, where QUICKACK exists
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.connected_at = self._loop.time()
        self.peer_address = ""
        self._closed_event: asyncio.Event | None = None
        self._is_closed = False
        self.authenticated_at: float | None = None
        # The transport holds more than WRITE_HIGH_WATER unsent bytes: the owner stops
        # handing us stanzas until on_writable says the peer has caught up.
        self.write_paused = False
        self.on_writable: Callable[[StreamConnection], None] | None = None

    @property
    def closed(self) -> asyncio.Event:
        """Set once the connection is gone (for shutdown to wait on)."""
        if self._closed_event is None:
            self._closed_event = asyncio.Event()
            if self._is_closed:
                self._closed_event.set()
        return self._closed_event

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; trust the protocol.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        if QUICKACK is not None:
            self._quickack = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_address = f"{peer[0]}:{peer[1]}"
            self.stream.peer_address = self.peer_address
        if isinstance(self.stream, OutboundStream):
            self.stream.initiate(self._loop.time())
        self.pump()

    def data_received(self, data: bytes) -> None:
        now = self._loop.time()
        self.stream.receive_data(data, now)
        if self._quickack is not None and self.stream.sm_in is not None:
            self._ack_now()
        self.pump()
        if self._rate:
            self._spend(len(data), now)

    def _ack_now(self) -> None:
        assert self._quickack is not None and QUICKACK is not None
        try:
            self._quickack.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
        except OSError:  # the socket is closing: nothing more to acknowledge on it
            self._quickack = None

    def _spend(self, size: int, now: float) -> None:
        rate = self._rate
        self._tokens = min(float(rate), self._tokens + (now - self._tokens_at) * rate) - size
        self._tokens_at = now
        if self._tokens < 0 and not self._throttled and self.transport is not None:
            self._throttled = True
            self.set_reading(False, "rate")
            self._loop.call_later(-self._tokens / rate, self._unthrottle)

    def _unthrottle(self) -> None:
        self._throttled = False
        self.set_reading(True, "rate")

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.on_writable is not None:
            self.on_writable(self)

    def eof_received(self) -> bool | None:
        self.stream.connection_lost("peer closed the TCP connection")
        self.pump()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.stream.closed:
            self.stream.connection_lost(
                f"TCP connection lost: {exc}" if exc else "TCP connection closed"
            )
        self.transport = None
        self.pump()
        self._cancel_timer()
        self._is_closed = True
        if self._closed_event is not None:
            self._closed_event.set()
        self._on_gone(self)

    # ------------------------------------------------------------------ driving the core

    def pump(self) -> None:
        """Flush output, dispatch events, re-arm the timer; close when the core is done."""
        stream = self.stream
        data = stream.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
        for event in stream.events():
            if isinstance(event, PairAuthenticated) and self.authenticated_at is None:
                self.authenticated_at = self._loop.time()
            try:
                self._on_event(self, event)
            except Exception:  # an owner bug must not kill the connection silently
                log.exception("event handler failed", extra={})
            if isinstance(event, StreamClosed):
                self._log_closed(event)
        # Handlers may have written more (e.g. dialback answers).
        data = stream.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
        if stream.closed:
            self._cancel_timer()
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()
            return
        self._arm_timer(stream.get_timer())

    def schedule_pump(self) -> None:
        """Pump once at the end of this loop iteration: many stanzas sent in a burst then
        share one TLS record flush and one socket write instead of one each."""
        if not self._pump_scheduled:
            self._pump_scheduled = True
            self._loop.call_soon(self._scheduled_pump)

    def _scheduled_pump(self) -> None:
        self._pump_scheduled = False
        self.pump()

    def _arm_timer(self, deadline: float | None) -> None:
        if deadline == self._timer_at:
            return
        self._cancel_timer()
        if deadline is not None:
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._fire_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

    def _fire_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        stream = self.stream
        releases = stream.memory_releases
        stream.handle_timer(self._loop.time())
        if stream.memory_releases != releases:  # went idle: its buffers can go to the OS
            heap.TRIMMER.released(self._loop)
        self.pump()

    def set_reading(self, reading: bool, why: str = "owner") -> None:
        """Pause/resume reads; reading resumes only when no reason to pause is left."""
        if reading:
            self._pause_reasons.discard(why)
        else:
            self._pause_reasons.add(why)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._pause_reasons:
            if transport.is_reading():
                transport.pause_reading()
        elif not transport.is_reading():
            transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------------ status

    def describe(self) -> dict[str, Any]:
        stream = self.stream
        tls = stream.tls_version or None
        method = stream.method
        return {
            "peer_domain": stream.remote_domain,
            "local_domain": stream.local_domain,
            "direction": "inbound" if isinstance(stream, InboundStream) else "outbound",
            "method": str(method) if method else None,
            "pairs": [
                {"remote": r, "local": lo, "method": str(m)} for (r, lo), m in stream.pairs.items()
            ],
            "tls_version": tls,
            "cipher": stream.tls_cipher or None,
            "stream_id": stream.stream_id,
            "peer_address": self.peer_address,
            "age_seconds": round(self._loop.time() - self.connected_at, 3),
            "stanzas_in": stream.stanzas_in,
            "stanzas_out": stream.stanzas_out,
            "phase": stream.phase.value,
            # XEP-0198 counters (None: no stream management on this stream), XEP-0288,
            # the ALPN protocol of direct TLS (XEP-0368).
            "stream_management": stream.describe_sm(),
            "bidi": stream.bidi,
            "alpn": stream.tls_alpn or None,
        }

    def log_fields(self) -> dict[str, Any]:
        stream = self.stream
        return {
            "peer": stream.remote_domain or (stream.claimed_domain
                                             if isinstance(stream, InboundStream) else None),
            "local": stream.local_domain,
            "direction": "inbound" if isinstance(stream, InboundStream) else "outbound",
            "stream": stream.stream_id,
            "method": str(stream.method) if stream.method else None,
            "addr": self.peer_address,
            "conn": self.conn_id,
        }

    def _log_closed(self, event: StreamClosed) -> None:
        level = logging.INFO if not event.error or event.by_peer else logging.WARNING
        log_event(log, level, "s2s.closed", **self.log_fields(),
                  error=event.error, by="peer" if event.by_peer else "us", reason=event.reason)
