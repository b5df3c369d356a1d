"""SRV target selection (RFC 2782, RFC 6120 §3.2, XEP-0368) as pure functions."""

from __future__ import annotations

import random
from dataclasses import dataclass

DEFAULT_PORT = 5269  # RFC 6120 §3.2.2 fallback


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True)
class ConnectTarget:
    host: str
    port: int
    direct_tls: bool  # XEP-0368: TLS from the first byte
    source: str  # where it came from, for logs and `check dns`


def order_srv(records: list[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """RFC 2782: ascending priority; within a priority, weighted random order where
    weight-0 records get a small chance (they are placed first before the running sum)."""
    ordered: list[SrvRecord] = []
    for priority in sorted({r.priority for r in records}):
        group = sorted((r for r in records if r.priority == priority), key=lambda r: r.weight)
        while group:
            total = sum(r.weight for r in group)
            pick = rng.randint(0, total) if total else 0
            running = 0
            for index, record in enumerate(group):
                running += record.weight
                if running >= pick:
                    ordered.append(group.pop(index))
                    break
    return ordered


def is_no_service(records: list[SrvRecord]) -> bool:
    """A single record with target "." means the service is decidedly not available."""
    return len(records) == 1 and records[0].target in (".", "")


def plan_targets(
    domain: str,
    xmpps: list[SrvRecord],
    xmpp: list[SrvRecord],
    rng: random.Random,
    *,
    prefer_direct_tls: bool = True,
) -> list[ConnectTarget]:
    """Targets to try in order. Raises LookupError when the domain says "no service"."""
    xmpps = [] if is_no_service(xmpps) else xmpps
    if is_no_service(xmpp) and not xmpps:
        raise LookupError(f"{domain} publishes no XMPP server service (SRV target '.')")
    xmpp = [] if is_no_service(xmpp) else xmpp
    if not xmpps and not xmpp:
        return [ConnectTarget(domain, DEFAULT_PORT, False, "fallback A/AAAA (no SRV records)")]
    tagged = [(r, True) for r in xmpps] + [(r, False) for r in xmpp]
    by_priority: dict[int, list[tuple[SrvRecord, bool]]] = {}
    for record, direct in tagged:
        by_priority.setdefault(record.priority, []).append((record, direct))
    targets: list[ConnectTarget] = []
    for priority in sorted(by_priority):
        group = by_priority[priority]
        ordered = order_srv([r for r, _ in group], rng)
        direct_of = {id(r): d for r, d in group}
        # XEP-0368 §3: on equal priority prefer direct TLS when enabled (stable sort).
        ordered.sort(key=lambda r: 0 if (direct_of[id(r)] and prefer_direct_tls) else 1)
        for record in ordered:
            direct = direct_of[id(record)]
            service = "_xmpps-server._tcp" if direct else "_xmpp-server._tcp"
            targets.append(
                ConnectTarget(
                    record.target.rstrip("."), record.port, direct, f"SRV {service}.{domain}"
                )
            )
    return targets
