"""Sans-I/O S2S stream: the machinery shared by inbound and outbound streams.

An ``S2SStream`` is one TCP connection's worth of XMPP server-to-server protocol
(RFC 6120). It knows nothing about sockets or asyncio (h11/aioquic style):

- the driver feeds received bytes with :meth:`receive_data`,
- sends whatever :meth:`data_to_send` returns,
- pulls :class:`~gateway.xmpp.events.Event` values with :meth:`next_event`,
- asks :meth:`get_timer` for the next deadline and calls :meth:`handle_timer` then.

Time is a value passed in (``now``), never read from a clock, so timeouts are tested
without sleeping. TLS runs inside the core over memory BIOs (see ``tls.py``).
The roles live in ``inbound.py`` (receiving and authoritative server) and
``outbound.py`` (initiating server); policy comes from plain data in
:class:`StreamContext` (the pure negotiation rule of ``gateway.policy``).
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from xml.etree.ElementTree import Element

from gateway.auth.dialback_key import DialbackKeyGenerator
from gateway.config.model import Limits, PartnerPolicy
from gateway.policy.negotiation import AuthMethod
from gateway.xmpp import elements as el
from gateway.xmpp import stream_management as sm
from gateway.xmpp.errors import StreamError, parse_stream_error
from gateway.xmpp.events import (
    Direction,
    Event,
    PairAuthenticated,
    StanzaReceived,
    StanzasAcked,
    StreamClosed,
    TlsEstablished,
    is_stanza,
)
from gateway.xmpp.jid import JidError, domain_of
from gateway.xmpp.namespaces import NS_SERVER
from gateway.xmpp.parser import (
    ParserLimits,
    StanzaElement,
    StreamEnd,
    StreamHeader,
    StreamParser,
    XmlStreamError,
    parse_written,
)
from gateway.xmpp.tls import PeerCertificate, TlsEngine, TlsError, TlsProvider
from gateway.xmpp.xml import STREAM_CLOSE, serialize, stream_header


@dataclass(frozen=True, slots=True)
class CertificateVerdict:
    ok: bool
    reason: str  # "valid for b.example (DNS-ID b.example)" or the precise refusal


CertificateChecker = Callable[[PeerCertificate, str], CertificateVerdict]


def _new_stream_id() -> str:
    # Unguessable: the stream id is an input of the dialback key (XEP-0185 §4).
    return secrets.token_urlsafe(18)


@dataclass(frozen=True, slots=True)
class StreamContext:
    """Everything a stream needs to decide, as plain data and pure functions."""

    local_domains: frozenset[str]
    partner_for: Callable[[str], PartnerPolicy | None]
    keys: DialbackKeyGenerator
    check_certificate: CertificateChecker
    tls: TlsProvider | None = None
    limits: Limits = field(default_factory=Limits)
    new_stream_id: Callable[[], str] = _new_stream_id
    # XEP-0198 offered to authenticated peers and enabled where a peer offers it.
    stream_management: bool = True
    # XEP-0288 offered, and requested where offered, on TLS streams.
    bidi: bool = True

    @property
    def tls_available(self) -> bool:
        return self.tls is not None and self.tls.available


class Phase(Enum):
    CONNECTING = "connecting"  # outbound, before our header went out (direct TLS)
    WAIT_HEADER = "wait-header"
    NEGOTIATING = "negotiating"  # features exchanged, STARTTLS/SASL/dialback going on
    TLS_HANDSHAKE = "tls-handshake"
    OPEN = "open"  # at least one domain pair authenticated
    CLOSING = "closing"  # we sent </stream:stream>, waiting for the peer's
    CLOSED = "closed"


# Seconds to wait for the peer's closing tag after ours (RFC 6120 §4.4).
CLOSE_GRACE = 5.0
# Seconds without traffic after which an authenticated stream frees its XML parser and
# TLS memory BIOs (re-created on the next bytes): most S2S sessions are idle most of the
# time, and these buffers are a large part of what each holds. Short, because sessions
# open in bursts (a restart, a peer reconnecting its links): while the first ones still
# hold their handshake-sized buffers the next ones are allocated around them, and the
# freed holes stay in the heap. The price is small: a stream with gaps longer than this
# between stanzas re-creates its parser, and a busy stream's idleness check fires at most
# once per period. The figures for both sides are in docs/performance.md ("The idle
# release after 0.5 s").
RELEASE_IDLE_AFTER = 0.5
# A debugging aid (gateway/net/s2s_record.py, off unless asked for): called with every
# byte string a stream writes, as written, before TLS encrypts it.
_output_tap: Callable[[S2SStream, bytes], None] | None = None


def set_output_tap(tap: Callable[[S2SStream, bytes], None] | None) -> None:
    """Install (or remove, with None) the output tap; see :mod:`gateway.net.s2s_record`."""
    global _output_tap
    _output_tap = tap


MAX_STREAM_RESTARTS = 4  # STARTTLS + SASL need two; more is a peer looping on us
# Seconds a stream under stream management waits, before closing, for the stanzas it
# received to be settled (so that its last <a/> covers them and the peer keeps none it
# would re-send or bounce although they were delivered).
SETTLE_GRACE = 10.0


class NotAuthenticated(Exception):
    """A stanza was offered for a domain pair this stream is not (yet) authorized for."""


class S2SStream:
    """Common machinery; see :class:`InboundStream` and :class:`OutboundStream`.

    Slotted, and so are the roles: there is one per session, most sessions are idle, and
    an instance dict of some 30 attributes is about 1.3 KiB of each (docs/performance.md).
    """

    __slots__ = ("_close_deadline", "_close_when_settled", "_events", "_header_sent",
                 "_last_received", "_last_sent", "_last_stanza", "_negotiation_deadline",
                 "_now", "_out", "_parser", "_peer_cert", "_received_unacked",
                 "_release_check", "_restarts",
                 "_settle_deadline", "_sm_ack_due", "_tls", "_tls_active", "_tls_plain",
                 "bidi", "close_error", "close_reason", "created_at", "ctx", "local_domain",
                 "memory_releases", "pairs", "partner", "peer_address", "phase",
                 "remote_domain", "settled_after_close", "sm_in", "sm_out",
                 "stanzas_in", "stanzas_left_with_peer", "stanzas_out", "stream_id")

    direction: Direction

    def __init__(
        self,
        context: StreamContext,
        *,
        now: float,
        peer_address: str = "",
    ) -> None:
        self.ctx = context
        self.peer_address = peer_address
        self.created_at = now
        self.phase = Phase.WAIT_HEADER
        self.stream_id: str | None = None
        self.local_domain: str | None = None
        self.remote_domain: str | None = None
        self.partner: PartnerPolicy | None = None
        # Domain pairs (remote, local) authenticated on this stream, with their method.
        self.pairs: dict[tuple[str, str], AuthMethod] = {}
        self.stanzas_in = 0
        self.stanzas_out = 0
        self.close_reason = ""
        self.close_error = ""
        self._parser = StreamParser(ParserLimits.from_limits(context.limits))
        self._tls: TlsEngine | None = None
        self._tls_active = False
        self._peer_cert: PeerCertificate | None = None
        self._out = bytearray()  # plaintext-stream bytes (before TLS) ready to go
        self._tls_plain: list[bytes] = []  # cleartext waiting to be encrypted
        # A list, not a deque: a deque's first block is 0.5 KiB per stream; there are
        # rarely more than a few events pending.
        self._events: list[Event] = []
        self._header_sent = False
        self._restarts = 0
        self._negotiation_deadline: float | None = now + context.limits.negotiation_timeout
        self._last_stanza = now
        self._last_sent = now
        self._close_deadline: float | None = None
        self._now = now  # last time the driver told us
        self._last_received = now
        # When to check for idleness (see RELEASE_IDLE_AFTER); moved at most once per
        # period rather than on every read, so that a busy stream's timer stays put.
        self._release_check: float | None = None
        # How many times this stream freed its parser or TLS buffers: the driver may then
        # hand the freed memory back to the OS (gateway/net/heap.py).
        self.memory_releases = 0
        # XEP-0198: what we received and handled / what we sent and the peer has not
        # acknowledged yet; None while stream management is off in that direction.
        self.sm_in: sm.ReceivedCounter | None = None
        self.sm_out: sm.SentQueue | None = None
        self._sm_ack_due: float | None = None  # when the next unsolicited <a/> is due
        # (seq, stanza) received and not yet covered by one of our <a/>: what the peer
        # sends again if this link ends (see received_unacked). None without SM.
        self._received_unacked: deque[tuple[int, Element]] | None = None
        # A close waiting for the received stanzas to settle (the reason), and until when.
        self._close_when_settled: str | None = None
        self._settle_deadline: float | None = None
        # Stanzas the peer sent after we decided to close (never delivered: the peer keeps
        # them unacknowledged and re-sends or bounces them) and stanzas settled only
        # after the stream ended (delivered, but never acknowledged: the peer may re-send
        # them, a duplicate).
        self.stanzas_left_with_peer = 0
        self.settled_after_close = 0
        self.bidi = False  # XEP-0288 negotiated: stanzas flow both ways on this stream

    # ------------------------------------------------------------------ driver API

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes read from the socket (ciphertext once TLS is on)."""
        self._now = now
        if self.phase is Phase.CLOSED or not data:
            return
        self._last_received = now
        try:
            if self._tls is not None:
                data = self._tls.receive(data)
                if not self._tls_active and self._tls.handshake_done:
                    self._on_tls_established()
                if self._tls.peer_closed and not data:
                    self._finish("", "peer closed TLS (close_notify)", by_peer=True)
                    return
                if not data:
                    return
            self._feed_xml(data, now)
        except StreamError as exc:
            self._fail(exc)
        except TlsError as exc:
            self._abort(str(exc))
        if self._release_check is None and self.pairs and self.phase is Phase.OPEN:
            self._release_check = now + RELEASE_IDLE_AFTER

    def data_to_send(self) -> bytes:
        # XEP-0198: ask for an ack when the driver flushes what it wrote (the end of a
        # burst), one request outstanding at a time, as Prosody asks on each drain.
        out = self.sm_out
        if out is not None and self.phase is Phase.OPEN and out.wants_request():
            self._send(out.request(self._now))
        # Plaintext written before TLS started (e.g. <proceed/>) goes first, then records.
        data = bytes(self._out)
        self._out.clear()
        if self._tls is not None:
            self._flush_tls()
            data += self._tls.data_to_send()
        return data

    def _flush_tls(self) -> None:
        if self._tls is not None and self._tls_plain:
            plain = b"".join(self._tls_plain)
            self._tls_plain.clear()
            try:
                self._tls.send(plain)
            except TlsError as exc:
                self._abort(str(exc))

    def next_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    def events(self) -> Iterator[Event]:
        while self._events:
            yield self._events.pop(0)

    def connection_lost(self, reason: str = "") -> None:
        """The transport is gone (EOF, reset, write error)."""
        if self.phase is Phase.CLOSED:
            return
        if self.phase is Phase.CLOSING:
            self._finish(self.close_error, self.close_reason, by_peer=False)
        else:
            self._finish(
                "", reason or "connection closed by peer without closing the stream", by_peer=True
            )

    def close(self, condition: str = "", text: str = "") -> None:
        """Close the stream, with a stream error when ``condition`` is given.

        A graceful close of a stream under stream management first waits (at most
        SETTLE_GRACE) for the stanzas received so far to settle, taking no new ones, so
        that its last ``<a/>`` covers all it delivered."""
        if condition:
            self._fail(StreamError(condition, text))
        else:
            self._close_when_safe(text or "closed locally")

    # ------------------------------------------------------------------ XEP-0198 driver API

    def send_stanza(self, stanza: Element, token: Hashable | None = None) -> None:
        """Send one stanza; its from/to domains must be an authorized pair here.

        Under stream management ``token`` comes back in :class:`StanzasAcked` once the
        peer acknowledges the stanza, or from :meth:`take_unacked` if the link ends first.
        """
        from_dom = stanza.get("from", "").partition("/")[0].rpartition("@")[2]
        to_dom = stanza.get("to", "").partition("/")[0].rpartition("@")[2]
        if self.phase is not Phase.OPEN or (to_dom, from_dom) not in self.pairs \
                or self._close_when_settled is not None or not self._carries_outgoing():
            raise NotAuthenticated(f"{from_dom} → {to_dom} is not authorized on this stream")
        self.stanzas_out += 1
        self._last_stanza = self._now
        data = serialize(stanza)
        queue = self.sm_out
        if queue is not None:
            queue.push(data, token)  # as written: see SentQueue for why not the element
        self._write(data)

    def can_send(self, local: str, remote: str) -> bool:
        return (self.phase is Phase.OPEN and (remote, local) in self.pairs
                and self._carries_outgoing() and self._close_when_settled is None)

    def _carries_outgoing(self) -> bool:
        """Outbound streams carry our stanzas; inbound ones only with XEP-0288."""
        raise NotImplementedError

    def stanza_settled(self, seq: int, now: float | None = None) -> bool:
        """The stanza of :class:`StanzaReceived` ``seq`` is safe (delivered, answered with
        an error, or dropped with a count): it may now be acknowledged (XEP-0198 §4).

        True when the driver has something to do (bytes to send, a timer to arm): most
        settlements only move a counter, and cost the driver nothing. ``now`` defaults to
        the time of the last received bytes (the acknowledgement timer need not be more
        precise than that)."""
        counter = self.sm_in
        if counter is None or seq < 0:
            return False
        if self.phase is not Phase.OPEN:  # stream management is on only once open
            self.settled_after_close += 1
            return False
        if seq == counter.handled and counter._early is None:
            counter.handled = seq + 1  # the common case: in order
        elif not counter.settle(seq):
            return False
        if now is not None:
            self._now = now
        busy = True
        if counter.handled - counter.last_sent >= sm.ACK_EVERY:
            self._send_ack()
        elif self._sm_ack_due is None:
            self._sm_ack_due = self._now + sm.ACK_DELAY
        else:
            busy = False  # the acknowledgement timer is armed already
        if self._close_when_settled is not None and not counter.unsettled:
            self._close_gracefully(self._close_when_settled)
            busy = True
        return busy

    def take_unacked(self) -> list[tuple[Element, Hashable | None]]:
        """The stanzas sent under stream management that the peer never acknowledged
        (with their tokens), for the driver to re-send over a new link or bounce once this
        one is gone. Empty without stream management. The stanzas are parsed back from
        the bytes that were written (the queue keeps no trees; this path is rare)."""
        if self.sm_out is None:
            return []
        left = self.sm_out.take()
        stanzas = parse_written([data for data, _token in left], NS_SERVER)
        return [(stanza, token) for stanza, (_data, token) in zip(stanzas, left, strict=True)]

    @property
    def unacked(self) -> int:
        queue = self.sm_out
        return 0 if queue is None else queue.sent - queue.acked

    @property
    def stream_management(self) -> bool:
        return self.sm_in is not None or self.sm_out is not None

    def get_timer(self) -> float | None:
        if self.phase is Phase.CLOSED:
            return None
        if self.phase is Phase.CLOSING:
            return self._close_deadline
        candidates = [self._negotiation_deadline, self._release_check, self._sm_ack_due,
                      self._settle_deadline]
        out = self.sm_out
        if out is not None and out.awaiting_since is not None:
            candidates.append(out.awaiting_since + sm.ACK_TIMEOUT)
        if self.pairs:
            limits = self.ctx.limits
            candidates.append(self._last_stanza + limits.idle_timeout)
            candidates.append(self._last_sent + limits.keepalive_interval)
        return min((c for c in candidates if c is not None), default=None)

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self.phase is Phase.CLOSED:
            return
        if self.phase is Phase.CLOSING:
            if self._close_deadline is not None and now >= self._close_deadline:
                self._finish(self.close_error, self.close_reason, by_peer=False)
            return
        if self._release_check is not None and now >= self._release_check:
            self._release_if_idle(now)
        if self._sm_ack_due is not None and now >= self._sm_ack_due:
            self._sm_ack_due = None
            if self.sm_in is not None and self.sm_in.unacked and self.phase is Phase.OPEN:
                self._send_ack()
        out = self.sm_out
        if out is not None and out.awaiting_since is not None \
                and now - out.awaiting_since >= sm.ACK_TIMEOUT:
            self._fail(StreamError("connection-timeout", f"no acknowledgement (XEP-0198 <a/>) "
                                   f"within {sm.ACK_TIMEOUT:g}s of our request"))
            return
        if self._settle_deadline is not None and now >= self._settle_deadline:
            reason = self._close_when_settled or "closed locally"
            self._close_gracefully(f"{reason} ({self.sm_in.unsettled if self.sm_in else 0} "
                                   "received stanzas still unsettled)")
            return
        if self._negotiation_deadline is not None and now >= self._negotiation_deadline:
            self._fail(
                StreamError(
                    "connection-timeout",
                    f"stream negotiation did not complete within "
                    f"{self.ctx.limits.negotiation_timeout:g}s",
                )
            )
            return
        if self.pairs:
            limits = self.ctx.limits
            if now - self._last_stanza >= limits.idle_timeout:
                self._close_when_safe(f"idle for {limits.idle_timeout:g}s")
            elif now - self._last_sent >= limits.keepalive_interval:
                self._write(b" ")  # RFC 6120 §4.6.1 whitespace keepalive

    def _release_if_idle(self, now: float) -> None:
        """Free the parser and the TLS buffers of a stream idle for RELEASE_IDLE_AFTER, or
        check again when it will have been (see RELEASE_IDLE_AFTER)."""
        idle_since = max(self._last_received, self._last_sent)
        if now - idle_since < RELEASE_IDLE_AFTER:
            self._release_check = idle_since + RELEASE_IDLE_AFTER
            return
        self._release_check = None  # armed again by the next received bytes
        freed = self._parser.release()
        if self._tls is not None and self._tls_active:
            freed = self._tls.release_buffers() or freed
        if freed:
            self.memory_releases += 1

    # ------------------------------------------------------------------ status

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    @property
    def tls_version(self) -> str:
        return self._tls.version if self._tls_active and self._tls else ""

    @property
    def tls_cipher(self) -> str:
        return self._tls.cipher if self._tls_active and self._tls else ""

    @property
    def tls_alpn(self) -> str:
        return self._tls.alpn_protocol if self._tls_active and self._tls else ""

    @property
    def method(self) -> AuthMethod | None:
        """The method that authenticated the stream's first domain pair."""
        return next(iter(self.pairs.values()), None)

    @property
    def peer_certificate(self) -> PeerCertificate | None:
        return self._peer_cert

    def describe_sm(self) -> dict[str, int | bool] | None:
        """Stream management counters for ``status`` (None when it is off)."""
        if not self.stream_management:
            return None
        received, sent = self.sm_in, self.sm_out
        return {
            "received": received.received if received is not None else 0,
            "handled": received.handled if received is not None else 0,
            "acknowledged_to_peer": received.last_sent if received is not None else 0,
            "sent": sent.sent if sent is not None else 0,
            "acknowledged_by_peer": sent.acked if sent is not None else 0,
            "unacked": len(sent) if sent is not None else 0,
        }

    # ------------------------------------------------------------------ for the roles

    def _on_header(self, header: StreamHeader, now: float) -> None:
        raise NotImplementedError

    def _on_element(self, element: Element, now: float) -> None:
        raise NotImplementedError

    def _on_tls_ready(self) -> None:
        """TLS handshake done: the role restarts the stream (RFC 6120 §5.4.3.3)."""
        raise NotImplementedError

    def _on_finished(self) -> None:
        """Hook: the stream ended; roles report what is left pending."""

    def _feed_xml(self, data: bytes, now: float) -> None:
        try:
            parsed = self._parser.feed(data)
        except XmlStreamError as exc:
            raise StreamError(exc.condition, exc.text) from None
        for index, item in enumerate(parsed):
            if self.phase in (Phase.CLOSED,):
                return
            if self.phase is Phase.CLOSING and not self._wanted_while_closing(item):
                continue
            if isinstance(item, StanzaElement):
                self._on_element(item.element, now)
                if self._tls is not None and not self._tls_active and index + 1 < len(parsed):
                    # Bytes after <starttls/>/<proceed/> in the same read would be taken
                    # as if protected by TLS: the STARTTLS command-injection attack.
                    raise StreamError("policy-violation", "data after STARTTLS before TLS")
            elif isinstance(item, StreamHeader):
                self._check_header_basics(item)
                self._on_header(item, now)
            elif isinstance(item, StreamEnd):
                self._on_stream_end()

    def _wanted_while_closing(self, item: StreamHeader | StanzaElement | StreamEnd) -> bool:
        """After our </stream:stream> only the peer's end, its stream error and, after a
        graceful close, stanzas already in flight still count (RFC 6120 §4.4). After a
        stream error nothing else does (§4.9.1.1): the roles must not act on elements of
        a stream that failed, e.g. before it even had an id.

        Under stream management a stanza in flight is not delivered: we can no longer
        acknowledge it, so the peer keeps it and re-sends or bounces it; the peer's last
        ``<a/>`` still counts (it releases what we sent)."""
        if isinstance(item, StreamEnd):
            return True
        if not isinstance(item, StanzaElement):
            return False
        tag = item.element.tag
        if tag == el.TAG_STREAM_ERROR:
            return True
        if self.close_error:
            return False
        if tag == sm.TAG_ACK:
            return True
        if is_stanza(item.element):
            if self.sm_in is None:
                return True
            self.stanzas_left_with_peer += 1
        return False

    def _check_header_basics(self, header: StreamHeader) -> None:
        if header.default_ns != "jabber:server":
            raise StreamError(
                "invalid-namespace",
                f"server-to-server streams use 'jabber:server', not {header.default_ns!r}",
            )

    def _on_stream_end(self) -> None:
        if self.phase is Phase.CLOSING:
            self._finish(self.close_error, self.close_reason, by_peer=False)
            return
        self._final_ack()
        self._write(STREAM_CLOSE)
        self._finish("", "peer closed the stream", by_peer=True)

    def _on_peer_stream_error(self, element: Element) -> None:
        condition, text = parse_stream_error(element)
        reason = f"peer sent stream error <{condition}/>" + (f": {text}" if text else "")
        if self.phase is not Phase.CLOSING:
            self._write(STREAM_CLOSE)
        self._finish(condition, reason, by_peer=True)

    def _send_header(
        self,
        *,
        from_: str | None,
        to: str | None,
        stream_id: str | None,
        version: str | None = "1.0",
    ) -> None:
        self._write(stream_header(from_=from_, to=to, stream_id=stream_id, version=version))
        self._header_sent = True

    def _send(self, element: Element) -> None:
        self._write(serialize(element))

    def _write(self, data: bytes) -> None:
        if self.phase in (Phase.CLOSING, Phase.CLOSED):
            # RFC 6120 §4.4: nothing may follow our </stream:stream>. Elements the peer
            # sent before seeing it are still processed (stanzas delivered), but answers
            # to them (e.g. a db:verify) would be junk after the document element.
            return
        if _output_tap is not None:
            _output_tap(self, data)
        self._last_sent = self._now
        if self._release_check is None and self.phase is Phase.OPEN:
            self._release_check = self._now + RELEASE_IDLE_AFTER
        if self._tls is not None:
            if not self._tls_active:
                # Nothing may be written mid-handshake; reaching this is a core bug.
                raise RuntimeError("write attempted during the TLS handshake")
            # Encrypted in data_to_send(): a burst of stanzas becomes a few full TLS
            # records instead of one small record each.
            self._tls_plain.append(data)
        else:
            self._out += data

    def _start_tls(self, *, server_side: bool, server_name: str | None = None,
                   alpn: tuple[bytes, ...] = ()) -> None:
        provider = self.ctx.tls
        assert provider is not None  # callers check ctx.tls_available
        self._restarts += 1
        self._tls = (
            provider.server_engine() if server_side
            else provider.client_engine(server_name or "", self.local_domain, alpn)
        )
        self._tls_active = False
        self.phase = Phase.TLS_HANDSHAKE

    def _on_tls_established(self) -> None:
        assert self._tls is not None
        self._tls_active = True
        self._peer_cert = self._tls.peer_certificate()
        self._events.append(
            TlsEstablished(self._tls.version, self._tls.cipher, self._peer_cert.leaf is not None)
        )
        self._parser.reset()
        self._on_tls_ready()

    def _restart_stream(self) -> None:
        """After SASL success both sides start a fresh stream (RFC 6120 §6.4.6)."""
        self._restarts += 1
        if self._restarts > MAX_STREAM_RESTARTS:
            raise StreamError("policy-violation", "too many stream restarts")
        self._parser.reset()
        self.phase = Phase.WAIT_HEADER

    def _authenticated(self, remote: str, local: str, method: AuthMethod) -> None:
        self.pairs[(remote, local)] = method
        self._negotiation_deadline = None
        if self.phase is Phase.NEGOTIATING:
            self.phase = Phase.OPEN
        self._events.append(PairAuthenticated(remote, local, method))

    def _stanza_activity(self, now: float) -> None:
        self._last_stanza = now

    def _fail(self, error: StreamError) -> None:
        """Send a stream error and close (RFC 6120 §4.9.1)."""
        if self.phase in (Phase.CLOSED, Phase.CLOSING):
            return
        if self._tls is not None and not self._tls_active:
            self._abort(f"<{error.condition}/> during TLS handshake: {error.text}")
            return
        if not self._header_sent:
            # §4.9.1.1: an error before our header still needs a header first.
            self._send_header(from_=self._header_from(), to=None, stream_id=self.stream_id)
        self._final_ack()  # what we handled is the peer's no more, whatever the error
        self._send(error.to_element())
        self.close_error = error.condition
        self._begin_close(
            f"sent stream error <{error.condition}/>" + (f": {error.text}" if error.text else "")
        )

    def _header_from(self) -> str | None:
        return self.local_domain

    def _close_when_safe(self, reason: str) -> None:
        """Close gracefully, under stream management once what was received has settled
        (the peer's stanzas arriving meanwhile are left with it: see _on_stanza)."""
        counter = self.sm_in
        if counter is not None and counter.unsettled and self.phase is Phase.OPEN:
            if self._close_when_settled is None:
                self._close_when_settled = reason
                self._settle_deadline = self._now + SETTLE_GRACE
            return
        self._close_gracefully(reason)

    def _close_gracefully(self, reason: str) -> None:
        if self.phase in (Phase.CLOSED, Phase.CLOSING):
            return
        if not self._header_sent:
            self._send_header(
                from_=self._header_from(), to=self.remote_domain, stream_id=self.stream_id
            )
        self._final_ack()
        self._begin_close(reason)

    def _final_ack(self) -> None:
        """XEP-0198 §4: a last <a/> before our </stream:stream>, so the peer releases what
        we handled instead of re-sending or bouncing it."""
        if self.sm_in is not None and self.sm_in.unacked and self.phase is Phase.OPEN:
            self._send_ack()

    def _send_ack(self) -> None:
        assert self.sm_in is not None
        self._sm_ack_due = None
        self._send(self.sm_in.ack())
        kept, handled = self._received_unacked, self.sm_in.handled
        if kept:
            while kept and kept[0][0] < handled:
                kept.popleft()
            if not kept:
                self._received_unacked = None  # idle streams keep no deque (0.6 KiB)

    def received_unacked(self) -> list[Element]:
        """The stanzas received here that our acknowledgements do not cover: when the link
        has ended, exactly what the peer will send again (gateway/net/resent.py)."""
        return [stanza for _seq, stanza in self._received_unacked or ()]

    def _begin_close(self, reason: str) -> None:
        self._sm_ack_due = self._settle_deadline = None
        self._write(STREAM_CLOSE)
        if self._tls is not None and self._tls_active:
            self._flush_tls()
            self._tls.close()
        self.close_reason = reason
        self.phase = Phase.CLOSING
        self._close_deadline = self._now + CLOSE_GRACE
        self._report_close(self.close_error, reason, by_peer=False)

    def _abort(self, reason: str) -> None:
        """Unrecoverable transport-level failure (TLS): no XML can be sent any more."""
        self._finish("", reason, by_peer=False)

    def _finish(self, error: str, reason: str, *, by_peer: bool) -> None:
        already_reported = self.phase is Phase.CLOSING
        self.phase = Phase.CLOSED
        self._negotiation_deadline = None
        self._sm_ack_due = self._settle_deadline = None
        if not already_reported:
            self.close_error, self.close_reason = error, reason
            self._report_close(error, reason, by_peer=by_peer)

    def _report_close(self, error: str, reason: str, *, by_peer: bool) -> None:
        self._on_finished()
        self._events.append(StreamClosed(error, reason, by_peer))

    def _dispatch_common(self, element: Element) -> bool:
        """Elements every role handles the same way; True when handled."""
        tag = element.tag
        if tag == el.TAG_STREAM_ERROR:
            self._on_peer_stream_error(element)
            return True
        if tag == sm.TAG_REQUEST:
            # XEP-0198 §4: answer at once with what is handled now; what settles later is
            # acknowledged unasked (ACK_EVERY / ACK_DELAY). Prosody ignores an <r/> on a
            # stream without stream management, and so do we.
            if self.sm_in is not None:
                self._send_ack()
            return True
        if tag == sm.TAG_ACK:
            self._on_ack(element)
            return True
        return False

    def _on_ack(self, element: Element) -> None:
        queue = self.sm_out
        if queue is None:
            return
        try:
            count, tokens = queue.ack(element.get("h"))
        except sm.AckError as exc:
            raise StreamError("undefined-condition", str(exc)) from None
        if count:
            self._events.append(StanzasAcked(count, tuple(tokens)))

    def _on_stanza(self, stanza: Element, now: float) -> None:
        """A stanza from the peer — RFC 6120 §8.1.1.2, §13.7: only for an authenticated
        (from-domain, to-domain) pair and a domain served here."""
        if self.direction is not Direction.INBOUND and not self.bidi:
            raise StreamError(
                "unsupported-stanza-type", "stanza on an outbound stream (no XEP-0288 negotiated)"
            )
        if not self.pairs:
            raise StreamError("not-authorized", "stanza before the stream was authenticated")
        from_, to = stanza.get("from"), stanza.get("to")
        if not from_ or not to:
            raise StreamError("improper-addressing", "stanza without 'from' or 'to'")
        try:
            remote = domain_of(from_)
        except JidError as exc:
            raise StreamError("invalid-from", str(exc)) from None
        try:
            local = domain_of(to)
        except JidError as exc:
            raise StreamError("improper-addressing", str(exc)) from None
        if local not in self.ctx.local_domains:
            raise StreamError("host-unknown", f"this gateway does not serve {local}")
        if (remote, local) not in self.pairs:
            raise StreamError(
                "invalid-from", f"{remote} is not authenticated for {local} on this stream"
            )
        if self._close_when_settled is not None:
            # Closing: not ours any more. Never counted, so never acknowledged: the peer
            # re-sends it over its next stream or bounces it (XEP-0198).
            self.stanzas_left_with_peer += 1
            return
        self.stanzas_in += 1
        self._stanza_activity(now)
        counter = self.sm_in
        if counter is None:
            seq = -1
        else:
            seq = counter.received
            counter.received = seq + 1
            kept = self._received_unacked
            if kept is None:
                kept = self._received_unacked = deque()
            kept.append((seq, stanza))
        self._events.append(StanzaReceived(stanza, remote, local, seq))
