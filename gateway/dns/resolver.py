"""Asynchronous peer lookup with dnspython (RFC 6120 §3.2, XEP-0368).

The nameserver is configurable ("host" or "host:port") so tests and operators can point
the gateway at their own DNS server; empty means /etc/resolv.conf.
"""

from __future__ import annotations

import random
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from gateway.config.model import DnsSettings
from gateway.dns.srv import ConnectTarget, SrvRecord, plan_targets


class DnsResolutionError(Exception):
    """``kind``: nxdomain | no-service | servfail | timeout | no-address."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Resolver(Protocol):
    async def resolve_targets(self, domain: str) -> list[ConnectTarget]: ...

    async def resolve_addresses(self, host: str) -> list[str]: ...


def _nameserver(spec: str) -> tuple[str, int]:
    host, sep, port = spec.rpartition(":")
    if sep and host and not host.endswith("]") and ":" in host:  # bare IPv6 address
        return spec, 53
    if sep and host:
        return host.strip("[]"), int(port)
    return spec, 53


class DnsPythonResolver:
    def __init__(
        self,
        nameservers: tuple[str, ...] = (),
        timeout: float = 5.0,
        direct_tls: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        if nameservers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            parsed = [_nameserver(n) for n in nameservers]
            self._resolver.nameservers = [h for h, _ in parsed]
            self._resolver.port = parsed[0][1]
        else:
            self._resolver = dns.asyncresolver.Resolver()
        self._resolver.lifetime = timeout
        self._resolver.timeout = timeout
        self.direct_tls = direct_tls
        self.rng = rng or random.Random()

    @classmethod
    def from_settings(cls, settings: DnsSettings) -> DnsPythonResolver:
        return cls(settings.nameservers, settings.timeout, settings.direct_tls)

    async def _srv(self, name: str) -> list[SrvRecord]:
        try:
            answer = await self._resolver.resolve(name, "SRV")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.resolver.LifetimeTimeout as exc:
            raise DnsResolutionError("timeout", f"SRV {name}: no answer in time") from exc
        except dns.resolver.NoNameservers as exc:
            raise DnsResolutionError("servfail", f"SRV {name}: server failure") from exc
        return [SrvRecord(r.priority, r.weight, r.port, r.target.to_text()) for r in answer]

    async def resolve_targets(self, domain: str) -> list[ConnectTarget]:
        xmpps = await self._srv(f"_xmpps-server._tcp.{domain}.") if self.direct_tls else []
        xmpp = await self._srv(f"_xmpp-server._tcp.{domain}.")
        try:
            return plan_targets(domain, xmpps, xmpp, self.rng, prefer_direct_tls=self.direct_tls)
        except LookupError as exc:
            raise DnsResolutionError("no-service", str(exc)) from None

    async def resolve_addresses(self, host: str) -> list[str]:
        addresses: list[str] = []
        nxdomain = False
        for rdtype in ("AAAA", "A"):
            try:
                answer = await self._resolver.resolve(f"{host}.", rdtype)
                addresses.extend(r.to_text() for r in answer)
            except dns.resolver.NXDOMAIN:
                nxdomain = True
            except dns.resolver.NoAnswer:
                continue
            except dns.resolver.LifetimeTimeout as exc:
                raise DnsResolutionError("timeout", f"{rdtype} {host}: no answer in time") from exc
            except dns.resolver.NoNameservers as exc:
                raise DnsResolutionError("servfail", f"{rdtype} {host}: server failure") from exc
        if not addresses:
            kind = "nxdomain" if nxdomain else "no-address"
            raise DnsResolutionError(
                kind, f"{host} has no A/AAAA records" + (" (NXDOMAIN)" if nxdomain else "")
            )
        return addresses
