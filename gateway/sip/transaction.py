"""Non-INVITE SIP transactions (RFC 3261 §17.1.2, §17.2.2), sans-I/O.

The gateway only originates and answers non-INVITE requests (MESSAGE, SUBSCRIBE, NOTIFY,
OPTIONS), so this layer implements exactly those two state machines:

* client (§17.1.2.2): on an unreliable transport the request is retransmitted at T1,
  doubling up to T2 (after a provisional response: every T2); Timer F (64·T1) ends the
  transaction with a timeout, which the caller maps to 408 (§8.1.3.1);
* server (§17.2.2): a retransmitted request is absorbed and answered with the last
  response sent; the final response is kept for Timer J (64·T1 on UDP, 0 on TCP).

A request is matched to its server transaction by the top Via's branch, sent-by and the
CSeq method (§17.2.3); a response to its client transaction by branch and CSeq method
(§17.1.3), and only when it arrived over the flow the request was sent on: a response
from anywhere else could be forged by whoever guesses a branch. ACK to a final response
we gave an INVITE is absorbed here (we never accept INVITEs; see :mod:`gateway.sip.backend`).

Timers cost O(expired), not O(transactions): every Timer F and Timer J runs for the
same duration from a monotonic start, so their deadlines arrive in insertion order and
sit in FIFO queues; retransmission times differ per transaction and sit in a heap.
Entries of transactions that ended early are skipped when they come up (lazy deletion).
At thousands of requests per second a sweep over every transaction each tick cost more
than the requests themselves.

A server transaction that answered finally keeps only what absorbing a retransmission
needs, its flow and response bytes, for the 32 s of Timer J, as a plain tuple
(:data:`Answered`): that bounds its memory to about the size of the response, and the
garbage collector stops tracking it. At 10,000 requests a second Timer J holds 320,000 of
them; as objects, every full collection walked them all (about 150 ms each).

The layer never touches sockets or clocks: callers pass ``now`` and read
:attr:`TransactionLayer.outbox` (``(flow, bytes)`` pairs to send) after each call.
``flow`` is opaque here: the asyncio transport's handle for "where to send".
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from gateway.sip.message import SipParseError, SipRequest, SipResponse

T1 = 0.5
T2 = 4.0
T4 = 5.0
TIMER_F = 64 * T1
TIMER_J = 64 * T1


@dataclass(slots=True)
class ClientTransaction:
    key: tuple[str, str]
    request: SipRequest | None  # released once the final response is handled
    flow: Any
    reliable: bool
    context: Any
    started: float
    deadline: float
    wire: bytes = b""
    interval: float = T1
    next_send: float | None = None
    provisional: bool = False


@dataclass(slots=True)
class ServerTransaction:
    """A server transaction until its final response (then :data:`Answered`)."""

    key: tuple[str, str, str]
    request: SipRequest | None
    flow: Any
    reliable: bool
    last_response: bytes = b""  # a provisional response sent, if any


# A server transaction that sent its final response, kept for Timer J: (flow, response).
Answered = tuple[Any, bytes]

@dataclass(frozen=True, slots=True)
class RequestReceived:
    request: SipRequest
    transaction: tuple[str, str, str]
    flow: Any


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    response: SipResponse
    request: SipRequest
    context: Any
    elapsed: float


@dataclass(frozen=True, slots=True)
class TransactionTimedOut:
    request: SipRequest
    context: Any


@dataclass(frozen=True, slots=True)
class StrayResponse:
    """A response that matches no client transaction (late retransmission, or a guess);
    ``misrouted`` when it matched one but arrived on ``flow``, not where the request went
    (a forgery, or at best a misrouted copy: ignored)."""

    response: SipResponse
    flow: Any = None
    misrouted: bool = False


Event = RequestReceived | ResponseReceived | TransactionTimedOut | StrayResponse


@dataclass
class TransactionLayer:
    """Both transaction tables and their timers; see the module docstring."""

    reliable: bool
    outbox: list[tuple[Any, bytes]] = field(default_factory=list)
    clients: dict[tuple[str, str], ClientTransaction] = field(default_factory=dict)
    servers: dict[tuple[str, str, str], ServerTransaction | Answered] = field(
        default_factory=dict)
    # (expiry, transaction) in expiry order: Timer J of servers that answered finally
    _server_deadlines: deque[tuple[float, tuple[str, str, str], Answered]] = field(
        default_factory=deque)
    # UDP retransmissions: every first one is due T1 after the start, so those wait in
    # start order in a FIFO; later ones (intervals differ) in a heap of
    # (next_send, sequence, transaction)
    _first_resends: deque[ClientTransaction] = field(default_factory=deque)
    _resends: list[tuple[float, int, ClientTransaction]] = field(default_factory=list)
    _sequence: int = 0

    # ------------------------------------------------------------------ client side

    def send_request(self, request: SipRequest, flow: Any, now: float,
                     context: Any = None, *, reliable: bool | None = None) -> None:
        """Start a client transaction for ``request`` (its top Via carries the branch);
        ``reliable`` overrides the layer's transport for this one request (a request too
        large for UDP goes over a stream, RFC 3261 §18.1.1, and is never retransmitted)."""
        key = (request.branch, request.method)
        if key in self.clients:
            raise ValueError(f"a client transaction with branch {key[0]} exists")
        wire = request.serialize()
        reliable = self.reliable if reliable is None else reliable
        txn = ClientTransaction(key, request, flow, reliable, context, now,
                                now + TIMER_F, wire)
        if not reliable:
            txn.next_send = now + T1
            self._first_resends.append(txn)
        self.clients[key] = txn  # insertion order = Timer F order (see handle_timers)
        self.outbox.append((flow, wire))

    def _client_response(self, response: SipResponse, flow: Any, now: float) -> list[Event]:
        try:
            key = (response.branch, response.cseq[1])
        except SipParseError:
            return [StrayResponse(response)]
        txn = self.clients.get(key)
        if txn is None:
            return [StrayResponse(response)]
        if txn.flow != flow:
            return [StrayResponse(response, flow, misrouted=True)]
        if response.status < 200:
            txn.provisional = True
            if txn.next_send is not None:
                txn.interval = T2
            return []
        del self.clients[key]  # Timer K only absorbs retransmitted responses; we ignore those
        assert txn.request is not None  # released only below, once answered
        event = ResponseReceived(response, txn.request, txn.context, now - txn.started)
        # The entry may still wait in the first-retransmission FIFO for up to T1: keep
        # only its shell there, so that the request, its bytes and the caller's context
        # are freed right after the answer is handled, while they are still in the CPU
        # cache (freed cold, half a second later, they cost several µs per message).
        txn.request, txn.context, txn.wire, txn.next_send = None, None, b"", None
        return [event]

    # ------------------------------------------------------------------ server side

    def _server_request(self, request: SipRequest, flow: Any) -> list[Event]:
        branch, sent_by = request.via_key
        method = "INVITE" if request.method == "ACK" else request.method
        key = (branch, sent_by, method)
        txn = self.servers.get(key)
        if request.method == "ACK":
            return []  # ACK for a non-2xx final answer to an INVITE (§17.2.1): absorbed
        if txn is not None:
            last = txn[1] if type(txn) is tuple else txn.last_response  # type: ignore[union-attr]
            if last:
                self.outbox.append((flow, last))  # retransmission (§17.2.2)
            return []
        self.servers[key] = ServerTransaction(key, request, flow, self.reliable)
        return [RequestReceived(request, key, flow)]

    def respond(self, transaction: tuple[str, str, str], response: SipResponse,
                now: float) -> bool:
        """Send ``response`` in a server transaction; False if the transaction is gone."""
        return self.respond_wire(transaction, response.status, response.serialize(), now)

    def respond_wire(self, transaction: tuple[str, str, str], status: int, wire: bytes,
                     now: float) -> bool:
        """:meth:`respond` with the response already serialised (``status`` its code)."""
        txn = self.servers.get(transaction)
        if txn is None or type(txn) is tuple:
            return False
        assert isinstance(txn, ServerTransaction)
        txn.last_response = wire
        self.outbox.append((txn.flow, wire))
        if status >= 200:
            if self.reliable:
                del self.servers[transaction]
            else:
                answered = (txn.flow, wire)
                self.servers[transaction] = answered
                self._server_deadlines.append((now + TIMER_J, transaction, answered))
        return True

    def answer_unread(self, transaction: tuple[str, str, str], flow: Any, wire: bytes,
                      now: float) -> bool:
        """Answer finally a request known only by its transaction key (read from its head,
        not parsed): kept for Timer J like any answered request, so that its
        retransmissions get the same answer and are not taken up later (the sender, told
        503, sends the request again as a new transaction: taken up as well, it would be
        delivered twice). False when a transaction with that key exists."""
        if transaction in self.servers:
            return False
        self.outbox.append((flow, wire))
        if not self.reliable:
            answered = (flow, wire)
            self.servers[transaction] = answered
            self._server_deadlines.append((now + TIMER_J, transaction, answered))
        return True

    def answered(self, transaction: tuple[str, str, str]) -> bool:
        """Whether the server transaction sent its final response (and waits for Timer J)."""
        return type(self.servers.get(transaction)) is tuple

    # ------------------------------------------------------------------ input and timers

    def receive(self, message: SipRequest | SipResponse, flow: Any, now: float) -> list[Event]:
        if isinstance(message, SipResponse):
            return self._client_response(message, flow, now)
        return self._server_request(message, flow)

    def next_deadline(self) -> float | None:
        times = [next(iter(self.clients.values())).deadline] if self.clients else []
        if self._first_resends:
            times.append(self._first_resends[0].next_send or 0.0)
        if self._resends:
            times.append(self._resends[0][0])
        if self._server_deadlines:
            times.append(self._server_deadlines[0][0])
        return min(times) if times else None

    def handle_timers(self, now: float) -> list[Event]:
        events: list[Event] = []
        clients, resends = self.clients, self._resends
        # Every client transaction gets Timer F at start, so the dict's insertion order is
        # deadline order: the expired ones are at its front. Answered ones left the dict,
        # so nothing here keeps a finished transaction alive.
        while clients:
            txn = next(iter(clients.values()))
            if txn.deadline > now:
                break
            del clients[txn.key]
            assert txn.request is not None  # a transaction in `clients` is unanswered
            events.append(TransactionTimedOut(txn.request, txn.context))
        first = self._first_resends
        while first and (first[0].next_send or 0.0) <= now:
            txn = first.popleft()
            if clients.get(txn.key) is txn and txn.next_send is not None:
                self._resend(txn, now)
        while resends and resends[0][0] <= now:
            due, _seq, txn = heapq.heappop(resends)
            if clients.get(txn.key) is not txn or txn.next_send != due:
                continue  # answered or timed out since
            self._resend(txn, now)
        servers, expiring = self.servers, self._server_deadlines
        while expiring and expiring[0][0] <= now:
            _expires, key, answered = expiring.popleft()
            if servers.get(key) is answered:
                del servers[key]
        return events

    def _resend(self, txn: ClientTransaction, now: float) -> None:
        self.outbox.append((txn.flow, txn.wire))
        txn.interval = T2 if txn.provisional else min(txn.interval * 2, T2)
        txn.next_send = now + txn.interval
        self._sequence += 1
        heapq.heappush(self._resends, (txn.next_send, self._sequence, txn))

    def fail_flow(self, flow: Any) -> list[Event]:
        """A stream connection died: its client transactions fail now (§17.1.4: a
        transport error is reported like a timeout), its server transactions are gone."""
        events: list[Event] = []
        for key, txn in list(self.clients.items()):
            if txn.flow == flow:
                del self.clients[key]
                assert txn.request is not None  # a transaction in `clients` is unanswered
                events.append(TransactionTimedOut(txn.request, txn.context))
        for server_key, server in list(self.servers.items()):
            if (server[0] if type(server) is tuple else server.flow) == flow:  # type: ignore[union-attr]
                del self.servers[server_key]
        return events
