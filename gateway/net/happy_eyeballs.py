"""Happy Eyeballs (RFC 8305) for outbound S2S: race a target's addresses, IPv6 first.

The resolver gives a target's addresses IPv6 first (RFC 8305 §4); a blackholed IPv6
route would otherwise cost a whole connect timeout before IPv4 is tried. Attempts start
CONNECTION_ATTEMPT_DELAY apart (§5, 250 ms), alternating address families (§4), each
one also as soon as the one before it failed; the first TCP connection to be
established wins and the others are cancelled or closed. Only TCP is raced: the caller
then hands the winning transport to the stream's protocol (``transport.set_protocol``),
so the XMPP stream itself is opened exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

CONNECTION_ATTEMPT_DELAY = 0.25


def interleave(addresses: list[str]) -> list[str]:
    """RFC 8305 §4: alternate families, starting with the family of the first address."""
    v6 = [a for a in addresses if ipaddress.ip_address(a).version == 6]
    v4 = [a for a in addresses if ipaddress.ip_address(a).version == 4]
    first, second = (v6, v4) if addresses and addresses[0] in v6 else (v4, v6)
    out: list[str] = []
    for index in range(max(len(first), len(second))):
        out += first[index:index + 1] + second[index:index + 1]
    return out


class _Waiting(asyncio.Protocol):
    """Holds a raced connection until it is handed over (or closed as a loser); keeps
    anything the peer sends meanwhile (nothing, in XMPP: the initiator speaks first)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: Exception | None = None
        self.eof = False

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool | None:
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("closed before the stream started")


@dataclass
class RaceResult:
    address: str
    transport: asyncio.Transport
    failures: list[tuple[str, str]] = field(default_factory=list)  # (address, reason)

    def hand_over(self, protocol: asyncio.Protocol) -> None:
        """Give the connection to ``protocol`` (connection_made, then what arrived)."""
        waiting = cast(_Waiting, self.transport.get_protocol())
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        if waiting.data:
            cast(asyncio.Protocol, protocol).data_received(bytes(waiting.data))
        if waiting.lost is not None:
            protocol.connection_lost(waiting.lost)
        elif waiting.eof:
            protocol.eof_received()


async def race(addresses: list[str], port: int, timeout: float, *,
               delay: float = CONNECTION_ATTEMPT_DELAY,
               on_failure: Callable[[str, str], None] | None = None) -> RaceResult | None:
    """The first TCP connection established to one of ``addresses`` (None when all
    failed, each failure reported to ``on_failure`` and kept in the result's list)."""
    loop = asyncio.get_running_loop()
    order = interleave(addresses)
    failures: list[tuple[str, str]] = []
    attempts: dict[asyncio.Task[tuple[asyncio.BaseTransport, asyncio.BaseProtocol]], str] = {}
    winner: RaceResult | None = None
    next_index = 0

    def start_next() -> None:
        nonlocal next_index
        address = order[next_index]
        next_index += 1
        attempts[loop.create_task(asyncio.wait_for(
            loop.create_connection(_Waiting, address, port), timeout))] = address

    try:
        while winner is None and (next_index < len(order) or attempts):
            if not attempts and next_index < len(order):
                start_next()
            done, _ = await asyncio.wait(
                attempts, timeout=delay if next_index < len(order) else None,
                return_when=asyncio.FIRST_COMPLETED)
            if not done:  # the attempt delay passed: start the next one alongside
                start_next()
                continue
            for task in done:
                address = attempts.pop(task)
                try:
                    transport, _protocol = task.result()
                except (OSError, TimeoutError) as exc:
                    reason = "timed out" if isinstance(exc, TimeoutError) else \
                        (os.strerror(exc.errno) if exc.errno else str(exc))
                    failures.append((address, reason))
                    if on_failure is not None:
                        on_failure(address, reason)
                    if next_index < len(order):  # §5: a failure starts the next at once
                        start_next()
                    continue
                if winner is None:
                    winner = RaceResult(address, cast(asyncio.Transport, transport), failures)
                else:
                    transport.close()
    finally:
        for task in attempts:
            task.cancel()
        for task in attempts:
            with contextlib.suppress(BaseException):
                transport, _protocol = await task
                transport.close()
    return winner
