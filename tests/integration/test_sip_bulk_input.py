"""SIP in bulk over real sockets: malformed messages each answered or dropped *and
counted*, the log kept to its per-second budget, nothing escaping into asyncio (which would
print each traceback on stderr: 821 KiB for 1,000 datagrams of 300 bytes before the
parser was made total); overload answered 503 from each request's head, and the kernel's
drops at the socket logged as they happen.

Addresses as in test_sip_trust.py: 127.0.0.9 the gateway, 127.0.0.10 the proxy,
127.0.0.11 an outsider.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest

from gateway.metrics import Metrics
from gateway.sip.transport import MALFORMED_LOG_PER_SECOND, UDP_FULL_WHEN_BACKLOGGED
from tests.integration.test_sip_hostile_input import sip_request, status_of
from tests.integration.test_sip_trust import (
    ATTACKER,
    PROXY,
    SIP_DOMAIN,
    sip_backend,
    untrusted_count,
)


def malformed_count(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("xmpp_gateway_sip_malformed_total",
                                             {"reason": reason}) or 0.0


class Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answers: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.answers.append(data)


async def _flood(source: str, target: tuple[str, int], count: int, **spoil) -> Collector:
    """``count`` spoiled MESSAGEs from ``source`` in bursts of 50, each answered before
    the next is sent."""
    loop = asyncio.get_running_loop()
    transport, collector = await loop.create_datagram_endpoint(Collector,
                                                               local_addr=(source, 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        async with asyncio.timeout(20):
            for burst in range(0, count, 50):
                for _ in range(min(50, count - burst)):
                    transport.sendto(sip_request((source, port), "udp", **spoil), target)
                # each burst's answers read before the next: this socket's receive buffer
                # (not the gateway's) must not be what overflows on a loaded machine
                while len(collector.answers) < min(burst + 50, count):
                    await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)  # and nothing more than one answer each
    finally:
        transport.close()
    return collector


def _escaped_to_asyncio(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "asyncio"]


async def test_bad_numbers_in_bulk_are_answered_and_counted_not_logged_line_by_line(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with sip_backend() as (backend, recorder, metrics):
        proxy = await _flood(PROXY, backend.transport.local, 500, cseq="\u00b2 MESSAGE")
        outsider = await _flood(ATTACKER, backend.transport.local, 500,
                                content_length="\u00b2")
        assert [status_of(a) for a in proxy.answers] == [400] * 500
        assert all(b"400 Bad CSeq\r\n" in a for a in proxy.answers)
        assert [status_of(a) for a in outsider.answers] == [403] * 500
        assert malformed_count(metrics, "syntax") == 500
        assert untrusted_count(metrics, "source") == 500
        assert recorder.queue.empty()
    assert _escaped_to_asyncio(caplog) == []
    malformed = [r for r in caplog.records if r.getMessage() == "sip.malformed"]
    assert 1 <= len(malformed) <= 2 * MALFORMED_LOG_PER_SECOND
    assert malformed[0].levelno == logging.WARNING
    assert malformed[0].gw_fields["action"] == "400 Bad CSeq"  # type: ignore[attr-defined]
    assert malformed[0].gw_fields["peer"].startswith(PROXY)  # type: ignore[attr-defined]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_an_unexpected_error_is_caught_at_the_transport_logged_within_budget_and_counted(
        transport: str, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug anywhere behind the transport (here: the message handler itself raises) never
    reaches asyncio: each datagram is dropped and counted (a connection closed), the
    traceback logged within the budget, and the next message is handled normally."""
    caplog.set_level(logging.INFO)
    async with sip_backend(transport) as (backend, recorder, metrics):
        endpoint = backend.endpoint
        handle = endpoint.transport.on_message

        def broken(data: bytes, flow, peer) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(endpoint.transport, "on_message", broken)
        count = 200 if transport == "udp" else 3
        for _ in range(count):
            if transport == "udp":
                loop = asyncio.get_running_loop()
                sender, _ = await loop.create_datagram_endpoint(
                    asyncio.DatagramProtocol, local_addr=(PROXY, 0))
                sender.sendto(sip_request(sender.get_extra_info("sockname")[:2], "udp"),
                              backend.transport.local)
                sender.close()
            else:
                reader, writer = await asyncio.open_connection(
                    *backend.transport.local, local_addr=(PROXY, 0))
                writer.write(sip_request(writer.get_extra_info("sockname")[:2], "tcp"))
                async with asyncio.timeout(5):
                    assert await reader.read(100) == b""  # closed: its state is unknown
                writer.close()
        async with asyncio.timeout(10):
            while malformed_count(metrics, "unexpected") < count:
                await asyncio.sleep(0.02)
        monkeypatch.setattr(endpoint.transport, "on_message", handle)
        if transport == "udp":
            sender, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=(PROXY, 0))
            sender.sendto(sip_request(sender.get_extra_info("sockname")[:2], "udp",
                                      uri="sip:bob@xmpp.example", domain=SIP_DOMAIN),
                          backend.transport.local)
            stanza = await recorder.next()
            sender.close()
        else:
            _, writer = await asyncio.open_connection(*backend.transport.local,
                                                      local_addr=(PROXY, 0))
            writer.write(sip_request(writer.get_extra_info("sockname")[:2], "tcp",
                                     uri="sip:bob@xmpp.example", domain=SIP_DOMAIN))
            stanza = await recorder.next()
            writer.close()
        assert stanza.findtext("{jabber:server}body") == "hello"
        assert backend.transport.unexpected_errors == count
    assert _escaped_to_asyncio(caplog) == []
    lines = [r for r in caplog.records if r.getMessage() == "sip.unexpected_error"]
    assert 1 <= len(lines) <= 2 * MALFORMED_LOG_PER_SECOND
    assert lines[0].exc_info is not None and "a bug" in str(lines[0].exc_info[1])


