"""The SIP UDP reader answers a batch of datagrams together, after handling it
(gateway/sip/transport.py ``_UdpEndpoint._readable``): nothing sent while the batch is
handled leaves before it ends, all of it leaves then, in order, and sends made outside
a batch go at once."""

from __future__ import annotations

import asyncio
import socket

from gateway.sip.transport import UDP_READ_INTERVAL, SipTransport


async def test_answers_to_a_batch_leave_after_it_in_order() -> None:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.setblocking(False)
    seen_while_reading: list[int] = []
    transport: SipTransport

    def on_message(data: bytes, flow: tuple, peer: tuple[str, int]) -> None:
        # nothing answered so far has left: the client's socket is still empty
        try:
            client.recv(100)
            seen_while_reading.append(1)
        except BlockingIOError:
            pass
        transport.send(flow, b"answer to " + data)

    transport = SipTransport("udp", ("127.0.0.1", 0), ("127.0.0.1", 9), on_message,
                             lambda flow: None)
    await transport.start()
    try:
        loop = asyncio.get_running_loop()
        for index in range(20):  # queued before the reader runs: one batch
            client.sendto(b"request %d" % index, transport.local)
        answers = [await asyncio.wait_for(loop.sock_recv(client, 100), 5) for _ in range(20)]
        assert answers == [b"answer to request %d" % index for index in range(20)]
        assert seen_while_reading == []
        # outside a batch a send leaves at once
        transport.send(("udp", client.getsockname()), b"unprompted")
        assert await asyncio.wait_for(loop.sock_recv(client, 100), 5) == b"unprompted"
    finally:
        await transport.close()
        client.close()


async def test_dense_arrivals_are_read_again_after_the_read_interval() -> None:
    """A batch of several datagrams pauses the reader for UDP_READ_INTERVAL (fewer
    wakeups); what arrives meanwhile is read when it resumes, a lone datagram later at
    once, and closing while paused leaves nothing behind."""
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.setblocking(False)
    transport = SipTransport("udp", ("127.0.0.1", 0), ("127.0.0.1", 9),
                             lambda data, flow, peer: transport.send(flow, b"re " + data),
                             lambda flow: None)
    await transport.start()
    loop = asyncio.get_running_loop()
    try:
        for burst in ([b"a", b"b", b"c"], [b"d", b"e"], [b"f"]):
            for data in burst:
                client.sendto(data, transport.local)
            for data in burst:
                assert await asyncio.wait_for(loop.sock_recv(client, 100), 5) == b"re " + data
        # responses complete our client transactions: a batch holding one is not
        # followed by a pause (the next request to that SIP user waits for it)
        await asyncio.sleep(UDP_READ_INTERVAL * 2)
        udp = transport._udp
        assert udp is not None and udp._resume is None
        responses = [b"SIP/2.0 200 OK 1", b"SIP/2.0 200 OK 2"]
        for data in responses:
            client.sendto(data, transport.local)
        for data in responses:
            assert await asyncio.wait_for(loop.sock_recv(client, 100), 5) == b"re " + data
        assert udp._resume is None
        client.sendto(b"g", transport.local)
        client.sendto(b"h", transport.local)
        assert await asyncio.wait_for(loop.sock_recv(client, 100), 5) == b"re g"
    finally:
        await transport.close()  # possibly while the reader is paused
        client.close()
    await asyncio.sleep(UDP_READ_INTERVAL * 2)  # a resume left behind would fail here
