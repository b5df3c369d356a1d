"""Resource attacks against a running gateway: connection
floods from one address, slowloris, unbounded outbound queues, stanza floods."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from pathlib import Path

from gateway.config.model import (
    DialbackSettings,
    GatewayConfig,
    Limits,
    ListenAddress,
    StoreSettings,
)
from gateway.daemon import Gateway
from gateway.dns.resolver import DnsPythonResolver
from gateway.policy.negotiation import Support
from gateway.sip.development import message
from gateway.xmpp.xml import stream_header
from tests.integration.test_two_gateways import Pair, _policy, pair, partner  # noqa: F401

OPEN = _policy(Support.OPTIONAL, Support.OPTIONAL, True)


def pair_config(pair: Pair, domain: str, policy) -> GatewayConfig:  # noqa: F811
    return GatewayConfig(
        domains=(domain,), partners=(policy,),
        listen=(ListenAddress("127.0.0.1", pair.ports[domain]),),
        tls=pair.pki.tls_settings(domain), dialback=DialbackSettings("s"),
        store=StoreSettings(pair.tmp / domain / "store.sqlite3"),
        admin_socket=pair.tmp / domain / "admin.sock")


async def _restart_b(pair: Pair, limits: Limits) -> Gateway:  # noqa: F811
    config = dataclasses.replace(pair.b.config, limits=limits)
    await pair.b.stop()
    b = Gateway(config, resolver=DnsPythonResolver(nameservers=(pair.dns,), timeout=2.0))
    await b.start()
    pair.gateways["b.example"] = b
    return b


async def test_connection_flood_from_one_address(pair: Pair) -> None:  # noqa: F811
    await pair.start(partner("b.example", OPEN), partner("a.example", OPEN))
    await _restart_b(pair, Limits(max_connections_per_ip=5))
    port = pair.ports["b.example"]
    held = []
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        held.append(writer)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(100), 5) == b""  # refused at once
    writer.close()
    for w in held:
        w.close()
    await asyncio.sleep(0.1)
    # Once they are gone, federation from that address works again.
    await pair.a.backend.inject(message("alice@a.example/pc", "bob@b.example", "after"))
    assert (await pair.b.backend.next_delivered(10)).findtext("{jabber:server}body") == "after"


async def test_slowloris_is_cut_by_the_negotiation_timeout(pair: Pair) -> None:  # noqa: F811
    await pair.start(partner("b.example", OPEN), partner("a.example", OPEN))
    await _restart_b(pair, Limits(negotiation_timeout=1.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.ports["b.example"])
    header = stream_header(from_="a.example", to="b.example", stream_id=None)
    started = time.monotonic()
    received = b""
    for byte in header[:60]:  # trickle, one byte every 100 ms
        writer.write(bytes([byte]))
        with contextlib.suppress(TimeoutError):
            received += await asyncio.wait_for(reader.read(4096), 0.1)
        if b"connection-timeout" in received or time.monotonic() - started > 5:
            break
    if b"connection-timeout" not in received:
        received += await asyncio.wait_for(reader.read(4096), 3)
    assert b"<connection-timeout xmlns=" in received
    assert time.monotonic() - started < 3
    writer.close()


async def test_full_outbound_queue_holds_senders_back_instead_of_refusing(
        pair: Pair) -> None:  # noqa: F811
    """Over limits.max_queue_per_domain the domain is congested (the local side is told
    to hold its senders back) but no stanza is refused for being one too many; the
    congestion ends when the queue drains (here: bounced at stop, nothing lost)."""
    silent = socket.socket()
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    silent.bind(("127.0.0.1", pair.ports["b.example"]))
    silent.listen(50)  # TCP accepted, never a stream header: the session never opens
    try:
        config = dataclasses.replace(
            pair_config(pair, "a.example", partner("b.example", OPEN)),
            limits=Limits(max_queue_per_domain=10))
        a = Gateway(config, resolver=DnsPythonResolver(nameservers=(pair.dns,), timeout=2.0))
        await a.start()
        pair.gateways = {"a.example": a}
        assert not a.router.xmpp_congested("b.example")
        for index in range(15):
            await a.backend.inject(message("alice@a.example/pc", "bob@b.example", f"m{index}"))
        await asyncio.sleep(0.2)
        assert [s for s in a.backend.delivered if s.get("type") == "error"] == []
        assert sum(a.status()["queues"].values()) == 15
        assert a.router.xmpp_congested("b.example")
        assert not a.router.xmpp_congested("c.example")
        await a.stop()  # the 15 queued ones are bounced, none lost
        pair.gateways = {}
        errors = [s for s in a.backend.delivered if s.get("type") == "error"]
        assert len(errors) == 15
        assert not a.router.xmpp_congested("b.example")
        assert a.router.drops.total == 0
    finally:
        silent.close()


async def test_stanza_flood_is_throttled_not_dropped(pair: Pair, tmp_path: Path) -> None:  # noqa: F811
    await pair.start(partner("b.example", OPEN), partner("a.example", OPEN))
    rate = 200_000  # bytes/s per inbound stream
    b = await _restart_b(pair, Limits(inbound_bytes_per_second=rate))
    await pair.a.backend.inject(message("alice@a.example/pc", "bob@b.example", "warm-up"))
    await b.backend.next_delivered(10)  # the session is up: nothing waits in a queue
    b.backend.delivered.clear()
    delivered_before = b.router.delivered
    n = 5000
    body = "x" * 80
    started = time.monotonic()
    for index in range(n):
        pair.a.s2s.send(message("alice@a.example/pc", "bob@b.example", f"{index} {body}"))
    size = len(b'<message from="alice@a.example/pc" to="bob@b.example" type="chat"><body>'
               b"0000 </body></message>") + len(body)
    while b.router.delivered - delivered_before < n:
        assert time.monotonic() - started < 60, \
            f"only {b.router.delivered - delivered_before} of {n} delivered"
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - started
    # Everything arrived, in order, and no faster than the rate allows, minus one burst
    # (a read takes up to 256 KiB from the socket before the bucket can pause it).
    burst = 256 * 1024 + rate
    assert elapsed >= (n * size - burst) / rate * 0.8
    bodies = [s.findtext("{jabber:server}body") for s in b.backend.delivered]
    assert [int(x.split()[0]) for x in bodies] == list(range(n))


async def test_the_unacknowledged_window_lets_the_queue_through_as_acks_come(
        pair: Pair) -> None:  # noqa: F811
    """With limits.max_unacked at 3, A writes 3 stanzas to B under stream management and
    queues the rest; each acknowledgement from B lets the next ones out of the queue:
    every stanza arrives, in order, and nothing is left waiting on either side."""
    await pair.start(partner("b.example", OPEN), partner("a.example", OPEN))
    config = dataclasses.replace(pair.a.config, limits=Limits(max_unacked=3))
    await pair.a.stop()
    a = Gateway(config, resolver=DnsPythonResolver(nameservers=(pair.dns,), timeout=2.0))
    await a.start()
    pair.gateways["a.example"] = a
    await a.backend.inject(message("alice@a.example/pc", "bob@b.example", "warm-up"))
    await pair.b.backend.next_delivered(10)
    pair.b.backend.delivered.clear()
    n = 200
    for index in range(n):
        a.s2s.send(message("alice@a.example/pc", "bob@b.example", f"w{index}"))
    outbound = a.s2s.outbound
    assert outbound.find("a.example", "b.example").queued() > 0  # the window held them
    started = time.monotonic()
    while len(pair.b.backend.delivered) < n:
        assert time.monotonic() - started < 30, f"{len(pair.b.backend.delivered)} of {n}"
        await asyncio.sleep(0.02)
    bodies = [s.findtext("{jabber:server}body") for s in pair.b.backend.delivered]
    assert bodies == [f"w{index}" for index in range(n)]
    session = outbound.find("a.example", "b.example")
    assert session is not None and session.queued() == 0
    while True:  # B acknowledges the last ones a moment after delivering them
        rows = [row for row in a.status()["sessions"] if row["direction"] == "outbound"]
        if rows and all(row["stream_management"]["unacked"] == 0 for row in rows):
            break
        assert time.monotonic() - started < 30, rows
        await asyncio.sleep(0.02)
    assert not outbound._waiting  # no session left marked as having work
    assert a.router.drops.total == 0


async def test_other_sessions_keep_working_during_a_flood(pair: Pair) -> None:  # noqa: F811
    """While A floods B with 20,000 stanzas, B's own session toward A still delivers
    promptly, every flood stanza arrives, and memory stays bounded (backpressure)."""
    import resource

    await pair.start(partner("b.example", OPEN), partner("a.example", OPEN))
    await pair.a.backend.inject(message("alice@a.example/pc", "bob@b.example", "warm-up"))
    await pair.b.backend.next_delivered(10)
    await pair.b.backend.inject(message("bob@b.example/pc", "alice@a.example", "warm-up"))
    await pair.a.backend.next_delivered(10)
    delivered_before = pair.b.router.delivered
    n = 20_000
    for index in range(n):
        pair.a.s2s.send(message("alice@a.example/pc", "bob@b.example", f"flood {index}"))
    latencies = []
    for probe in range(5):
        sent = time.monotonic()
        await pair.b.backend.inject(message("bob@b.example/pc", "alice@a.example", f"p{probe}"))
        while True:
            got = await pair.a.backend.next_delivered(10)
            if got.findtext("{jabber:server}body") == f"p{probe}":
                break
        latencies.append(time.monotonic() - sent)
        await asyncio.sleep(0.05)
    started = time.monotonic()
    while pair.b.router.delivered - delivered_before < n:
        assert time.monotonic() - started < 60, \
            f"{pair.b.router.delivered - delivered_before} of {n}"
        await asyncio.sleep(0.05)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"flood: {n} stanzas delivered; other session latency max "
          f"{max(latencies) * 1000:.0f} ms; peak RSS of the test process {peak_mib:.0f} MiB")
    assert max(latencies) < 2.0
    assert peak_mib < 1024


async def test_global_connection_limit(pair: Pair) -> None:  # noqa: F811
    await pair.start(partner("b.example", OPEN), partner("a.example", OPEN))
    await _restart_b(pair, Limits(max_connections=4, max_connections_per_ip=100))
    port = pair.ports["b.example"]
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
    await asyncio.sleep(0.05)
    # The fifth is over the global limit (counted before admission): closed at once.
    assert await asyncio.wait_for(held[-1][0].read(100), 5) == b""
    for _reader, writer in held[:-1]:
        assert not writer.is_closing()
        writer.close()
