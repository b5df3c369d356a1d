"""The outbound connect loop: one, for the S2S sessions and for ``check connectivity``.

Targets are tried in DNS order (RFC 2782 / XEP-0368). For each: its TLSA records when
the partner policy asks for DANE (RFC 7673; a target DANE refuses is skipped), then its
addresses raced, IPv6 first (Happy Eyeballs, RFC 8305: :mod:`gateway.net.happy_eyeballs`),
and the stream negotiates over the winning connection. Connection-level failures move on
to the next address or target; policy failures do not — the peer answered with a
stream header and refused, and another of its targets would refuse the same way.

What happens around each attempt differs between a session (it carries traffic: the
queue flushes on success, verify requests ride on it, failures are logged) and the
probe (it narrates each step and closes its connection): the caller is a :class:`Dialer`,
and the loop's own steps (DNS answer, DANE, TCP connects) go to an optional ``on_step``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.config.model import PartnerPolicy
from gateway.dns import dane
from gateway.dns.resolver import DnsResolutionError, Resolver
from gateway.dns.srv import ConnectTarget
from gateway.logs import log_event
from gateway.net import happy_eyeballs
from gateway.net.connection import StreamConnection
from gateway.xmpp.outbound import OutboundStream

log = logging.getLogger("gateway.s2s")


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

    def settle(self, outcome: Outcome) -> None:
        if not self.outcome.done():
            self.outcome.set_result(outcome)


class Dialer(Protocol):
    """What the loop asks of its caller around each attempt."""

    def open(self, target: ConnectTarget, address: str,
             expectation: dane.DaneExpectation | None) -> Attempt:
        """A stream and its connection for ``address`` of ``target``, the TCP connection
        already won (it is handed over next)."""
        ...

    def unreachable(self, target: ConnectTarget, address: str, reason: str) -> None:
        """A TCP connect to ``address`` failed."""
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


async def connect(remote: str, partner: PartnerPolicy, resolver: Resolver,
                  connect_timeout: float, dialer: Dialer, *, on_step: Step = _quiet,
                  settle_timeout: float | None = None) -> Outcome:
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
    notes: list[str] = []
    for target in targets:
        expectation = await dane_for(resolver, remote, partner, target, notes, on_step)
        if expectation is False:
            continue  # DANE refuses this target (notes say why)
        try:
            addresses = await addresses_of(resolver, target.host)
        except Exception as exc:
            notes.append(f"{target.host}: {exc}")
            on_step(f"address of {target.host}: {exc}")
            continue
        remaining = list(addresses)
        while remaining:

            def failed(address: str, reason: str, target: ConnectTarget = target) -> None:
                notes.append(f"{target.host}[{address}]:{target.port}: {reason}")
                on_step(f"TCP connect {address}:{target.port}: {reason}")
                dialer.unreachable(target, address, reason)

            started = time.monotonic()
            # RFC 8305: the addresses raced, IPv6 first, 250 ms apart.
            race = await happy_eyeballs.race(remaining, target.port, connect_timeout,
                                             on_failure=failed)
            if race is None:
                break
            for address in [race.address, *(a for a, _reason in race.failures)]:
                remaining.remove(address)
            attempt = dialer.open(target, race.address, expectation)
            race.hand_over(attempt.conn)
            on_step(f"TCP connect {race.address}:{target.port}: ok in "
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


async def dane_for(resolver: Resolver, remote: str, partner: PartnerPolicy,
                   target: ConnectTarget, notes: list[str],
                   on_step: Step = _quiet) -> dane.DaneExpectation | Literal[False] | None:
    """The TLSA records ``target`` must match (RFC 7673), None without DANE, False
    when DANE refuses the target before connecting (why is added to ``notes``)."""
    if partner.dane is dane.DanePolicy.OFF:
        return None
    where = f"{target.host}:{target.port}"
    try:
        answer = await resolver.resolve_tlsa(remote, target)
    except Exception as exc:  # bogus (SERVFAIL from the validating resolver), timeout
        reason = f"DANE: TLSA lookup failed: {exc}"
    else:
        expectation = dane.DaneExpectation(partner.dane, answer)
        refused = dane.precheck(expectation)
        if refused is None:
            log_event(log, logging.DEBUG, "s2s.dane", peer=remote, target=where,
                      policy=str(partner.dane), tlsa=answer.name, secure=answer.secure,
                      records=len(answer.usable), note=answer.note)
            on_step(f"DANE {where}: {len(answer.usable)} usable TLSA record(s) at "
                    f"{answer.name}{' (DNSSEC)' if answer.secure else ''}")
            return expectation
        reason = refused.reason
    notes.append(f"{where}: {reason}")
    on_step(f"DANE {where}: {reason}")
    log_event(log, logging.WARNING, "s2s.dane_refused", peer=remote, direction="outbound",
              target=where, policy=str(partner.dane), reason=reason)
    return False


async def addresses_of(resolver: Resolver, host: str) -> list[str]:
    """``host`` itself when it is an IP address, else its addresses from DNS."""
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    return list(await resolver.resolve_addresses(host))
