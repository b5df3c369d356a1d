"""Happy Eyeballs (RFC 8305) address racing, on loopback sockets; a blackholed address is
simulated by a connect that never completes."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.net import happy_eyeballs
from gateway.net.happy_eyeballs import interleave, race


def test_interleave_alternates_families_starting_with_the_first() -> None:
    assert interleave(["2001:db8::1", "2001:db8::2", "192.0.2.1", "192.0.2.2"]) == [
        "2001:db8::1", "192.0.2.1", "2001:db8::2", "192.0.2.2"]
    assert interleave(["192.0.2.1", "2001:db8::1", "2001:db8::2"]) == [
        "192.0.2.1", "2001:db8::1", "2001:db8::2"]
    assert interleave([]) == []


async def listening() -> tuple[asyncio.Server, int, list[bytes]]:
    got: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await reader.read(100))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], got


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.made = asyncio.Event()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.made.set()


async def test_refused_address_then_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    server, port, got = await listening()
    async with server:
        result = await race(["127.0.0.9", "127.0.0.1"], port, timeout=2)
        # 127.0.0.9 has no listener: refused at once, the next is tried without waiting
        assert result is not None and result.address == "127.0.0.1"
        assert [a for a, _r in result.failures] == ["127.0.0.9"]
        protocol = Recorder()
        result.hand_over(protocol)
        assert protocol.transport is not None
        protocol.transport.write(b"<stream>")
        for _ in range(50):
            if got:
                break
            await asyncio.sleep(0.01)
        assert got == [b"<stream>"]


async def test_blackholed_ipv6_costs_one_attempt_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    server, port, _got = await listening()
    loop = asyncio.get_running_loop()
    real = loop.create_connection
    cancelled: list[str] = []

    async def create_connection(factory, host, port_, **kw):  # type: ignore[no-untyped-def]
        if host == "2001:db8::1":  # a route that swallows SYNs
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append(host)
                raise
        return await real(factory, "127.0.0.1" if host == "192.0.2.1" else host, port_, **kw)

    monkeypatch.setattr(loop, "create_connection", create_connection)
    async with server:
        started = time.monotonic()
        result = await race(["2001:db8::1", "192.0.2.1"], port, timeout=10, delay=0.1)
        took = time.monotonic() - started
    assert result is not None and result.address == "192.0.2.1"
    assert 0.1 <= took < 1.0  # one attempt delay, not the 10 s connect timeout
    assert cancelled == ["2001:db8::1"]
    result.transport.close()


async def test_all_fail() -> None:
    failures: list[tuple[str, str]] = []
    result = await race(["127.0.0.9", "127.0.0.10"], 1, timeout=1,
                        on_failure=lambda a, r: failures.append((a, r)))
    assert result is None and [a for a, _r in failures] == ["127.0.0.9", "127.0.0.10"]
    assert all("refused" in r.lower() for _a, r in failures)


def test_module_constant() -> None:
    assert happy_eyeballs.CONNECTION_ATTEMPT_DELAY == 0.25  # RFC 8305 §8's recommendation
