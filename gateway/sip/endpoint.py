"""The gateway's SIP endpoint: transport + transaction layer + timers + flow control.

Everything the SIP handlers (:mod:`gateway.sip.messaging`, :mod:`gateway.sip.watching`,
:mod:`gateway.sip.notifying`) share: sending a request in a client transaction, answering
one in a server transaction, building requests, and the one timer that drives
retransmissions and timeouts (RFC 3261 §17).

Flow control toward the proxy (docs/sip.md, "Flow control"): at most ``max_in_flight``
client transactions are outstanding; further requests wait in a FIFO backlog and leave it
as answers come back. The XMPP side waits (:meth:`SipEndpoint.wait_for_room`) while
the backlog is not empty, which stops the router, which stops reading the S2S streams: a
burst from a partner is slowed down by TCP instead of being refused. Requests that SIP
itself causes (a NOTIFY answering a SUBSCRIBE) join the same backlog, and while it is
longer than the window :attr:`SipEndpoint.overloaded` tells the backend to answer new
SIP work with 503 + Retry-After (RFC 3261 §21.5.4): the proxy sees a bounded rate, never
a flood. Completed transactions leave the window at once (we keep no Timer K state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from gateway.logs import log_event
from gateway.sip.message import (
    BRANCH_MAGIC,
    NameAddr,
    RequestHead,
    SipParseError,
    SipRequest,
    SipResponse,
    head_answer,
    new_branch,
    new_call_id,
    new_tag,
    parse_message,
    read_head,
    response_wire,
)
from gateway.sip.transaction import (
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    TransactionLayer,
    TransactionTimedOut,
)
from gateway.sip.transport import PROXY_FLOW, Flow, SipTransport

log = logging.getLogger("gateway.sip")

TICK = 0.1
DEFAULT_MAX_IN_FLIGHT = 256
# Requests SIP itself causes (a NOTIFY per SUBSCRIBE) may wait behind the window up to this
# many windows' worth (8,192 requests, about 8 MiB, at the default window) before new SIP
# work is answered 503: a storm of 5,000 watchers subscribing at once must fit, because
# through a proxy the phones got those 503s as failures they did not retry (RFC 3261
# §16.7: a proxy does not pass a 503 upstream as such).
OVERLOAD_FACTOR = 32
OnResponse = Callable[[SipResponse | None], None]
RequestHandler = Callable[[RequestReceived], None]


class SipEndpoint:
    """One SIP endpoint next to one proxy (see the module docstring)."""

    def __init__(self, *, transport: str, proxy: tuple[str, int], local: tuple[str, int],
                 server_ssl: ssl.SSLContext | None = None,
                 client_ssl: ssl.SSLContext | None = None,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 udp_receive_buffer: int = 0) -> None:
        if max_in_flight < 1:
            raise ValueError("sip.max_in_flight must be at least 1")
        self.transport = SipTransport(transport, local, proxy, self._on_bytes,
                                      self._on_flow_lost, server_ssl=server_ssl,
                                      client_ssl=client_ssl,
                                      udp_receive_buffer=udp_receive_buffer)
        self.layer = TransactionLayer(reliable=self.transport.reliable)
        self.max_in_flight = max_in_flight
        self.backlog: deque[tuple[SipRequest, OnResponse]] = deque()
        self._streamed: set[str] = set()  # branches of requests marked by over_stream
        self.on_request: RequestHandler = self._no_handler
        self._room = asyncio.Event()
        self._room.set()
        self._ticker: asyncio.Task[None] | None = None
        self._via_text: str | None = None
        self._started = False
        self.on_tick: Callable[[float], None] | None = None  # once a second
        self.on_misrouted: Callable[[], None] | None = None
        # Overload (RFC 3261 §21.5.4): while ``shedding`` (set by the backend when the
        # XMPP side is congested), while the UDP socket is backlogged (the gateway reads
        # slower than datagrams arrive: transport.py) or while our own backlog toward the
        # proxy is over its bound, each UDP request is first read only as far as
        # answering it needs (read_head) and asked of ``shed``: a Retry-After in seconds
        # means "answer 503 now", None "handle it in full". Answering at a few µs
        # instead of a full parse and the request's handling keeps the socket read while
        # the burst lasts, instead of leaving it to the kernel to drop what does not fit
        # its buffer. The answer is kept for Timer J like any other
        # (TransactionLayer.answer_unread).
        self.shedding = False
        self.shed: Callable[[RequestHead], int | None] | None = None
        self.shed_answers = 0
        self.sent = 0
        self.peak_in_flight = 0
        self.received = 0
        self.malformed = 0
        self.misrouted = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.transport.start()
        self._started = True
        self._via_text = None
        self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="sip-timers")

    async def drain(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for outstanding and queued requests."""
        deadline = time.monotonic() + grace
        while (self.layer.clients or self.backlog) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return not (self.layer.clients or self.backlog)

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        await self.transport.close()

    async def _tick(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            self._dispatch(self.layer.handle_timers(now))
            self._pump_backlog()
            self._flush()
            ticks += 1
            if ticks % 10 == 0:
                self.transport.sample_drops(now)
                if self.on_tick is not None:
                    self.on_tick(now)

    # ------------------------------------------------------------------ flow control

    @property
    def in_flight(self) -> int:
        return len(self.layer.clients)

    @property
    def overloaded(self) -> bool:
        """More requests wait for the proxy than :data:`OVERLOAD_FACTOR` windows: new SIP
        work is asked to come back later (503 + Retry-After) until the backlog drains."""
        return len(self.backlog) >= OVERLOAD_FACTOR * self.max_in_flight

    async def wait_for_room(self) -> None:
        """Return when a request sent now would not have to wait in the backlog."""
        while self.backlog or len(self.layer.clients) >= self.max_in_flight:
            self._room.clear()
            await self._room.wait()

    def _pump_backlog(self) -> None:
        backlog, clients, window = self.backlog, self.layer.clients, self.max_in_flight
        now = time.monotonic()
        while backlog and len(clients) < window:
            request, on_response = backlog.popleft()
            self._start(request, on_response, now)
        if len(clients) > self.peak_in_flight:
            self.peak_in_flight = len(clients)
        if not backlog and len(clients) <= window - max(1, window // 4):
            self._room.set()  # hysteresis: wake the XMPP side for a batch, not one by one

    # ------------------------------------------------------------------ sending

    def send(self, request: SipRequest, on_response: OnResponse) -> None:
        """Send ``request`` to the proxy in a client transaction (or queue it behind the
        window); ``on_response`` gets the final response, or None on timeout."""
        self.sent += 1
        if self.backlog or len(self.layer.clients) >= self.max_in_flight:
            self.backlog.append((request, on_response))
            return
        self._start(request, on_response, time.monotonic())
        if len(self.layer.clients) > self.peak_in_flight:
            self.peak_in_flight = len(self.layer.clients)
        self._flush()

    def _start(self, request: SipRequest, on_response: OnResponse, now: float) -> None:
        """Over UDP, a request marked by :meth:`over_stream` goes on a TCP connection to
        the proxy instead (RFC 3261 §18.1.1), as a reliable transaction."""
        streamed = self._streamed
        if streamed and request.branch in streamed:
            streamed.discard(request.branch)
            self.layer.send_request(request, PROXY_FLOW, now, on_response, reliable=True)
        else:
            self.layer.send_request(request, self.transport.proxy_flow, now, on_response)

    def over_stream(self, request: SipRequest) -> bool:
        """Mark ``request`` (made by :meth:`new_request`) to be sent over TCP although the
        configured transport is UDP: its top Via names TCP, which is also what routes
        its response back on that connection (RFC 3261 §18.2.2). False when the
        transport is already a stream (nothing to do)."""
        if self.transport.kind != "udp":
            return False
        via = request.get("via") or ""
        request.set("via", "SIP/2.0/TCP " + via.removeprefix("SIP/2.0/UDP "))
        self._streamed.add(request.branch)
        return True

    def reply(self, event: RequestReceived, status: int, reason: str | None = None, *,
              to_tag: str = "", headers: Iterable[tuple[str, str]] = ()) -> None:
        wire = response_wire(event.request, status, reason, to_tag=to_tag or new_tag(),
                             extra=headers)
        self.layer.respond_wire(event.transaction, status, wire, time.monotonic())
        self._flush()

    def new_request(self, method: str, uri: str, sender: NameAddr | str,
                    recipient: NameAddr | str, contact: str | None = None, *,
                    token: str = "", call_id: str = "") -> SipRequest:
        """An out-of-dialog request (RFC 3261 §8.1.1) with a fresh Call-ID and branch;
        ``sender``/``recipient`` as From/To values (a :class:`NameAddr` or its text);
        ``token`` (from :func:`unique_token`) makes both when given; ``call_id`` (unique
        too) is the Call-ID's local part instead."""
        branch = BRANCH_MAGIC + token if token else new_branch()
        headers = [
            ("Via", f"{self._via_prefix}{branch};rport"),
            ("Max-Forwards", "70"),
            ("From", str(sender)),
            ("To", str(recipient)),
            ("Call-ID", f"{call_id or token}@{self.transport.local[0]}" if call_id or token
             else new_call_id(self.transport.local[0])),
            ("CSeq", f"1 {method}"),
        ]
        if contact:
            headers.append(("Contact", f"<{contact}>"))
        return SipRequest(headers, b"", method, uri, _branch=branch)

    @property
    def _via_prefix(self) -> str:
        """``SIP/2.0/UDP host:port;branch=`` (known once the transport is bound)."""
        prefix = self._via_text
        if prefix is None or not self._started:
            prefix = self._via_text = (f"SIP/2.0/{self.transport.via_transport} "
                                       f"{self.hostport};branch=")
        return prefix

    @property
    def hostport(self) -> str:
        host, port = self.transport.local[0], self.transport.local[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def contact_for(self, user_uri: str) -> str:
        """Our Contact URI for a dialog held on behalf of ``user_uri``."""
        user = user_uri.split(":", 1)[1].rpartition("@")[0]
        kind = self.transport.kind
        suffix = "" if kind == "udp" else f";transport={kind}"
        scheme = "sips" if kind == "tls" else "sip"
        return f"{scheme}:{user}@{self.hostport}{suffix}"

    def _flush(self) -> None:
        layer = self.layer
        if layer.outbox:
            outbox, layer.outbox = layer.outbox, []
            send = self.transport.send
            for flow, data in outbox:
                send(flow, data)

    # ------------------------------------------------------------------ receiving

    def _on_bytes(self, data: bytes, flow: Flow, peer: tuple[str, int]) -> None:
        if (self.shedding or self.transport.backlogged
                or len(self.backlog) >= OVERLOAD_FACTOR * self.max_in_flight) \
                and flow[0] == "udp" and self._shed(data, flow):
            return
        try:
            message = parse_message(data, stream=flow[0] != "udp")
        except SipParseError as exc:
            self._refuse_malformed(exc, flow, peer)
            return
        self.received += 1
        self._dispatch(self.layer.receive(message, flow, time.monotonic()))
        self._flush()

    def _shed(self, data: bytes, flow: Flow) -> bool:
        """Answer ``data`` 503 + Retry-After from its head alone if :attr:`shed` says so
        (see there); False when it must be handled in full (not a new MESSAGE/SUBSCRIBE,
        a retransmission of a request we hold a transaction for, not congested)."""
        shed = self.shed
        head = read_head(data) if shed is not None else None
        if head is None or head.transaction in self.layer.servers:
            return False
        retry_after = shed(head)  # type: ignore[misc]
        if retry_after is None:
            return False
        self.received += 1
        self.shed_answers += 1
        self.layer.answer_unread(head.transaction, flow, head_answer(
            head, 503, "Service Unavailable", to_tag=new_tag(),
            extra=[("Retry-After", str(retry_after))]), time.monotonic())
        self._flush()
        return True

    def _refuse_malformed(self, exc: SipParseError, flow: Flow, peer: tuple[str, int]) -> None:
        """A message from a trusted source that does not parse: a request that can be
        read far enough gets the error's status with a reason phrase naming the problem
        (RFC 3261 §21.4.1), statelessly (there is no transaction for a request we could
        not read; a retransmission gets the same answer); anything else is dropped."""
        self.malformed += 1
        action = "dropped"
        if exc.request is not None and exc.status:
            self.transport.send(flow, response_wire(exc.request, exc.status, exc.phrase,
                                                    to_tag=new_tag()))
            action = f"{exc.status} {exc.phrase}"
        self.transport.report_malformed(peer, exc.reason, action, "syntax")

    def _on_flow_lost(self, flow: Flow) -> None:
        if flow == self.transport.proxy_flow:
            self.transport.forget_proxy_stream()
        self._dispatch(self.layer.fail_flow(flow))

    def _dispatch(self, events: list[Any]) -> None:
        answered = False
        for event in events:
            if isinstance(event, ResponseReceived | TransactionTimedOut):
                answered = True
                callback = event.context
                response = event.response if isinstance(event, ResponseReceived) else None
                if callback is not None:
                    try:
                        callback(response)
                    except Exception as exc:  # a bug: counted and logged as above
                        self.transport.unexpected(exc, self.transport.proxy,
                                                  f"answer to {event.request.method} "
                                                  "not handled")
            elif isinstance(event, RequestReceived):
                try:
                    self.on_request(event)
                except SipParseError as exc:
                    # a field the handler needed does not parse (a From that is not an
                    # address): the request is at fault, not us
                    self.malformed += 1
                    self.reply(event, exc.status or 400, exc.phrase)
                    self.transport.report_malformed(
                        self.transport.peer_of(event.flow), exc.reason,
                        f"{exc.status or 400} {exc.phrase}", "syntax")
                except Exception as exc:
                    # A bug, by definition. The request still gets a final answer, so the
                    # peer stops retransmitting and our server transaction ends; the bug
                    # is counted and logged within the transport's budget, since a phone
                    # that found one could otherwise write a traceback per request.
                    self.transport.unexpected(exc, self.transport.peer_of(event.flow),
                                              f"{event.request.method} answered 500")
                    self.reply(event, 500)  # no effect if an answer was already sent
            elif isinstance(event, StrayResponse):
                if event.misrouted:
                    self.misrouted += 1
                    log_event(log, logging.WARNING, "sip.misrouted_response",
                              flow=str(event.flow[1]) if event.flow else None,
                              status=event.response.status, call_id=event.response.call_id,
                              action="ignored", reason="not from where the request was sent")
                    if self.on_misrouted is not None:
                        self.on_misrouted()
                else:
                    log_event(log, logging.DEBUG, "sip.stray_response",
                              status=event.response.status, call_id=event.response.call_id)
        if answered and (self.backlog or not self._room.is_set()):
            self._pump_backlog()

    def _no_handler(self, event: RequestReceived) -> None:
        self.reply(event, 503)

    def describe(self) -> dict[str, Any]:
        return {"transport": self.transport.kind, "in_flight": self.in_flight,
                "backlog": len(self.backlog), "max_in_flight": self.max_in_flight,
                "peak_in_flight": self.peak_in_flight,
                "sent": self.sent, "received": self.received, "malformed": self.malformed,
                "busy_answers_from_head": self.shed_answers,
                "misrouted_responses": self.misrouted,
                **self.transport.describe()}
