"""A deterministic in-memory 'network' of sans-I/O S2S cores, for unit tests.

Each :class:`CoreServer` is one gateway's protocol core (StreamContext); :class:`World`
connects their streams by passing bytes directly, and does the orchestration the asyncio
layer does for real: one outbound stream per domain pair, db:verify routed over the
outbound stream to the authoritative server (XEP-0220 §2.1.2), answers routed back to the
inbound stream that asked. No sockets, no clock: ``now`` is a number the test moves.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.auth.dialback_key import DialbackKeyGenerator
from gateway.auth.tls_provider import OpenSslTlsProvider, certificate_verdict
from gateway.config.model import Limits, PartnerPolicy, PartnerType, TlsSettings
from gateway.policy.negotiation import Support
from gateway.xmpp.events import DialbackVerifyAnswered, DialbackVerifyNeeded, Event
from gateway.xmpp.inbound import InboundStream
from gateway.xmpp.outbound import OutboundStream
from gateway.xmpp.stream import S2SStream, StreamContext, set_output_tap
from gateway.xmpp.tls import TlsEngine


def partner(
    domain: str,
    tls: str = "optional",
    sasl: str = "optional",
    dialback: bool = True,
    additional_domains: tuple[str, ...] = (),
) -> PartnerPolicy:
    return PartnerPolicy(
        domain, PartnerType.FEDERATED, Support(tls), Support(sasl), dialback, additional_domains
    )


class CoreServer:
    def __init__(
        self,
        domain: str,
        partners: list[PartnerPolicy],
        tls: TlsSettings | None,
        *,
        secret: str = "s3cr3t",
        limits: Limits | None = None,
        extra_domains: tuple[str, ...] = (),
    ) -> None:
        self.domain = domain
        self.domains = (domain, *extra_domains)
        index = {d: p for p in partners for d in p.domains}
        provider = OpenSslTlsProvider(tls, self.domains) if tls is not None else None
        self.ctx = StreamContext(
            local_domains=frozenset(self.domains),
            partner_for=index.get,
            keys=DialbackKeyGenerator(secret),
            check_certificate=certificate_verdict,
            tls=provider,
            limits=limits or Limits(),
        )


@dataclass
class Link:
    client: OutboundStream
    server: InboundStream
    client_owner: CoreServer
    server_owner: CoreServer


@dataclass
class World:
    servers: dict[str, CoreServer] = field(default_factory=dict)
    now: float = 1000.0
    links: list[Link] = field(default_factory=list)
    events: list[tuple[str, S2SStream, Event]] = field(default_factory=list)
    wire: list[tuple[str, bytes]] = field(default_factory=list)  # (direction label, bytes)
    # What each core's XML parser was given, i.e. the wire after TLS decryption:
    # (receiving domain, stream, bytes). Lets tests assert on bytes sent inside TLS. It is
    # what the other end wrote in clear, from the cores' public output tap
    # (gateway.xmpp.stream.set_output_tap).
    plain: list[tuple[str, S2SStream, bytes]] = field(default_factory=list)
    all_links: list[Link] = field(default_factory=list)  # links stay here after closing
    # A man in the middle: rewrites the bytes of each hop, (label, bytes) -> bytes.
    tamper: Callable[[str, bytes], bytes] | None = None
    piggyback: bool = False  # a second local domain reuses an open stream (XEP-0220 §2.4)
    _outbound: dict[tuple[str, str], OutboundStream] = field(default_factory=dict)
    _verify_waiters: dict[tuple[str, str, str, str], InboundStream] = field(default_factory=dict)
    # each linked stream -> (the domain at its other end, the stream there)
    _peer_of: dict[S2SStream, tuple[str, S2SStream]] = field(default_factory=dict)

    def add(self, server: CoreServer) -> CoreServer:
        for domain in server.domains:
            self.servers[domain] = server
        return server

    def __post_init__(self) -> None:
        _listen(self)

    def wrote(self, stream: S2SStream, data: bytes) -> None:
        """A core wrote ``data`` in clear (before TLS): its peer's parser gets exactly
        that (what a man in the middle changes is on :attr:`wire`)."""
        peer = self._peer_of.get(stream)
        if peer is not None:
            self.plain.append((*peer, data))

    def plaintext_to(self, domain: str, stream: S2SStream | None = None) -> bytes:
        """All cleartext ``domain``'s core parsed (on ``stream`` only, when given)."""
        return b"".join(
            data for owner, s, data in self.plain
            if owner == domain and (stream is None or s is stream)
        )

    def outbound(self, local: str, remote: str) -> OutboundStream:
        existing = self._outbound.get((local, remote))
        if existing is not None and not existing.closed:
            return existing
        owner, peer = self.servers[local], self.servers[remote]
        existing = next(
            (s for (_lo, r), s in self._outbound.items() if r == remote and not s.closed
             and s.ctx is owner.ctx and s.add_local_domain(local)),
            None,
        ) if self.piggyback else None
        if existing is not None:
            self._outbound[(local, remote)] = existing
            return existing
        policy = owner.ctx.partner_for(remote)
        assert policy is not None, f"{local} has no partner entry for {remote}"
        client = OutboundStream(
            owner.ctx, local_domain=local, remote_domain=remote, partner=policy, now=self.now
        )
        self._outbound[(local, remote)] = client
        self.connect(owner, client, peer)
        return client

    def connect(self, owner: CoreServer, client: OutboundStream, peer: CoreServer) -> Link:
        """Wire ``client`` (of ``owner``) to a new inbound stream of ``peer`` and start it."""
        server = InboundStream(peer.ctx, now=self.now)
        self._peer_of[client] = (peer.domain, server)
        self._peer_of[server] = (owner.domain, client)
        link = Link(client, server, owner, peer)
        self.links.append(link)
        self.all_links.append(link)
        client.initiate(self.now)
        return link

    def run(self, max_rounds: int = 200) -> None:
        for _ in range(max_rounds):
            moved = False
            for link in list(self.links):
                up = link.client.data_to_send()
                if up:
                    moved = True
                    label = f"{link.client_owner.domain}->{link.server_owner.domain}"
                    up = self.tamper(label, up) if self.tamper else up
                    self.wire.append((label, up))
                    link.server.receive_data(up, self.now)
                down = link.server.data_to_send()
                if down:
                    moved = True
                    label = f"{link.server_owner.domain}->{link.client_owner.domain}"
                    down = self.tamper(label, down) if self.tamper else down
                    self.wire.append((label, down))
                    link.client.receive_data(down, self.now)
                moved |= self._drain(link.client_owner, link.client)
                moved |= self._drain(link.server_owner, link.server)
                if link.client.closed and link.server.closed:
                    self.links.remove(link)
                elif link.client.closed and not up and not link.client.data_to_send():
                    link.server.connection_lost("TCP connection closed")
                elif link.server.closed and not down and not link.server.data_to_send():
                    link.client.connection_lost("TCP connection closed")
            if not moved:
                return
        raise AssertionError("the cores did not settle")

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for link in self.links:
            for stream in (link.client, link.server):
                deadline = stream.get_timer()
                if deadline is not None and deadline <= self.now:
                    stream.handle_timer(self.now)
        self.run()

    def _drain(self, owner: CoreServer, stream: S2SStream) -> bool:
        moved = False
        for event in stream.events():
            moved = True
            self.events.append((owner.domain, stream, event))
            if isinstance(event, DialbackVerifyNeeded) and isinstance(stream, InboundStream):
                self.request_verification(owner, stream, event)
            elif isinstance(event, DialbackVerifyAnswered):
                waiter = self._verify_waiters.pop(
                    (owner.domain, event.remote_domain, event.local_domain, event.stream_id), None
                )
                if waiter is not None:
                    waiter.dialback_verified(
                        event.remote_domain,
                        event.local_domain,
                        event.valid,
                        "" if event.valid is not None else "remote-connection-failed",
                        event.error,
                    )
        return moved

    def request_verification(
        self, owner: CoreServer, stream: InboundStream, event: DialbackVerifyNeeded
    ) -> None:
        """Receiving role: send db:verify to the authoritative server over an outbound
        stream, and hand its answer back to ``stream`` (XEP-0220 §2.1.2)."""
        if event.remote_domain not in self.servers:
            stream.dialback_verified(
                event.remote_domain,
                event.local_domain,
                None,
                "remote-server-not-found",
                "unknown in this world",
            )
            return
        out = self.outbound(event.local_domain, event.remote_domain)
        self._verify_waiters[
            (owner.domain, event.remote_domain, event.local_domain, event.stream_id)
        ] = stream
        out.request_verify(event.local_domain, event.remote_domain, event.stream_id, event.key)

    def of(self, owner: str, kind: type) -> list:
        return [e for o, _s, e in self.events if o == owner and isinstance(e, kind)]


