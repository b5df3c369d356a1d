"""The outbound connect loop: one, for the S2S sessions and for ``check connectivity``.

Targets are tried in DNS order (RFC 2782 / XEP-0368), each address of each target in
turn: TCP connect (bounded by ``limits.connect_timeout``), then the stream negotiates.
Connection-level failures move on to the next address; policy failures do not — the
peer answered with a stream header and refused, and another of its targets would refuse
the same way.

What happens around each attempt differs between a session (it carries traffic: the
queue flushes on success, verify requests ride on it, failures are logged) and the
probe (it narrates each step and closes its connection): the caller is a :class:`Dialer`,
and the loop's own steps (DNS answer, TCP connects) go to an optional ``on_step``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.dns.resolver import DnsResolutionError, Resolver
from gateway.dns.srv import ConnectTarget
from gateway.net.connection import StreamConnection
from gateway.xmpp.outbound import OutboundStream


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt (or the whole loop) ended."""

    ok: bool
    condition: str = ""  # RFC 6120 §8.3.3 condition for the senders of queued stanzas
    reason: str = ""
    retry: bool = False  # nothing was heard from the peer: its next target may do better
    method: str = ""  # how the pair authenticated, when ok
    dns_failed: bool = False  # the peer's targets could not be looked up
    unreachable: bool = False  # no stream negotiated: DNS failed or no target answered


@dataclass(eq=False, slots=True)
class Attempt:
    """One connection being tried, and the outcome its stream's events settle."""

    target: ConnectTarget
    address: str
    stream: OutboundStream
    conn: StreamConnection
    outcome: asyncio.Future[Outcome]

    @property
    def where(self) -> str:
        return f"{self.target.host}[{self.address}]:{self.target.port}"

    def protocol(self) -> StreamConnection:
        """The protocol factory for ``create_connection``: this attempt's connection."""
        return self.conn

    def settle(self, outcome: Outcome) -> None:
        if not self.outcome.done():
            self.outcome.set_result(outcome)


class Dialer(Protocol):
    """What the loop asks of its caller around each attempt."""

    def open(self, target: ConnectTarget, address: str) -> Attempt:
        """A new connection for ``address`` of ``target`` (not connected yet)."""
        ...

    def unreachable(self, attempt: Attempt, reason: str) -> None:
        """Its TCP connect failed: forget the connection."""
        ...

    def connected(self, attempt: Attempt) -> None:
        """TCP is up; the stream negotiates now."""
        ...

    def ended(self, attempt: Attempt, outcome: Outcome) -> None:
        """The negotiation ended (authenticated or not)."""
        ...


Step = Callable[[str], None]


def _quiet(text: str) -> None:
    pass


async def connect(remote: str, resolver: Resolver, connect_timeout: float, dialer: Dialer,
                  *, on_step: Step = _quiet, settle_timeout: float | None = None) -> Outcome:
    """Try ``remote``'s targets until one authenticates (see the module docstring);
    ``settle_timeout`` bounds each negotiation (None: the stream's own timers do)."""
    try:
        targets = await resolver.resolve_targets(remote)
    except Exception as exc:  # DnsResolutionError and anything the resolver raises
        timeout = isinstance(exc, DnsResolutionError) and exc.kind == "timeout"
        return Outcome(False, "remote-server-timeout" if timeout else "remote-server-not-found",
                       f"DNS: {exc}", dns_failed=True, unreachable=True)
    on_step("DNS: " + ", ".join(
        f"{t.host}:{t.port}{' (direct TLS)' if t.direct_tls else ''} [{t.source}]"
        for t in targets))
    loop = asyncio.get_running_loop()
    notes: list[str] = []
    for target in targets:
        try:
            addresses = await addresses_of(resolver, target.host)
        except Exception as exc:
            notes.append(f"{target.host}: {exc}")
            on_step(f"address of {target.host}: {exc}")
            continue
        for address in addresses:
            attempt = dialer.open(target, address)
            started = time.monotonic()
            try:
                await asyncio.wait_for(
                    loop.create_connection(attempt.protocol, address, target.port),
                    connect_timeout)
            except (OSError, TimeoutError) as exc:
                reason = "timed out" if isinstance(exc, TimeoutError) else \
                    (exc.strerror or str(exc))
                notes.append(f"{attempt.where}: {reason}")
                on_step(f"TCP connect {address}:{target.port}: {reason}")
                dialer.unreachable(attempt, reason)
                continue
            on_step(f"TCP connect {address}:{target.port}: ok in "
                    f"{1000 * (time.monotonic() - started):.0f} ms")
            dialer.connected(attempt)
            try:
                outcome = await asyncio.wait_for(asyncio.shield(attempt.outcome),
                                                 settle_timeout)
            except TimeoutError:
                outcome = Outcome(False, "remote-server-timeout",
                                  f"no result within {settle_timeout:g}s",
                                  retry=not attempt.stream.peer_header_received)
            dialer.ended(attempt, outcome)
            if outcome.ok:
                return outcome
            notes.append(f"{attempt.where}: {outcome.reason}")
            if not outcome.retry:
                return outcome
    return Outcome(False, "remote-server-not-found",
                   "no target could be reached: " + "; ".join(notes) if notes
                   else f"no targets for {remote}", unreachable=True)


async def addresses_of(resolver: Resolver, host: str) -> list[str]:
    """``host`` itself when it is an IP address, else its addresses from DNS."""
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    return list(await resolver.resolve_addresses(host))
