"""The asyncio side of the SIP backend: UDP, TCP and TLS endpoints (RFC 3261 §18).

Thin on purpose: bytes in → :func:`parse_message` → the backend's handler; bytes out ←
the transaction layer's outbox. A *flow* names where bytes go:

* UDP: ``("udp", (host, port))``; responses go to the address the request came from
  (the ``rport`` behaviour of RFC 3581, which is what a proxy in front of us expects);
* TCP/TLS: ``("tcp", n)`` for connection number ``n``; :data:`PROXY_FLOW` is the
  connection we open to the configured proxy (our outbound proxy, RFC 3261 §8.1.2) and
  re-open on demand. Requests the proxy sends us arrive on connections it opens to our
  listening socket; their responses go back on the same connection (§18.2.2).

A stream connection whose framing breaks (bad Content-Length, oversized head) is answered
(400/413 when the request can still be read far enough, 403 when it is not trusted) and
closed: nothing after it can be trusted to be a message boundary.

This is the boundary between the network and everything else: no exception raised while
handling what arrived escapes into asyncio's callbacks (where it would be printed on stderr
with a traceback, outside the log, with no rate limit, and over TCP end the connection).
What the SIP layer refuses it refuses with its own error (:class:`SipParseError`, a 400);
anything else is caught here, logged with its traceback at most
:data:`MALFORMED_LOG_PER_SECOND` times a second (the rest counted as ``suppressed=N``),
counted on ``xmpp_gateway_sip_malformed_total{reason="unexpected"}``, and the datagram
dropped (a stream: its connection closed, since its state is unknown).

UDP has no flow control: a burst larger than the socket's receive buffer is dropped by
the kernel before we see it. The buffer is therefore raised at start to
``sip.udp_receive_buffer`` (as Kamailio does for its own sockets), with SO_RCVBUFFORCE
when we may (root/CAP_NET_ADMIN) so ``net.core.rmem_max`` does not cap it; what the
kernel granted is logged, with a warning and the sysctl to fix it when it is less, and
the socket's own drop counter (SO_MEMINFO, else ``/proc/net/udp``) is sampled every second,
logged at WARNING as it grows (``sip.udp_dropped``) and shown in ``status``.

Trust (:mod:`gateway.sip.trust`, docs/sip.md "Security"): bytes from a source outside
:attr:`SipTransport.trust` never reach the parser's consumer. A request gets one ``403``
(UDP: sent once, no transaction, so never retransmitted; TCP/TLS: then the connection is
closed), anything else is dropped, and :attr:`SipTransport.on_refused` is told (log and
metric). With :attr:`SipTransport.peer_names` set (mutual TLS), an inbound TLS connection
whose verified certificate does not name the proxy is refused the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import ssl
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.logs import FIELDS_ATTR, log_event
from gateway.sip.message import SipParseError, StreamDeframer, new_tag, response_wire
from gateway.sip.trust import RefusalLogBudget, SourceTrust, certificate_names_match, refusal_for

log = logging.getLogger("gateway.sip.transport")

PROXY_FLOW = ("tcp", 0)
UDP_BATCH = 256  # datagrams read per readiness event
# Datagrams arriving densely (a batch found more than one waiting, and emptied the
# socket) are read again only this long after the batch began, not at the next
# readiness: each wakeup costs the gateway far more than a datagram does (the event
# loop's iteration and epoll, the S2S write and its TLS record, the peer's
# acknowledgement of it, each a context switch: about 140 µs in this VM against 30-40 µs
# per message), and one datagram per wakeup at a paced 10,000/s made it the larger
# share. 5 ms: about 50 datagrams a batch at 10,000/s; against 2 ms (about 20) it took
# 3-4 µs (a tenth) off each message, in 14 pairs of relay runs (docs/performance.md),
# and 5 ms is nothing beside a SIP timer (T1 500 ms) or a chat user's eye. A lone
# datagram (low rates) is still read at once; a full batch (a flood) is followed at
# once. At most this much is added to the answer of a request. Not after a
# batch that held a response: a response completes one of our client transactions, and
# the next MESSAGE to the same SIP user waits for it (order per pair), so a delay there
# slows XMPP → SIP down (measured: 10,000/s paced fell to 8,100/s, p99 42 ms → 1.2 s).
UDP_READ_INTERVAL = 0.005
# When the kernel has started dropping datagrams at the socket (its buffer is full: the
# gateway reads slower than they arrive), what it drops goes unanswered. From then until
# the queue is back under BACKLOG_LOW of the buffer each batch handles only
# UDP_FULL_WHEN_BACKLOGGED datagrams in full; beyond them the transport is marked
# ``backlogged`` and new MESSAGE/SUBSCRIBEs are answered 503 + Retry-After from their head
# at a fraction of the cost (gateway/sip/endpoint.py), so that the socket is drained and
# what is read gets an answer rather than silence. In-dialog requests, responses and
# retransmissions of accepted requests are always handled in full. Judged on the kernel's
# drop counter (SO_MEMINFO, one system call per full batch), not on the queue's depth: a
# burst that fits the buffer (5,000 SUBSCRIBEs at once from a proxy) is worked off, since
# a 503 reaches a phone behind a proxy as a failure (RFC 3261 §16.7) where a delay costs
# nothing, and the retries of many 503s would come back together.
BACKLOG_LOW = 0.5
UDP_FULL_WHEN_BACKLOGGED = 64
# Linux's SO_MEMINFO (asm-generic/socket.h), which Python's socket module does not name:
# the socket's memory counters, among them the receive queue's bytes and the drop count.
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55 if sys.platform == "linux" else None)
_MEMINFO = struct.Struct("9I")  # SK_MEMINFO_RMEM_ALLOC, _RCVBUF, ..., _DROPS (index 8)
UDP_MAX_DATAGRAM = 65535
VERDICT_CACHE_LIMIT = 4096
DEFAULT_UDP_RECEIVE_BUFFER = 8 * 1024 * 1024
# Linux's SO_RCVBUFFORCE (asm-generic/socket.h), which Python's socket module does not name:
# like SO_RCVBUF but not capped by net.core.rmem_max, for a process with CAP_NET_ADMIN.
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform == "linux" else None)
Flow = tuple[str, Any]
MessageHandler = Callable[[bytes, Flow, tuple[str, int]], None]
FlowLost = Callable[[Flow], None]
# (transport, peer, why, method): a message from an untrusted source was refused
Refused = Callable[[str, tuple[str, int], str, str], None]
CONNECT_TIMEOUT = 5.0  # seconds to open the connection to the proxy (TCP, TLS handshake)
UNTRUSTED_GRACE = 5.0  # seconds an untrusted connection may stay open without a request
MALFORMED_LOG_PER_SECOND = 20
# The kernel's drop counter at the UDP socket is sampled once a second; while it grows a
# WARNING says so at once, then at most once per this many seconds (with what it counted
# in between), so that a flood is visible in the log as it happens, not as one line a second.
DROP_WARNING_INTERVAL = 10.0
# (transport, reason label): a message was refused as malformed or failed unexpectedly
Malformed = Callable[[str, str], None]


class _UdpEndpoint:
    """A UDP socket read in batches: asyncio's datagram transport takes one datagram per
    readiness event, i.e. one trip through the event loop and one epoll call per SIP
    message; here every readiness drains up to :data:`UDP_BATCH` datagrams. Sends go
    straight to the socket; only when the kernel's send buffer is full do they queue
    (bounded by the window of the layers above) until the socket is writable."""

    def __init__(self, owner: SipTransport, sock: socket.socket) -> None:
        self.owner = owner
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.backlog: deque[tuple[bytes, tuple[str, int]]] = deque()
        # Trusted source address -> its flow and peer, made once: every datagram from
        # the proxy comes from the same address, and each server transaction keeps its
        # flow for Timer J (bounded like the trust verdicts; cleared on reload).
        self.flows: dict[Any, tuple[Flow, tuple[str, int]]] = {}
        self._reading = False
        self._deferred: list[tuple[bytes, tuple[str, int]]] = []
        self.flooded = False  # the kernel drops at this socket: see BACKLOG_LOW
        self._drops_seen = 0  # its drop counter at the last full batch
        self._resume: asyncio.TimerHandle | None = None  # see UDP_READ_INTERVAL
        self._responses = False  # the batch being read held a response
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        # What handling this batch sends (answers, requests the answers let out of the
        # window) leaves together after it: the proxy's worker wakes once for them, not
        # once per datagram, and our sendto calls find it awake (in a VM each wakeup is
        # an inter-processor interrupt). The delay is the batch's own handling time.
        self._reading = True
        began = self.loop.time()
        try:
            self._responses = False
            if 1 < self._read_batch() < UDP_BATCH and not self._responses \
                    and self.sock.fileno() >= 0:
                # dense arrivals: read again UDP_READ_INTERVAL after this batch began
                self.loop.remove_reader(self.sock.fileno())
                self._resume = self.loop.call_at(began + UDP_READ_INTERVAL, self._resumed)
        finally:
            self._reading = False
            if self._deferred:
                deferred, self._deferred = self._deferred, []
                for data, addr in deferred:
                    self.sendto(data, addr)

    def _resumed(self) -> None:
        self._resume = None
        if self.sock.fileno() >= 0:
            self.loop.add_reader(self.sock.fileno(), self._readable)
            self._readable()  # what arrived meanwhile (else the next readiness)

    def _read_batch(self) -> int:
        """Read and handle up to :data:`UDP_BATCH` datagrams; how many were read (fewer
        than UDP_BATCH: the socket is empty now)."""
        owner = self.owner
        recvfrom, on_message, admits = self.sock.recvfrom, owner.on_message, owner.admits
        flows = self.flows
        full_until = UDP_FULL_WHEN_BACKLOGGED if self.flooded else UDP_BATCH
        for count in range(UDP_BATCH):
            if count == full_until:
                owner.backlogged = True
            try:
                data, addr = recvfrom(UDP_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                self.flooded = owner.backlogged = False  # the queue is empty
                return count
            except OSError as exc:  # ICMP errors reported on the socket, e.g. refused
                log_event(log, logging.DEBUG, "sip.udp_error", reason=str(exc))
                continue
            if data[:1] in b"\r\n" and not data.strip(b"\r\n"):  # keep-alive (RFC 5626 §4.4.1)
                continue
            if data[:4] == b"SIP/":
                self._responses = True
            known = flows.get(addr)
            try:
                if known is None:
                    peer = addr[:2]
                    if not admits(peer[0]):
                        owner.refuse(data, peer, "source not trusted", self.sendto, None)
                        continue
                    if len(flows) >= VERDICT_CACHE_LIMIT:
                        flows.clear()
                    known = flows[addr] = (("udp", peer), peer)
                on_message(data, known[0], known[1])
            except Exception as exc:  # the boundary: see the module docstring
                owner.unexpected(exc, addr[:2], "datagram dropped")
        # a full batch: is the kernel dropping what the buffer cannot hold (see BACKLOG_LOW)?
        memory = self.meminfo()
        if memory is not None:
            queued, limit, drops = memory[0], memory[1], memory[8]
            if drops > self._drops_seen:
                self.flooded = True
            elif self.flooded and queued < limit * BACKLOG_LOW:
                self.flooded = False
            self._drops_seen = drops
        owner.backlogged = False
        return UDP_BATCH

    def meminfo(self) -> tuple[int, ...] | None:
        """The socket's SK_MEMINFO counters (receive queue bytes, its limit, …, drops), or
        None where the kernel does not report them."""
        if SO_MEMINFO is None:
            return None
        try:
            return _MEMINFO.unpack(self.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO,
                                                        _MEMINFO.size))
        except (OSError, struct.error):
            return None

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._reading:
            self._deferred.append((data, addr))
            return
        if not self.backlog:
            try:
                self.sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self.loop.add_writer(self.sock.fileno(), self._writable)
            except OSError as exc:
                log_event(log, logging.DEBUG, "sip.udp_error", reason=str(exc),
                          to=f"{addr[0]}:{addr[1]}")
                return
        self.backlog.append((data, addr))

    def _writable(self) -> None:
        while self.backlog:
            data, addr = self.backlog[0]
            try:
                self.sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log_event(log, logging.DEBUG, "sip.udp_error", reason=str(exc))
            self.backlog.popleft()
        self.loop.remove_writer(self.sock.fileno())

    def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self.loop.remove_writer(self.sock.fileno())
            self.sock.close()


class _Stream(asyncio.Protocol):
    def __init__(self, owner: SipTransport, number: int) -> None:
        self.owner = owner
        self.flow: Flow = ("tcp", number)
        self.deframer = StreamDeframer()
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.pending: list[bytes] = []
        self.refusal = ""  # why this connection is not trusted ("" = trusted)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer = (peer[0], peer[1])
        self.owner.streams[self.flow] = self
        if self.flow != PROXY_FLOW:  # the one we opened is the proxy by construction
            self.refusal = self.owner.stream_refusal(self.peer, transport)
            if self.refusal:
                asyncio.get_running_loop().call_later(UNTRUSTED_GRACE, transport.close)
        if self.owner.input_paused and not self.refusal:
            transport.pause_reading()
        for data in self.pending:
            transport.write(data)
        self.pending.clear()

    def pause(self, paused: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if paused and transport.is_reading():
            transport.pause_reading()
        elif not paused and not transport.is_reading():
            transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception as exc:  # the boundary: see the module docstring
            self.owner.unexpected(exc, self.peer, "connection closed")
            if self.transport is not None:
                self.transport.close()

    def _received(self, data: bytes) -> None:
        deframer = self.deframer
        messages = deframer.feed(data)
        if self.refusal:
            if self.transport is not None and (messages or deframer.error is not None):
                if messages:
                    self.owner.refuse(messages[0], self.peer, self.refusal, self._write,
                                      self.transport)
                else:
                    self.owner.refuse_unframed(deframer.error, self.peer, self.refusal,
                                               self._write, self.transport)
            return
        for message in messages:
            self.owner.on_message(message, self.flow, self.peer)
        error = deframer.error
        if error is not None and self.transport is not None \
                and not self.transport.is_closing():
            action = "connection closed"
            if error.request is not None and error.status:
                self._write(response_wire(error.request, error.status, error.phrase,
                                          to_tag=new_tag()), self.peer)
                action = f"{error.status} {error.phrase}, connection closed"
            self.owner.report_malformed(self.peer, error.reason, action, "framing")
            self.transport.close()

    def _write(self, data: bytes, _peer: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.owner.streams.get(self.flow) is self:
            del self.owner.streams[self.flow]
        self.owner.on_flow_lost(self.flow)


class SipTransport:
    """One listening endpoint plus the connection to the proxy (stream transports)."""

    def __init__(self, kind: str, local: tuple[str, int], proxy: tuple[str, int],
                 on_message: MessageHandler, on_flow_lost: FlowLost, *,
                 server_ssl: ssl.SSLContext | None = None,
                 client_ssl: ssl.SSLContext | None = None,
                 udp_receive_buffer: int = 0) -> None:
        if kind not in ("udp", "tcp", "tls"):
            raise ValueError(f"unknown SIP transport {kind!r}")
        if kind == "tls" and (server_ssl is None or client_ssl is None):
            raise ValueError("SIP over TLS needs a server and a client TLS context")
        self.kind = kind
        self.local = local
        self.proxy = proxy
        self.on_message = on_message
        self.on_flow_lost = on_flow_lost
        self.server_ssl = server_ssl
        self.client_ssl = client_ssl
        self.streams: dict[Flow, _Stream] = {}
        self._numbers = itertools.count(1)
        self._udp: _UdpEndpoint | None = None
        self._server: asyncio.Server | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._proxy_stream: _Stream | None = None
        self.last_error = ""  # why the last connection to the proxy failed
        self.udp_receive_buffer = udp_receive_buffer or DEFAULT_UDP_RECEIVE_BUFFER
        self.udp_buffer_granted = 0
        self.input_paused = False
        self.pauses = 0  # times stream input was paused for the XMPP side
        self._udp_proxy: tuple[str, int] | None = None
        self._proxy_flow: Flow | None = None
        self.trust: SourceTrust | None = None  # None: every source (set by the backend)
        self.peer_names: tuple[str, ...] | None = None  # mutual TLS: names the peer needs
        self.on_refused: Refused | None = None
        self.on_malformed: Malformed | None = None
        # UDP: the socket holds more than the gateway reads (see UDP_FULL_WHEN_BACKLOGGED)
        self.backlogged = False
        self._verdicts: dict[str, bool] = {}  # source address → trusted (cache)
        self._malformed_log = RefusalLogBudget(MALFORMED_LOG_PER_SECOND)
        self.unexpected_errors = 0
        self._drops_reported = 0  # the kernel's count at the last sip.udp_dropped line
        self._drops_reported_at = float("-inf")
        self._udp_inode = ""

    # ------------------------------------------------------------------ trust

    def set_trust(self, trust: SourceTrust | None) -> None:
        self.trust = trust
        self._verdicts.clear()
        if self._udp is not None:
            self._udp.flows.clear()  # admitted under the old trust: ask again

    def admits(self, ip: str) -> bool:
        """Whether requests from ``ip`` are accepted (remembered per address: this is
        asked for every datagram)."""
        verdict = self._verdicts.get(ip)
        if verdict is None:
            verdict = self.trust is None or self.trust.is_trusted(ip)
            if len(self._verdicts) >= VERDICT_CACHE_LIMIT:
                self._verdicts.clear()  # a spray of forged sources must not grow it
            self._verdicts[ip] = verdict
        return verdict

    def stream_refusal(self, peer: tuple[str, int], transport: asyncio.BaseTransport) -> str:
        """Why an inbound connection is not trusted ("" when it is)."""
        if not self.admits(peer[0]):
            return "source not trusted"
        ssl_object = transport.get_extra_info("ssl_object")
        if self.peer_names is not None and ssl_object is not None:
            reason = certificate_names_match(ssl_object.getpeercert(binary_form=True),
                                             self.peer_names)
            if reason:
                return reason
        return ""

    def send_udp(self, data: bytes, peer: tuple[str, int]) -> None:
        if self._udp is not None:
            self._udp.sendto(data, peer)

    def refuse(self, data: bytes, peer: tuple[str, int], why: str,
               send: Callable[[bytes, tuple[str, int]], None],
               connection: asyncio.BaseTransport | None) -> None:
        """Answer a request from an untrusted peer 403 once, drop anything else; a stream
        is closed after the answer (its later bytes are not read)."""
        answer, method = refusal_for(data, stream=connection is not None)
        if answer is not None:
            send(answer, peer)
        if connection is not None:
            connection.close()
        if self.on_refused is not None:
            self.on_refused(self.kind, peer, why, method)

    def refuse_unframed(self, error: SipParseError | None, peer: tuple[str, int], why: str,
                        send: Callable[[bytes, tuple[str, int]], None],
                        connection: asyncio.BaseTransport) -> None:
        """:meth:`refuse` for an untrusted connection whose first request lost the
        framing: answered 403 when it can be read far enough, then closed."""
        request = error.request if error is not None else None
        method = "unparseable"
        if request is not None:
            method = request.method
            send(response_wire(request, 403, "Forbidden", to_tag=new_tag()), peer)
        connection.close()
        if self.on_refused is not None:
            self.on_refused(self.kind, peer, why, method)

    def report_malformed(self, peer: tuple[str, int], reason: str, action: str,
                         label: str, *, exc_info: BaseException | None = None) -> None:
        """One message refused as malformed (``label``: syntax, framing) or failed
        unexpectedly: logged at WARNING within :data:`MALFORMED_LOG_PER_SECOND` lines a
        second, always counted."""
        allowed, suppressed = self._malformed_log.allow(time.monotonic())
        if allowed:
            fields = {"peer": f"{peer[0]}:{peer[1]}", "transport": self.kind,
                      "reason": reason, "action": action}
            if suppressed:
                fields["suppressed"] = str(suppressed)
            # log_event's fields, plus the traceback of an unexpected error
            log.warning("sip.unexpected_error" if label == "unexpected" else "sip.malformed",
                        extra={FIELDS_ATTR: fields}, exc_info=exc_info)
        if self.on_malformed is not None:
            self.on_malformed(self.kind, label)

    def unexpected(self, exc: Exception, peer: tuple[str, int], action: str) -> None:
        """An exception nobody handled while taking in a message (a bug, by definition):
        see the module docstring. Never raises."""
        self.unexpected_errors += 1
        with contextlib.suppress(Exception):
            self.report_malformed(peer, f"{type(exc).__name__}: {exc}", action, "unexpected",
                                  exc_info=exc)

    @property
    def reliable(self) -> bool:
        return self.kind != "udp"

    @property
    def proxy_flow(self) -> Flow:
        """Where requests to the proxy go; over UDP its resolved address, which is also
        where its responses must come from (see :mod:`gateway.sip.transaction`)."""
        flow = self._proxy_flow
        if flow is None:
            flow = ("udp", self._udp_proxy or self.proxy) if self.kind == "udp" else PROXY_FLOW
            if self.kind != "udp" or self._udp_proxy is not None:
                self._proxy_flow = flow  # final once the address is resolved
        return flow

    @property
    def via_transport(self) -> str:
        return self.kind.upper()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.kind == "udp":
            infos = await loop.getaddrinfo(self.local[0], self.local[1],
                                           type=socket.SOCK_DGRAM)
            sock = socket.socket(infos[0][0], socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.bind(infos[0][4])
                self._raise_receive_buffer(sock)
                self._udp_proxy = await self._resolve_proxy(sock)
            except BaseException:
                sock.close()
                raise
            self.local = sock.getsockname()[:2]
            self._udp = _UdpEndpoint(self, sock)
        else:
            self._server = await loop.create_server(
                lambda: _Stream(self, next(self._numbers)), self.local[0], self.local[1],
                ssl=self.server_ssl)
            self.local = self._server.sockets[0].getsockname()[:2]

    def _raise_receive_buffer(self, sock: Any) -> None:
        wanted = self.udp_receive_buffer
        for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
            if option is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, wanted)
                break
            except OSError:
                continue
        # Linux reports twice what was granted (it counts its bookkeeping too).
        self.udp_buffer_granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        if self.udp_buffer_granted < wanted:
            log_event(log, logging.WARNING, "sip.udp_buffer",
                      wanted=wanted, granted=self.udp_buffer_granted,
                      reason="the kernel capped the UDP receive buffer: bursts beyond it are "
                             "dropped before the gateway sees them",
                      hint=f"sysctl -w net.core.rmem_max={wanted} (or run with "
                           "CAP_NET_ADMIN)")
        else:
            log_event(log, logging.INFO, "sip.udp_buffer", granted=self.udp_buffer_granted)

    async def _resolve_proxy(self, sock: Any) -> tuple[str, int]:
        """The proxy's numeric address in our socket's family (responses are matched
        against it, and a name would never equal the address they come from)."""
        host, port = self.proxy
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, family=sock.family,
                                           type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise OSError(f"cannot resolve the SIP proxy {host}: {exc}") from None
        address = infos[0][4]
        return str(address[0]), int(address[1])

    def pause_input(self, paused: bool) -> None:
        """Stop (or resume) reading every stream connection: TCP flow control then slows
        the proxy down while the XMPP side cannot take more (UDP cannot be paused: its
        requests are taken until the XMPP side is saturated, then answered 503)."""
        if paused == self.input_paused:
            return
        self.input_paused = paused
        self.pauses += paused
        for stream in list(self.streams.values()):
            stream.pause(paused)
        log_event(log, logging.INFO, "sip.input", state="paused" if paused else "resumed",
                  transport=self.kind)

    def udp_drops(self) -> int | None:
        """Datagrams the kernel dropped at our socket because its buffer was full
        (SO_MEMINFO, or else the ``drops`` column of /proc/net/udp for our socket's
        inode), None if unknown."""
        if self._udp is None:
            return None
        memory = self._udp.meminfo()
        if memory is not None:
            return memory[8]
        if not self._udp_inode:
            try:
                self._udp_inode = str(os.fstat(self._udp.sock.fileno()).st_ino)
            except (OSError, ValueError):
                return None
        inode = self._udp_inode
        # thread-self: the namespace of the thread asking (the same as the process's in
        # the daemon; a test may run the gateway in a thread that joined another one)
        for table in ("/proc/thread-self/net/udp", "/proc/thread-self/net/udp6"):
            with contextlib.suppress(OSError, ValueError):
                for line in Path(table).read_text().splitlines()[1:]:
                    fields = line.split()
                    if len(fields) >= 13 and fields[9] == inode:
                        return int(fields[12])
        return None

    def sample_drops(self, now: float) -> None:
        """Warn when the kernel dropped datagrams at our socket since the last warning (see
        :data:`DROP_WARNING_INTERVAL`): the proxy sent faster than the gateway read, and
        those requests are lost until the sender retransmits them (UDP, RFC 3261 §17.1.2)."""
        drops = self.udp_drops()
        if drops is None or drops <= self._drops_reported \
                or now - self._drops_reported_at < DROP_WARNING_INTERVAL:
            return
        log_event(log, logging.WARNING, "sip.udp_dropped", transport=self.kind,
                  local=f"{self.local[0]}:{self.local[1]}",
                  dropped=drops - self._drops_reported, total=drops,
                  receive_buffer=self.udp_buffer_granted,
                  reason="datagrams arrived faster than the gateway read them and the "
                         "kernel dropped them at the SIP socket; senders must retransmit",
                  hint="a burst larger than sip.udp_receive_buffer, or a gateway short of "
                       "CPU (docs/sip.md, Flow control)")
        self._drops_reported, self._drops_reported_at = drops, now

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"input_paused": self.input_paused, "input_pauses": self.pauses,
                                "connections": len(self.streams),
                                "unexpected_errors": self.unexpected_errors}
        if self.kind == "udp":
            info.update(udp_receive_buffer=self.udp_buffer_granted,
                        udp_drops=self.udp_drops())
        return info

    def peer_of(self, flow: Flow) -> tuple[str, int]:
        """The address at the other end of ``flow`` (for logs)."""
        if flow[0] == "udp":
            peer: tuple[str, int] = flow[1]
            return peer
        stream = self.streams.get(flow)
        return stream.peer if stream is not None else ("", 0)

    def send(self, flow: Flow, data: bytes) -> None:
        if flow[0] == "udp":
            if self._udp is not None:
                self._udp.sendto(data, flow[1])
            return
        if flow == PROXY_FLOW:
            self._send_to_proxy(data)
            return
        stream = self.streams.get(flow)
        if stream is None or stream.transport is None:
            log_event(log, logging.INFO, "sip.flow_gone", flow=str(flow[1]),
                      reason="connection closed before the response was sent")
            return
        stream.transport.write(data)

    def _send_to_proxy(self, data: bytes) -> None:
        stream = self._proxy_stream
        if stream is not None and stream.transport is not None:
            stream.transport.write(data)
            return
        if stream is None:
            stream = self._proxy_stream = _Stream(self, 0)
        stream.pending.append(data)
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect(stream))

    async def _connect(self, stream: _Stream) -> None:
        loop = asyncio.get_running_loop()
        try:
            # From our SIP address, not the host's primary one: the proxy may recognise
            # the gateway by source address (docs/sip.md, Security), as we recognise it.
            source = None if self.local[0] in ("", "0.0.0.0", "::") else (self.local[0], 0)
            # Bounded: a proxy that drops SYNs would otherwise hold the requests waiting
            # on this connection (a large MESSAGE over TCP, its XMPP sender) for the
            # kernel's minutes of SYN retries, past their own Timer F.
            await asyncio.wait_for(loop.create_connection(
                lambda: stream, self.proxy[0], self.proxy[1], ssl=self.client_ssl,
                server_hostname=self.proxy[0] if self.client_ssl else None,
                local_addr=source), CONNECT_TIMEOUT)
        except (OSError, ssl.SSLError) as exc:
            if isinstance(exc, TimeoutError):
                self.last_error = f"no connection within {CONNECT_TIMEOUT:g} s"
            else:
                self.last_error = (os.strerror(exc.errno) if exc.errno else str(exc)) or \
                    type(exc).__name__
            log_event(log, logging.WARNING, "sip.proxy_unreachable",
                      proxy=f"{self.proxy[0]}:{self.proxy[1]}", transport=self.kind,
                      reason=self.last_error)
            stream.pending.clear()
            self._proxy_stream = None
            self.on_flow_lost(PROXY_FLOW)
        finally:
            self._connecting = None

    def forget_proxy_stream(self) -> None:
        """Called when the proxy connection closed: the next send reconnects."""
        if self._proxy_stream is not None and self._proxy_stream.transport is None:
            self._proxy_stream = None

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        for stream in list(self.streams.values()):
            if stream.transport is not None:
                stream.transport.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._udp is not None:
            self._udp.close()