# The worlds of the running test, told what every core writes in clear (one tap for all:
# the core has one; tests/unit/conftest.py removes it after each test).
_worlds: list[weakref.ref[World]] = []


def _tell_worlds(stream: S2SStream, data: bytes) -> None:
    for ref in _worlds:
        world = ref()
        if world is not None:
            world.wrote(stream, data)


def _listen(world: World) -> None:
    _worlds.append(weakref.ref(world))
    set_output_tap(_tell_worlds)


def forget_worlds() -> None:
    """Stop telling worlds (after a test): the tap goes, so nothing else pays for it."""
    if _worlds:
        _worlds.clear()
        set_output_tap(None)


class RawPeer:
    """The test plays the remote server against one core stream with literal bytes.

    ``send`` writes cleartext (encrypted first once :meth:`start_tls_client` /
    :meth:`start_tls_server` switched this side to TLS) and returns the cleartext the core
    answered; handshake records are pumped both ways until both sides are quiet.
    """

    def __init__(self, stream: S2SStream, now: float = 0.0) -> None:
        self.stream = stream
        self.now = now
        self.tls: TlsEngine | None = None
        self.events: list[Event] = []

    def send(self, data: bytes, *, then_tls: TlsEngine | None = None) -> bytes:
        if self.tls is not None:
            self.tls.send(data)
            data = self.tls.data_to_send()
        self.stream.receive_data(data, self.now)
        if then_tls is not None:  # e.g. we sent <proceed/>: the core's next bytes are TLS
            self.tls = then_tls
        return self.pump()

    def start_tls_client(self, engine: TlsEngine) -> bytes:
        """After the core's <proceed/>: handshake as the TLS client (we initiated)."""
        self.tls = engine
        self.stream.receive_data(engine.data_to_send(), self.now)
        return self.pump()

    def pump(self) -> bytes:
        got = bytearray()
        for _ in range(50):
            out = self.stream.data_to_send()
            self.events += self.stream.events()
            if not out:
                break
            if self.tls is None:
                got += out
                continue
            got += self.tls.receive(out)
            back = self.tls.data_to_send()
            if back:
                self.stream.receive_data(back, self.now)
        self.events += self.stream.events()
        return bytes(got)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def accepting_stream(world: World, client: OutboundStream) -> InboundStream:
    """The inbound stream at the other end of ``client``."""
    [server] = [link.server for link in world.all_links if link.client is client]
    return server
