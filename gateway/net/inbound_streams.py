"""The open inbound S2S streams, and what the rest of the service may ask of them.

An inbound stream is one a peer opened to us (RFC 6120 §4.1: the receiving entity's
side). Besides bringing stanzas in, it serves the outbound side in three ways, each a
method here so that the outbound sessions never look at inbound streams themselves:

* **Dialback answers** (XEP-0220 §2.1.2): when we are the Receiving Server, the peer's
  ``db:result`` waits on this stream while our outbound stream asks the Authoritative
  Server; the answer comes back through :meth:`InboundStreams.answer_verify`.
* **Bidi** (XEP-0288 §2): a stream that negotiated it carries our stanzas to its peer
  too (:meth:`InboundStreams.bidi_carrier`).
* **Congestion**: while our queue toward a domain is over its bound, we stop reading the
  streams that domain opened to us (their error replies would land in that queue), so
  TCP flow control slows it down (:meth:`InboundStreams.hold_reading_from`).

Connection limits (RFC 6120 §13.12) are counted here too, per address and in all.
"""

from __future__ import annotations

from gateway.net.connection import StreamConnection
from gateway.net.links import S2SSettings
from gateway.xmpp.inbound import InboundStream

VerifyKey = tuple[str, str, str]  # (local domain, claimed remote domain, stream id)


class InboundStreams:
    """The inbound streams by connection, typed (see the module docstring)."""

    def __init__(self, settings: S2SSettings) -> None:
        self.settings = settings
        self.streams: dict[StreamConnection, InboundStream] = {}
        self.accepting = True
        self.reading_paused = False
        self._verify_waiters: dict[VerifyKey, StreamConnection] = {}
        self._per_ip: dict[str, int] = {}
        self._counted_ip: dict[StreamConnection, str] = {}  # admitted connections

    def __len__(self) -> int:
        return len(self.streams)

    def add(self, conn: StreamConnection, stream: InboundStream) -> None:
        self.streams[conn] = stream

    def admit(self, conn: StreamConnection) -> str:
        """Connection limits (RFC 6120 §13.12): '' to accept, else the refusal reason."""
        limits = self.settings.config.limits
        if not self.accepting:
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

    def forget(self, conn: StreamConnection) -> None:
        """``conn`` is gone (or was refused at once): its count and its waits go too."""
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

    # ------------------------------------------------------------------ reading

    def set_reading_paused(self, paused: bool) -> None:
        """Router backpressure: inbound streams are what bring stanzas in."""
        self.reading_paused = paused
        for conn in self.streams:
            conn.set_reading(not paused)

    def hold_reading_from(self, remote: str, held: bool) -> None:
        """Our queue toward ``remote`` is congested (drained): stop (resume) reading the
        streams it opened to us. Not a bidi one: it carries the acknowledgements that
        drain that queue."""
        for conn, stream in self.streams.items():
            if not stream.bidi and stream.remote_domain == remote:
                conn.set_reading(not held, f"queue-{remote}")

    # ------------------------------------------------------------------ for the sessions

    def bidi_carrier(self, local: str, remote: str) -> StreamConnection | None:
        """An inbound stream that negotiated XEP-0288 and may carry ``local`` →
        ``remote`` stanzas, if there is one."""
        for conn, stream in self.streams.items():
            if stream.bidi and stream.can_send(local, remote):
                return conn
        return None

    def expect_verify(self, conn: StreamConnection, key: VerifyKey) -> None:
        """``conn``'s dialback request waits for the Authoritative Server's answer."""
        self._verify_waiters[key] = conn

    def answer_verify(self, local: str, remote: str, stream_id: str, valid: bool | None,
                      condition: str, text: str) -> None:
        """The Authoritative Server's answer (``None``: it could not be asked, and
        ``condition`` says why) goes to the stream that waits for it (XEP-0220 §2.1.2)."""
        waiter = self._verify_waiters.pop((local, remote, stream_id), None)
        stream = self.streams.get(waiter) if waiter is not None else None
        if waiter is None or stream is None:
            return
        stream.dialback_verified(remote, local, valid, condition if valid is None else "", text)
        waiter.pump()