async def test_kernel_drops_at_the_sip_socket_are_warned_at_once_then_within_budget(
        caplog: pytest.LogCaptureFixture) -> None:
    """A burst the gateway cannot read in time (here: its event loop is held while 1,000
    datagrams arrive at a 64 KiB buffer) is dropped by the kernel: the next once-a-second
    sample logs a WARNING with the count, the next within the interval does not, and
    ``describe`` (status, metrics) shows the total."""
    caplog.set_level(logging.INFO)
    async with sip_backend() as (backend, _recorder, _metrics):
        transport = backend.transport
        transport.udp_receive_buffer = 64 * 1024
        transport._raise_receive_buffer(transport._udp.sock)  # type: ignore[union-attr]
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind((PROXY, 0))
        data = sip_request(sender.getsockname(), "udp", uri="sip:bob@xmpp.example",
                           domain=SIP_DOMAIN)
        for _ in range(1000):  # nothing reads meanwhile: this coroutine holds the loop
            sender.sendto(data, transport.local)
        sender.close()
        drops = transport.udp_drops()
        assert drops is not None and drops > 0
        now = time.monotonic()
        transport.sample_drops(now)
        transport.sample_drops(now + 1)  # within the interval: not again
        [line] = [r for r in caplog.records if r.getMessage() == "sip.udp_dropped"]
        assert line.levelno == logging.WARNING
        assert line.gw_fields["dropped"] == drops  # type: ignore[attr-defined]
        assert backend.describe()["udp_drops"] == drops
    await asyncio.sleep(0)


async def test_overload_is_answered_503_from_the_head_without_state_but_not_retransmissions(
        ) -> None:
    """While the XMPP side is congested, 500 new MESSAGEs are each answered 503 +
    Retry-After from their head (only the answer kept, for Timer J), a retransmission of
    one gets the same 503 after the congestion ended (taken up now, it would arrive twice:
    the sender, told 503, sends it again), and a retransmission of a request accepted
    before the congestion gets its 202 again."""
    async with sip_backend() as (backend, router, _metrics):
        loop = asyncio.get_running_loop()
        sender, collector = await loop.create_datagram_endpoint(Collector,
                                                                local_addr=(PROXY, 0))
        source = sender.get_extra_info("sockname")[:2]
        target = backend.transport.local
        accepted = sip_request(source, "udp", uri="sip:bob@xmpp.example", domain=SIP_DOMAIN)
        backend.input_paused(False)  # not congested yet: the first one is accepted
        sender.sendto(accepted, target)
        async with asyncio.timeout(5):
            while not collector.answers:
                await asyncio.sleep(0.01)
        router.congested = True
        backend.input_paused(True)  # the router's word: congested
        shed = []
        for burst in range(10):
            for _ in range(50):
                shed.append(sip_request(source, "udp", uri="sip:bob@xmpp.example",
                                        domain=SIP_DOMAIN))
                sender.sendto(shed[-1], target)
            async with asyncio.timeout(5):
                while len(collector.answers) < 1 + 50 * (burst + 1):
                    await asyncio.sleep(0.005)
        router.congested = False
        backend.input_paused(False)  # the congestion is over
        sender.sendto(accepted, target)  # a retransmission of the accepted one
        sender.sendto(shed[0], target)  # and of one answered 503
        async with asyncio.timeout(5):
            while len(collector.answers) < 503:
                await asyncio.sleep(0.005)
        sender.close()
        statuses = [status_of(a) for a in collector.answers]
        assert statuses == [202] + [503] * 500 + [202, 503]
        assert all(b"\r\nRetry-After: 1\r\n" in a for a in collector.answers[1:501])
        assert collector.answers[502] == collector.answers[1]  # the same answer again
        assert backend.endpoint.shed_answers == 500 == backend.busy_answers
        assert len(backend.layer.servers) == 501 and all(
            backend.layer.answered(key) for key in backend.layer.servers)


