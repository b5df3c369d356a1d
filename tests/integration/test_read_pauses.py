"""An inbound stream stays paused while any reason to pause it holds.

Reading from a peer stops for several independent reasons: the router's queue is full
(backpressure), the peer sends faster than its rate limit, the queue toward its domain is
congested, or the peer does not read what we write (our write buffer passed its
high-water mark). The last one ending — the peer catches up and the buffer drains — must
not re-open a stream that the router still holds back, or an overloaded gateway keeps
reading without bound.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

from gateway.config.model import (
    DialbackSettings,
    GatewayConfig,
    ListenAddress,
    PartnerPolicy,
    PartnerType,
    StoreSettings,
)
from gateway.daemon import Gateway
from gateway.dns.resolver import DnsPythonResolver
from gateway.router import HIGH_WATER
from gateway.sip.development import message
from testbed.dnsmasq import free_port
from testbed.pki import Pki
from tests.support.held_backend import HeldBackend

HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
          "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
          "to='b.example' from='p.example' version='1.0'>")


def verify(stream_id: str) -> bytes:
    return (f"<db:verify from='p.example' to='b.example' id='{stream_id}'>"
            "0123456789abcdef</db:verify>").encode()


class Peer:
    """A remote server on a TLS connection (XEP-0368) that reads only when told to."""

    def __init__(self, port: int, ca: Path) -> None:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
        raw.connect(("127.0.0.1", port))
        context = ssl.create_default_context(cafile=str(ca))
        self.sock = context.wrap_socket(raw, server_hostname="b.example")
        self.sock.settimeout(5)
        self.sock.sendall(HEADER.encode())
        self.read_until(b"</stream:features>")

    def read_until(self, marker: bytes, timeout: float = 5) -> bytes:
        self.sock.settimeout(timeout)
        data = b""
        while marker not in data:
            data += self.sock.recv(65536)
        return data

    def read_all(self, quiet: float = 0.5) -> bytes:
        """Everything the gateway sends until it is quiet for ``quiet`` seconds."""
        self.sock.settimeout(quiet)
        data = b""
        try:
            while chunk := self.sock.recv(65536):
                data += chunk
        except TimeoutError:
            pass
        return data


async def test_the_write_buffer_draining_does_not_undo_router_backpressure(
        tmp_path: Path, pki: Pki, dns_for_pair: tuple[str, dict[str, int]]) -> None:
    port = free_port(kind=socket.SOCK_STREAM)
    config = GatewayConfig(
        domains=("b.example",),
        partners=(PartnerPolicy("p.example", PartnerType.FEDERATED),),
        listen=(ListenAddress("127.0.0.1", port, direct_tls=True),),
        tls=pki.tls_settings("b.example"),
        dialback=DialbackSettings("secret"),
        store=StoreSettings(tmp_path / "store.sqlite3"),
        admin_socket=tmp_path / "admin.sock",
    )
    backend = HeldBackend()
    gateway = Gateway(config, backend=backend,
                      resolver=DnsPythonResolver(nameservers=(dns_for_pair[0],), timeout=2))
    await gateway.start()
    peer = await asyncio.to_thread(Peer, port, pki.root / "ca.crt")
    try:
        [conn] = gateway.s2s.connections
        transport = conn.transport
        assert transport is not None
        # Small buffers, so that a few hundred answers the peer does not read fill them.
        transport.set_write_buffer_limits(high=1024)
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                      4096)
        flood = b"".join(verify(f"s{index}") for index in range(400))
        await asyncio.to_thread(peer.sock.sendall, flood)
        async with asyncio.timeout(5):  # the peer does not read: we stop reading it
            while transport.is_reading():
                await asyncio.sleep(0.01)
        # Meanwhile the SIP side stopped taking stanzas: the router's queue fills and
        # the S2S service is told to stop reading inbound streams.
        for index in range(HIGH_WATER):
            gateway.router.from_xmpp(message("x@p.example/r", "y@b.example", str(index)),
                                     "p.example", "b.example")
        assert gateway.router.pressure_episodes == 1
        answers = await asyncio.to_thread(peer.read_all)  # the peer catches up
        assert answers.count(b"type='invalid'") + answers.count(b'type="invalid"') > 0
        await asyncio.sleep(0.2)
        assert not transport.is_reading()
        await asyncio.to_thread(peer.sock.sendall, verify("late"))
        assert b"late" not in await asyncio.to_thread(peer.read_all, 0.5)
        backend.released.set()  # the SIP side recovers: the router drains, reading resumes
        assert b"late" in await asyncio.to_thread(peer.read_until, b"late", 10)
    finally:
        backend.released.set()
        peer.sock.close()
        await gateway.stop()
