"""An attacker's SIP client: raw requests from a chosen source address.

What someone who can reach the gateway's SIP port, but is not the proxy, can send: a
request written by hand (a forged ``From`` of one of our users), over UDP, TCP or TLS,
from a chosen loopback address. Used by tests/integration/test_sip_trust.py and the
Kamailio interop tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
from collections.abc import Callable

from gateway.sip.message import SipResponse, StreamDeframer, parse_message


def spoofed(method: str, transport: str, source: tuple[str, int], *, sender: str = "ceo",
            domain: str = "sip.example", victim: str = "sip:victim@xmpp.example",
            call_id: str = "", from_tag: str = "", to_tag: str = "",
            extra: str = "") -> bytes:
    """A request as an attacker writes it: From one of our users, to an XMPP contact."""
    body = b"I am the CEO, wire money" if method == "MESSAGE" else b""
    headers = [
        f"{method} {victim} SIP/2.0",
        f"Via: SIP/2.0/{transport.upper()} {source[0]}:{source[1]};"
        f"branch=z9hG4bK{secrets.token_hex(6)};rport",
        "Max-Forwards: 70",
        f"From: <sip:{sender}@{domain}>;tag={from_tag or secrets.token_hex(4)}",
        f"To: <{victim}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id or secrets.token_hex(8)}",
        f"CSeq: 1 {method}",
        f"Contact: <sip:{sender}@{source[0]}:{source[1]}>",
    ]
    if method == "MESSAGE":
        headers.append("Content-Type: text/plain")
    if method in ("SUBSCRIBE", "NOTIFY"):
        headers += ["Event: presence", "Expires: 600"]
    if method == "NOTIFY":
        headers.append("Subscription-State: active;expires=600")
    if extra:
        headers.append(extra)
    headers.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


async def udp_exchange(source: str, target: tuple[str, int], make: Callable[[int], bytes],
                       listen: float = 1.5) -> list[bytes]:
    """Send one datagram from ``source`` (``make(port)`` builds it) and collect every
    datagram that comes back within ``listen`` seconds (to see retransmissions too)."""
    loop = asyncio.get_running_loop()
    received: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            received.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Client, local_addr=(source, 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        transport.sendto(make(port), target)
        await asyncio.sleep(listen)
    finally:
        transport.close()
    return [received.get_nowait() for _ in range(received.qsize())]


async def stream_exchange(source: str, target: tuple[str, int], make: Callable[[int], bytes], *,
                          context: ssl.SSLContext | None = None, second: bool = True,
                          server_hostname: str = "localhost") -> tuple[list[bytes], bool]:
    """Connect from ``source``, send a request (and a second one after the answer), and
    return (messages received, whether the gateway closed the connection)."""
    reader, writer = await asyncio.open_connection(
        target[0], target[1], local_addr=(source, 0), ssl=context,
        server_hostname=server_hostname if context else None)
    port = writer.get_extra_info("sockname")[1]
    deframer = StreamDeframer()
    messages: list[bytes] = []
    closed = False
    try:
        writer.write(make(port))
        async with asyncio.timeout(5):
            while not messages:
                data = await reader.read(65536)
                if not data:
                    return messages, True
                messages += deframer.feed(data)
        if not second:
            return messages, False
        with contextlib.suppress(ConnectionError):
            writer.write(make(port))
            await writer.drain()
        async with asyncio.timeout(5):
            while True:
                data = await reader.read(65536)
                if not data:
                    closed = True
                    break
                messages += deframer.feed(data)
    except (ConnectionError, ssl.SSLError):
        closed = True
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return messages, closed


def status_of(data: bytes) -> int:
    response = parse_message(data, stream=True)
    assert isinstance(response, SipResponse), data[:80]
    return response.status
