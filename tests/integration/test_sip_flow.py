"""Flow control end to end on the SIP side: the SIP half at the speed of S2S.

Two real gateways over loopback: A (a.example, development backend) is the XMPP partner,
B (b.example, ``sip.backend: sip``) has a SIP user agent in its proxy's place. Every test
pushes more than one part of the path can take at once and checks that the sender is
slowed down — S2S streams paused, SIP 503 + Retry-After over UDP, SIP TCP input paused —
and that in the end every stanza arrived exactly once, nothing was refused for being one
too many, and nothing was dropped (the autouse fixture in conftest.py checks the drop
counters of both gateways after each test).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import socket
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from xml.etree.ElementTree import Element

import pytest

from gateway.config.model import (
    DialbackSettings,
    FederationSettings,
    GatewayConfig,
    Limits,
    ListenAddress,
    PartnerPolicy,
    PartnerType,
    SipSettings,
    StoreSettings,
)
from gateway.daemon import Gateway
from gateway.dns.resolver import DnsPythonResolver
from gateway.policy.negotiation import Support
from gateway.router import HIGH_WATER
from gateway.sip.development import message, presence
from gateway.sip.message import SipRequest, SipResponse
from testbed.dnsmasq import free_port
from testbed.pki import Pki
from testbed.sip_ua import SipUserAgent

OPEN = dict(tls=Support.OPTIONAL, sasl=Support.OPTIONAL, dialback=True)


class PacedProxy(SipUserAgent):
    """A UA in the proxy's place that answers MESSAGE and SUBSCRIBE at a fixed pace (a
    proxy slower than the partner sending to it), and everything else at once."""

    def __init__(self, *args, per_tick: int = 10, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.per_tick = per_tick
        self.waiting: deque[tuple[SipRequest, object]] = deque()
        self.bodies: list[str] = []
        self.subscribed: list[str] = []
        self.branches: set[str] = set()
        self.retransmissions = 0
        self._pacer: asyncio.Task[None] | None = None

    async def start(self) -> PacedProxy:
        await super().start()
        self._pacer = asyncio.get_running_loop().create_task(self._pace())
        return self

    async def close(self) -> None:
        if self._pacer is not None:
            self._pacer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pacer
        await super().close()

    def _handle(self, message: SipRequest | SipResponse, connection=None) -> None:
        if isinstance(message, SipRequest) and message.method in ("MESSAGE", "SUBSCRIBE"):
            branch = message.top_via.branch
            if branch in self.branches:
                self.retransmissions += 1
                return
            self.branches.add(branch)
            self.waiting.append((message, connection))
            return
        super()._handle(message, connection)

    async def _pace(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            for _ in range(min(self.per_tick, len(self.waiting))):
                request, connection = self.waiting.popleft()
                self.reply(request, 200, ("Expires", "600"), connection=connection)
                if request.method == "MESSAGE":
                    self.bodies.append(request.body.decode())
                else:
                    self.subscribed.append(request.uri)


class SlowLink:
    """A TCP relay that holds each new connection for ``delay`` seconds before connecting
    it through to ``target``: a partner server slow to answer, so that stanzas queue
    toward it for a while (the SRV record of a.example points here)."""

    def __init__(self, port: int, target: int, delay: float) -> None:
        self.port, self.target, self.delay = port, target, delay
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> SlowLink:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(self.delay)
        far_reader, far_writer = await asyncio.open_connection("127.0.0.1", self.target)
        for source, sink in ((reader, far_writer), (far_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pipe(source, sink))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            sink.close()


class SipPair:
    """Gateway A (development backend) and gateway B (SIP backend) federating."""

    def __init__(self, tmp: Path, pki: Pki, dns: str, ports: dict[str, int]) -> None:
        self.tmp, self.pki, self.dns, self.ports = tmp, pki, dns, ports
        self.a: Gateway | None = None
        self.b: Gateway | None = None

    def _config(self, domain: str, peer: str, *, port: int = 0, **changes) -> GatewayConfig:
        config = GatewayConfig(
            domains=(domain,),
            partners=(PartnerPolicy(peer, PartnerType.FEDERATED, **OPEN),),
            listen=(ListenAddress("127.0.0.1", port or self.ports[domain]),),
            tls=self.pki.tls_settings(domain), dialback=DialbackSettings(f"secret-{domain}"),
            store=StoreSettings(self.tmp / domain / "store.sqlite3"),
            admin_socket=self.tmp / domain / "admin.sock")
        return dataclasses.replace(config, **changes)

    async def start_a(self, *, port: int = 0, **changes) -> Gateway:
        self.a = Gateway(self._config("a.example", "b.example", port=port, **changes),
                         resolver=DnsPythonResolver(nameservers=(self.dns,), timeout=2.0))
        await self.a.start()
        return self.a

    async def start_b(self, proxy_port: int, *, transport: str = "udp", max_in_flight: int = 50,
                      **changes) -> Gateway:
        sip = SipSettings(backend="sip", proxy_host="127.0.0.1", proxy_port=proxy_port,
                          transport=transport, local_host="127.0.0.1",
                          local_port=free_port(), max_in_flight=max_in_flight)
        self.b = Gateway(self._config("b.example", "a.example", sip=sip, **changes),
                         resolver=DnsPythonResolver(nameservers=(self.dns,), timeout=2.0))
        await self.b.start()
        return self.b

    async def stop(self) -> None:
        for gateway in (self.a, self.b):
            if gateway is not None:
                await gateway.stop()


@pytest.fixture
async def sip_pair(tmp_path: Path, pki: Pki,
                   dns_for_pair: tuple[str, dict[str, int]]) -> AsyncIterator[SipPair]:
    dns, ports = dns_for_pair
    pair = SipPair(tmp_path, pki, dns, ports)
    try:
        yield pair
    finally:
        await pair.stop()


async def _until(condition, timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)
    assert condition(), what


def _errors(gateway: Gateway) -> list[Element]:
    return [s for s in gateway.backend.delivered if s.get("type") == "error"]


@pytest.mark.parametrize("stream_management", [False, True], ids=["plain", "xep-0198"])
async def test_xmpp_burst_to_a_slow_proxy_pauses_s2s_and_loses_nothing(
        sip_pair: SipPair, stream_management: bool) -> None:
    """3,000 messages from the partner in one go, a proxy answering 1,000 a second and a
    window of 50: the backend waits for room, the router queue reaches its high-water
    mark, the S2S stream is paused and resumed; every message reaches the proxy once, no
    error goes back, the queues stay within their bounds; with stream management too."""
    proxy = await PacedProxy("proxy", "b.example", ("127.0.0.1", 9), per_tick=10).start()
    federation = FederationSettings(stream_management=stream_management)
    try:
        a = await sip_pair.start_a(federation=federation)
        b = await sip_pair.start_b(proxy.port, max_in_flight=50, federation=federation)
        proxy.proxy = b.backend.transport.local
        n = 3000
        for index in range(n):
            a.s2s.send(message("alice@a.example/pc", "bob@b.example", f"m{index}"))
        await _until(lambda: len(proxy.bodies) >= n, 30, "every message reached the proxy")
        assert sorted(proxy.bodies) == sorted(f"m{index}" for index in range(n))
        assert proxy.retransmissions == 0
        assert _errors(a) == []
        assert b.router.pressure_episodes >= 1  # the S2S stream was told to stop reading
        await _until(lambda: not b.s2s.reading_paused, 5, "reading resumed")
        sip = b.status()["backend"]
        assert sip["peak_in_flight"] <= 50
        assert b.router.inbound_peak < HIGH_WATER + 1500  # + what one TLS read can carry
    finally:
        await proxy.close()


async def _send_until_accepted(ua: SipUserAgent, to: str, text: str,
                               statuses: list[int], retried: set[str]) -> None:
    """What a well-behaved SIP sender does with 503 + Retry-After (RFC 3261 §21.5.4): wait,
    then send the request again as a new transaction (``text`` goes into ``retried``)."""
    for _ in range(30):
        response = await ua.send_message(to, text)
        statuses.append(response.status)
        if response.status == 503:
            retried.add(text)
        if response.status != 503:
            assert response.status == 202, response
            return
        await asyncio.sleep(int(response.get("retry-after") or "1"))
    raise AssertionError(f"{text} never accepted")


async def test_sip_burst_while_the_s2s_session_opens_gets_503_then_arrives(
        sip_pair: SipPair) -> None:
    """300 SIP MESSAGEs at once toward a partner whose session is not up yet, with a
    per-domain queue bound of 20: past ten times that (SATURATED_QUEUE_FACTOR) new
    MESSAGEs over UDP are answered 503 + Retry-After instead of being refused or dropped;
    retried, every one arrives exactly once."""
    ua = await SipUserAgent("alice", "b.example", ("127.0.0.1", 9)).start()
    a_port = free_port(kind=socket.SOCK_STREAM)
    try:
        await sip_pair.start_a(port=a_port)
        b = await sip_pair.start_b(ua.port, limits=Limits(max_queue_per_domain=20))
        ua.proxy = b.backend.transport.local
        statuses: list[int] = []
        retried: set[str] = set()
        n = 300
        async with SlowLink(sip_pair.ports["a.example"], a_port, delay=1.5):
            # Wave 1 fills the queue toward a.example while its session is still being set
            # up; wave 2 arrives while that domain is congested.
            first = [asyncio.ensure_future(
                _send_until_accepted(ua, "sip:carol@a.example", f"s{index}", statuses,
                                      retried))
                for index in range(30)]
            await _until(lambda: b.router.xmpp_congested("a.example"), 5, "congested")
            second = [asyncio.ensure_future(
                _send_until_accepted(ua, "sip:carol@a.example", f"s{index}", statuses,
                                      retried))
                for index in range(30, n)]
            await asyncio.wait_for(asyncio.gather(*first, *second), 60)
        assert 503 in statuses and statuses.count(202) == n
        # A burst is worked off, not refused: up to ten times the bound waits in the
        # queue (a 503 reaches a phone behind a proxy as a failure), only the rest is
        # asked to come back later.
        assert len(retried) <= n - 10 * 20 + 10, len(retried)
        a = sip_pair.a
        assert a is not None
        await _until(lambda: len(a.backend.delivered) >= n, 10, "every message reached A")
        bodies = sorted(s.findtext("{jabber:server}body") for s in a.backend.delivered)
        assert bodies == sorted(f"s{index}" for index in range(n))
        assert b.status()["backend"]["busy_answers"] >= statuses.count(503)
        assert not b.router.xmpp_congested("a.example")
    finally:
        await ua.close()


async def test_sip_burst_over_tcp_pauses_the_proxy_connection_instead_of_503(
        sip_pair: SipPair) -> None:
    """The same burst over TCP: while the partner's queue is over its bound the gateway
    stops reading the proxy's connection (TCP flow control) and answers every MESSAGE
    202 once it is read again; no 503, every message arrives once."""
    ua = SipUserAgent("alice", "b.example", ("127.0.0.1", 9), transport="tcp")
    a_port = free_port(kind=socket.SOCK_STREAM)
    try:
        await sip_pair.start_a(port=a_port)
        # B never sends a request to its proxy here: only the address (trust) matters.
        b = await sip_pair.start_b(9, transport="tcp", limits=Limits(max_queue_per_domain=20))
        ua.proxy = b.backend.transport.local
        await ua.start()
        n = 300
        async with SlowLink(sip_pair.ports["a.example"], a_port, delay=1.5):
            first = [asyncio.ensure_future(ua.send_message("sip:carol@a.example", f"t{index}"))
                     for index in range(30)]
            await _until(lambda: b.router.xmpp_congested("a.example"), 5, "congested")
            second = [asyncio.ensure_future(ua.send_message("sip:carol@a.example",
                                                            f"t{index}"))
                      for index in range(30, n)]
            responses = await asyncio.wait_for(asyncio.gather(*first, *second), 60)
        assert [r.status for r in responses] == [202] * n
        a = sip_pair.a
        assert a is not None
        await _until(lambda: len(a.backend.delivered) >= n, 10, "every message reached A")
        bodies = sorted(s.findtext("{jabber:server}body") for s in a.backend.delivered)
        assert bodies == sorted(f"t{index}" for index in range(n))
        assert b.status()["backend"]["input_pauses"] >= 1
        assert not b.status()["backend"]["input_paused"]
    finally:
        await ua.close()


def _subscribe_as(ua: SipUserAgent, watcher: str, contact: str) -> SipRequest:
    request = ua._new("SUBSCRIBE", f"sip:{contact}", f"sip:{contact}")
    request.set("from", f"<sip:{watcher}>;tag={secrets.token_hex(4)}")
    request.add("event", "presence")
    request.add("accept", "application/pidf+xml")
    request.add("expires", "600")
    return request


async def test_presence_storm_both_ways_is_mapped_completely(sip_pair: SipPair) -> None:
    """1,000 SIP watchers subscribe at once, their XMPP contacts all approve, and 1,000
    XMPP contacts probe SIP users at once: every SUBSCRIBE is answered and mapped to an
    XMPP subscribe, every approval to a NOTIFY active, every probe to a SUBSCRIBE at the
    proxy, which never has more than the window outstanding."""
    proxy = await PacedProxy("proxy", "b.example", ("127.0.0.1", 9), per_tick=50).start()
    try:
        a = await sip_pair.start_a()
        b = await sip_pair.start_b(proxy.port, max_in_flight=100)
        proxy.proxy = b.backend.transport.local
        n = 1000
        answers = await asyncio.wait_for(asyncio.gather(*(
            proxy.request(_subscribe_as(proxy, f"w{index}@b.example", f"c{index}@a.example"),
                          timeout=20)
            for index in range(n))), 60)
        assert {r.status for r in answers} <= {200, 503}
        retry = [index for index, r in enumerate(answers) if r.status == 503]
        for _round in range(20):  # asked to come back later: do so (RFC 3261 §21.5.4)
            if not retry:
                break
            await asyncio.sleep(1)
            again = await asyncio.gather(*(proxy.request(
                _subscribe_as(proxy, f"w{index}@b.example", f"c{index}@a.example"),
                timeout=20) for index in retry))
            assert {r.status for r in again} <= {200, 503}
            retry = [index for index, r in zip(retry, again, strict=True) if r.status == 503]
        assert retry == []
        subscribes = lambda: [s for s in a.backend.delivered  # noqa: E731
                              if s.get("type") == "subscribe"]
        await _until(lambda: len(subscribes()) >= n, 20, "every SUBSCRIBE reached XMPP")
        assert len(b.backend.notifiers) == n
        # each outgoing subscription was recorded (in batches) before it left
        for index in (0, n // 2, n - 1):
            assert await b.store.is_authorized(f"w{index}@b.example", f"c{index}@a.example")
        # A's users approve at once ('subscribed' and their presence): each watcher's
        # dialog turns active
        active: set[str] = set()

        def count_active() -> int:
            while not proxy.notifies.empty():
                notify = proxy.notifies.get_nowait()
                if (notify.get("subscription-state") or "").startswith("active"):
                    active.add(notify.to.uri)
            return len(active)

        await _until(lambda: count_active() >= n, 20, "a NOTIFY active each")
        for index in range(n):
            a.s2s.send(presence(f"x{index}@a.example/r", f"u{index}@b.example", "probe"))
        await _until(lambda: len(proxy.subscribed) >= n, 30, "a SUBSCRIBE per probe")
        assert sorted(proxy.subscribed) == sorted(f"sip:u{index}@b.example"
                                                  for index in range(n))
        assert b.status()["backend"]["peak_in_flight"] <= 100
        assert proxy.retransmissions == 0
    finally:
        await proxy.close()


@pytest.mark.drops_expected
async def test_an_undeliverable_error_is_counted_and_logged_not_lost_silently(
        sip_pair: SipPair, no_stanza_dropped, caplog: pytest.LogCaptureFixture) -> None:
    """RFC 6120 §8.3.1: an error is never answered with an error, so an error stanza that
    cannot be delivered has nobody to be told. That is the one kind of drop left: it is
    counted by reason, exported, and logged at WARNING with the addresses."""
    a = await sip_pair.start_a()
    # b.example is a partner, but nobody listens there: the session fails and its queue
    # is bounced; the error in it has nobody to go to.
    error = message("alice@a.example/pc", "bob@b.example", "x", message_type="error")
    await a.backend.inject(error)
    await _until(lambda: a.router.drops.total == 1, 15, "the drop was counted")
    assert a.router.drops.describe() == {"error-not-deliverable": 1}
    assert a.status()["dropped"] == {"error-not-deliverable": 1}
    [record] = [r for r in caplog.records if r.getMessage() == "stanza.dropped"]
    assert record.levelname == "WARNING"
    assert record.gw_fields["recipient"] == "bob@b.example"  # type: ignore[attr-defined]
