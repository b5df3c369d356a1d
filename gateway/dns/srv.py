"""Which host and port to connect to for a peer domain, from its SRV records (pure).

RFC 6120 §3.2.1 has a server look up ``_xmpp-server._tcp.<domain>`` and connect in the order
RFC 2782 defines (priority ascending, weighted random within a priority); XEP-0368 adds
``_xmpps-server._tcp.<domain>`` for direct TLS and mixes both sets into one order. A single
record whose target is ``.`` says the service is decidedly not available (RFC 2782); without
any SRV record RFC 6120 §3.2.2 falls back to the domain's own A/AAAA records on port 5269.

Nothing here touches the network: the resolver (gateway.dns.resolver) fetches the records and
hands them in, so the ordering rules can be tested exactly with a seeded ``random.Random``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

_T = TypeVar("_T")

DEFAULT_PORT = 5269  # RFC 6120 §3.2.2: the "xmpp-server" port used by the fallback
XMPP_SERVER_SERVICE = "_xmpp-server._tcp"  # RFC 6120 §3.2.1: STARTTLS on a plain TCP port
XMPPS_SERVER_SERVICE = "_xmpps-server._tcp"  # XEP-0368: TLS from the first byte
NO_SERVICE_TARGET = "."  # RFC 2782: "the service is decidedly not available at this domain"


@dataclass(frozen=True, slots=True)
class SrvRecord:
    """One SRV resource record's data (RFC 2782), target as text (trailing dot optional)."""

    priority: int
    weight: int
    port: int
    target: str

    @property
    def is_no_service(self) -> bool:
        """True for the root target ``.`` (also accepted as the empty string)."""
        return self.target in (NO_SERVICE_TARGET, "")


@dataclass(frozen=True, slots=True)
class ConnectTarget:
    """A host name and port to try, in the order :func:`plan_targets` returns them."""

    host: str  # without the trailing dot
    port: int
    direct_tls: bool  # XEP-0368: TLS from the first byte, no STARTTLS
    source: str  # for logs and diagnostics: "SRV _xmpp-server._tcp.a.example" or "fallback ..."


class NoServiceError(LookupError):
    """The domain says it offers no XMPP server-to-server service (SRV target ``.``).

    Distinct from "no records": RFC 2782 makes ``.`` an explicit statement, so no fallback
    to A/AAAA records is tried (unlike RFC 6120 §3.2.2 for a domain without SRV records).
    """

    def __init__(self, domain: str) -> None:
        super().__init__(
            f"{domain} publishes no XMPP server service: SRV {XMPP_SERVER_SERVICE}.{domain} "
            f"has the target '.' (service decidedly not available, RFC 2782)"
        )
        self.domain = domain


def is_no_service(records: Iterable[SrvRecord]) -> bool:
    """True when the answer is exactly one record with target ``.`` (RFC 2782)."""
    records = list(records)
    return len(records) == 1 and records[0].is_no_service


def _weighted_order(records: list[_T], weight: Callable[[_T], int], rng: random.Random) -> list[_T]:
    """RFC 2782's selection algorithm for the records of one priority.

    The unordered records are arranged in any order (here: shuffled, so weight-0 records share
    the load among themselves) except that weight-0 records come first; a number is drawn
    uniformly from 0..sum(weights) inclusive and the first record whose running weight sum is
    >= that number is taken next. This gives a weight-0 record a small chance (1 in sum+1)
    when heavier records are present, and an equal chance when all weights are 0.
    """
    remaining = list(records)
    rng.shuffle(remaining)
    remaining.sort(key=lambda r: weight(r) != 0)  # stable: weight 0 first, shuffle kept
    ordered: list[_T] = []
    while remaining:  # one record leaves per round: bounded by len(records)
        pick = rng.randint(0, sum(weight(r) for r in remaining))
        running = 0
        for index, record in enumerate(remaining):
            running += weight(record)
            if running >= pick:
                ordered.append(remaining.pop(index))
                break
    return ordered


def order_srv(records: Iterable[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """All records in RFC 2782 order: priority ascending, weighted random within a priority.

    Every record is returned exactly once. ``rng`` makes the order reproducible in tests; the
    resolver passes a ``random.Random()`` seeded from the system.
    """
    records = list(records)
    ordered: list[SrvRecord] = []
    for priority in sorted({r.priority for r in records}):
        same = [r for r in records if r.priority == priority]
        ordered += _weighted_order(same, lambda r: r.weight, rng)
    return ordered


def plan_targets(
    domain: str,
    xmpps_records: Iterable[SrvRecord],
    xmpp_records: Iterable[SrvRecord],
    rng: random.Random,
    prefer_direct_tls: bool = True,
) -> list[ConnectTarget]:
    """The targets to try for ``domain``, best first.

    ``xmpps_records`` are the ``_xmpps-server._tcp`` answer (XEP-0368, direct TLS; pass ``[]``
    when direct TLS is off), ``xmpp_records`` the ``_xmpp-server._tcp`` answer (RFC 6120 §3.2.1,
    STARTTLS). An empty list means the name had no SRV records (NXDOMAIN or no data).

    - Both sets are merged by priority (XEP-0368 §3: "all priorities and weights are mixed").
      Within one priority, with ``prefer_direct_tls`` the direct-TLS records come first (each
      set in RFC 2782 weighted order; XEP-0368 lets a server prefer one connection type);
      without it both sets are ordered together by weight.
    - A ``.`` answer removes that service. ``_xmpp-server`` saying ``.`` with no usable
      ``_xmpps-server`` record raises :class:`NoServiceError` (no fallback). ``_xmpps-server``
      saying ``.`` only rules out direct TLS: the ``_xmpp-server`` records, or else the
      fallback, still apply. A domain that publishes direct TLS only (``.`` for
      ``_xmpp-server``) is reached over direct TLS.
    - No usable record in either set and no ``.`` for ``_xmpp-server``: RFC 6120 §3.2.2
      fallback, the domain itself on port 5269 with STARTTLS.
    """
    xmpps_records = list(xmpps_records)
    xmpp_records = list(xmpp_records)
    # "." only means something as the single answer; stray "." records among real ones
    # cannot be connected to, so they are dropped.
    direct = [r for r in xmpps_records if not r.is_no_service]
    starttls = [r for r in xmpp_records if not r.is_no_service]
    if not direct and not starttls:
        if xmpp_records:  # the _xmpp-server answer consisted of "." only
            raise NoServiceError(domain)
        return [
            ConnectTarget(
                domain, DEFAULT_PORT, False, f"fallback A/AAAA of {domain} (no SRV records)"
            )
        ]
    tagged = [(r, True) for r in direct] + [(r, False) for r in starttls]
    targets: list[ConnectTarget] = []
    for priority in sorted({r.priority for r, _ in tagged}):
        same = [t for t in tagged if t[0].priority == priority]
        if prefer_direct_tls:
            ordered = _weighted_order([t for t in same if t[1]], _tag_weight, rng)
            ordered += _weighted_order([t for t in same if not t[1]], _tag_weight, rng)
        else:
            ordered = _weighted_order(same, _tag_weight, rng)
        for record, is_direct in ordered:
            service = XMPPS_SERVER_SERVICE if is_direct else XMPP_SERVER_SERVICE
            targets.append(
                ConnectTarget(
                    host=record.target.rstrip("."),
                    port=record.port,
                    direct_tls=is_direct,
                    source=f"SRV {service}.{domain}",
                )
            )
    return targets


def _tag_weight(tagged: tuple[SrvRecord, bool]) -> int:
    return tagged[0].weight