async def test_a_flood_that_fills_the_buffer_is_answered_from_the_head() -> None:
    """3,000 MESSAGEs arrive while the gateway is busy (its loop held) and overflow its
    receive buffer: once it reads again and sees the kernel's drops, every datagram it
    reads is answered, the first of each batch in full (202) and the rest 503 +
    Retry-After from the head until the queue is back under half, and the drops are
    counted."""
    async with sip_backend() as (backend, recorder, _metrics):
        transport = backend.transport
        transport.udp_receive_buffer = 1024 * 1024
        transport._raise_receive_buffer(transport._udp.sock)  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        sender, collector = await loop.create_datagram_endpoint(Collector,
                                                                local_addr=(PROXY, 0))
        sender.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                                   8 << 20)
        source = sender.get_extra_info("sockname")[:2]
        for _ in range(3000):  # nothing reads meanwhile: this coroutine holds the loop
            sender.sendto(sip_request(source, "udp", uri="sip:bob@xmpp.example",
                                      domain=SIP_DOMAIN), transport.local)
        dropped = transport.udp_drops() or 0
        async with asyncio.timeout(10):
            while len(collector.answers) < 3000 - dropped:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        sender.close()
        statuses = [status_of(a) for a in collector.answers]
        assert dropped > 0 and len(statuses) == 3000 - dropped  # every one read: answered
        assert statuses[:UDP_FULL_WHEN_BACKLOGGED] == [202] * UDP_FULL_WHEN_BACKLOGGED
        assert statuses.count(503) == backend.endpoint.shed_answers > 0
        assert recorder.queue.qsize() == statuses.count(202)


async def test_a_burst_that_fits_the_buffer_is_worked_off_not_answered_503() -> None:
    """A burst fills the gateway's receive buffer to over 85 % while it is busy, but the
    kernel drops nothing (5,000 watchers subscribing at once through the proxy look like
    this): every request is handled in full and answered 202 — a 503 would reach a phone
    behind the proxy as a failure, where the delay costs nothing."""
    async with sip_backend() as (backend, recorder, _metrics):
        transport = backend.transport
        transport.udp_receive_buffer = 1024 * 1024
        transport._raise_receive_buffer(transport._udp.sock)  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        sender, collector = await loop.create_datagram_endpoint(Collector,
                                                                local_addr=(PROXY, 0))
        sender.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                                   8 << 20)
        source = sender.get_extra_info("sockname")[:2]
        sent = 0
        while True:  # nothing reads meanwhile: this coroutine holds the loop
            memory = transport._udp.meminfo()  # type: ignore[union-attr]
            assert memory is not None and memory[8] == 0  # no drop
            if memory[0] > 0.85 * memory[1]:
                break
            sender.sendto(sip_request(source, "udp", uri="sip:bob@xmpp.example",
                                      domain=SIP_DOMAIN), transport.local)
            sent += 1
        async with asyncio.timeout(15):
            while len(collector.answers) < sent:
                await asyncio.sleep(0.01)
        sender.close()
        assert sent > 256 and [status_of(a) for a in collector.answers] == [202] * sent
        assert backend.endpoint.shed_answers == 0 and recorder.queue.qsize() == sent
