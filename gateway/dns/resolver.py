"""Peer lookup over DNS with dnspython's asyncio resolver (RFC 6120 §3.2, XEP-0368).

The ordering rules live in gateway.dns.srv (pure); this module only asks the DNS and turns
its failures into one precise :class:`DnsResolutionError` each, so a refusal in the log says
which query failed and how ("no SRV and no A record" rather than a bare
remote-server-not-found). The nameservers are configurable ("host" or "host:port") so
operators and tests can point the gateway at their own DNS server; none means the system
configuration (/etc/resolv.conf).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from collections.abc import Awaitable
from typing import Literal, Protocol, TypeVar

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.resolver

from gateway.config.model import DnsSettings
from gateway.config.values import parse_nameserver
from gateway.dns.dane import TlsaAnswer, TlsaRecord, tlsa_name
from gateway.dns.srv import (
    XMPP_SERVER_SERVICE,
    XMPPS_SERVER_SERVICE,
    ConnectTarget,
    NoServiceError,
    SrvRecord,
    plan_targets,
)
from gateway.logs import log_event

log = logging.getLogger(__name__)
_T = TypeVar("_T")

FailureKind = Literal["nxdomain", "no-service", "servfail", "timeout", "no-address"]
DEFAULT_CACHE_SIZE = 512  # names; dnspython's LRU cache honours each answer's TTL
PER_TRY_TIMEOUT = 2.0  # dnspython's own default: retry a silent server within the lifetime


class DnsResolutionError(Exception):
    """A lookup that gave no usable answer.

    ``kind`` is one of:

    - ``nxdomain``: the name does not exist (for address lookups; SRV names that do not exist
      just mean "no SRV records" and lead to the RFC 6120 §3.2.2 fallback);
    - ``no-service``: the domain's ``_xmpp-server._tcp`` SRV target is ``.`` (RFC 2782);
    - ``servfail``: the nameserver failed (SERVFAIL, REFUSED or another error rcode, or a
      malformed answer);
    - ``timeout``: no answer within the configured ``dns.timeout``;
    - ``no-address``: the name exists but has neither A nor AAAA records.

    The message names the query (type and name) and, where known, the nameserver.
    """

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind: FailureKind = kind


class Resolver(Protocol):
    """What the S2S engine needs from DNS; :class:`DnsPythonResolver` is the implementation."""

    async def resolve_targets(self, domain: str) -> list[ConnectTarget]:
        """Hosts and ports to try for ``domain``, best first (see gateway.dns.srv)."""
        ...

    async def resolve_addresses(self, host: str) -> list[str]:
        """IPv6 and IPv4 addresses of ``host`` as text, IPv6 first."""
        ...

    async def resolve_tlsa(self, domain: str, target: ConnectTarget) -> TlsaAnswer:
        """The TLSA records of ``target`` (found for ``domain``) with whether DNSSEC
        vouches for them (RFC 7673 §3); raises DnsResolutionError when the validating
        resolver fails the query (bogus data: the target must not be used)."""
        ...


class DnsPythonResolver:
    """:class:`Resolver` on ``dns.asyncresolver``.

    ``timeout`` bounds each public call: the SRV queries run concurrently and the A and AAAA
    queries run concurrently, each with ``timeout`` as its dnspython lifetime. Answers are
    cached (bounded LRU, each kept no longer than its TTL) unless ``cache_size`` is 0.
    """

    def __init__(
        self,
        nameservers: tuple[str, ...] = (),
        timeout: float = 5.0,
        direct_tls: bool = True,
        rng: random.Random | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        dnssec: bool = False,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"dns timeout must be positive, not {timeout}")
        # dnspython names a server "Do53:ADDRESS@PORT" in its errors; we say it as configured.
        self._server_names: dict[str, str] = {}
        if nameservers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            servers = {
                spec: dns.nameserver.Do53Nameserver(*parse_nameserver(spec)) for spec in nameservers
            }
            self._resolver.nameservers = list(servers.values())
            self._server_names = {str(server): spec for spec, server in servers.items()}
            self.nameserver_text = ", ".join(nameservers)
        else:
            try:
                self._resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration as exc:
                raise ValueError(
                    "no nameserver in /etc/resolv.conf; set dns.nameservers in the configuration"
                ) from exc
            self.nameserver_text = "system resolver (/etc/resolv.conf)"
        self._resolver.lifetime = timeout
        self._resolver.timeout = min(PER_TRY_TIMEOUT, timeout)
        self._resolver.cache = dns.resolver.LRUCache(cache_size) if cache_size > 0 else None
        # DANE: ask for DNSSEC (DO, RFC 3225; AD, RFC 6840 §5.7) and believe the AD bit of
        # the configured nameservers, which must be a validating resolver on a trusted
        # path (dns.dnssec; docs/dns.md).
        self.dnssec = dnssec
        if dnssec:
            self._resolver.use_edns(0, dns.flags.DO, 1232)
            self._resolver.flags = dns.flags.RD | dns.flags.AD
        self.timeout = timeout
        self.direct_tls = direct_tls
        self.rng = rng if rng is not None else random.Random()

    @classmethod
    def from_settings(cls, settings: DnsSettings) -> DnsPythonResolver:
        return cls(settings.nameservers, settings.timeout, settings.direct_tls,
                   dnssec=settings.dnssec)

    async def resolve_targets(self, domain: str) -> list[ConnectTarget]:
        """SRV lookup per RFC 6120 §3.2.1 and XEP-0368, ordered by gateway.dns.srv.

        Both SRV names are asked at the same time. If only the ``_xmpps-server`` query fails
        and ``_xmpp-server`` has records, those are used (logged); if ``_xmpp-server`` has
        none, the failure is raised, since we cannot tell direct-TLS targets from "no SRV".
        """
        name = _absolute(domain, "SRV", domain)
        xmpp_query = _or_error(self._srv(f"{XMPP_SERVER_SERVICE}.{name}"))
        if self.direct_tls:
            xmpps, xmpp = await asyncio.gather(
                _or_error(self._srv(f"{XMPPS_SERVER_SERVICE}.{name}")), xmpp_query
            )
        else:
            xmpps, xmpp = [], await xmpp_query
        if isinstance(xmpp, DnsResolutionError):
            raise xmpp
        if isinstance(xmpps, DnsResolutionError):
            if not xmpp:
                raise xmpps
            log_event(
                log,
                logging.WARNING,
                "dns.srv_failed",
                peer=domain,
                reason=str(xmpps),
                action=f"using {XMPP_SERVER_SERVICE} records only",
            )
            xmpps = []
        try:
            return plan_targets(
                domain.rstrip("."), xmpps, xmpp, self.rng, prefer_direct_tls=self.direct_tls
            )
        except NoServiceError as exc:
            raise DnsResolutionError("no-service", str(exc)) from None

    async def resolve_addresses(self, host: str) -> list[str]:
        """AAAA then A addresses of ``host`` (both asked at once).

        IPv6 comes first as RFC 8305 recommends; the caller tries the addresses in turn and an
        unreachable IPv6 address fails fast. Happy Eyeballs racing is not done. An IP literal
        is returned as it is.
        """
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            pass
        name = _absolute(host, "A/AAAA", host)
        v6, v4 = await asyncio.gather(
            _or_error(self._addresses(name, "AAAA")), _or_error(self._addresses(name, "A"))
        )
        found = [address for result in (v6, v4) if isinstance(result, list) for address in result]
        if found:
            for result in (v6, v4):  # e.g. a server that drops AAAA queries
                if isinstance(result, DnsResolutionError):
                    log_event(
                        log, logging.INFO, "dns.partial_answer", host=host, reason=str(result)
                    )
            return found
        errors = [r for r in (v6, v4) if isinstance(r, DnsResolutionError)]
        for kind in ("nxdomain", "timeout", "servfail"):
            for error in errors:
                if error.kind == kind:
                    raise error
        raise DnsResolutionError(
            "no-address", f"A/AAAA {name}: the name exists but has no A or AAAA record"
        )

    async def resolve_tlsa(self, domain: str, target: ConnectTarget) -> TlsaAnswer:
        """TLSA at ``_port._tcp.target`` (RFC 7673 §3.2), secure only when the answer
        that named the target (the SRV RRset, or the domain's own address records for the
        RFC 6120 §3.2.2 fallback) and the TLSA answer both carry the AD bit."""
        name = tlsa_name(target.host, target.port)
        if not self.dnssec:
            return TlsaAnswer(name, (), False, "dns.dnssec is off: DNSSEC validation "
                                               "is not asked of the resolver")
        if target.source.startswith("SRV "):
            named_by, rdtype = target.source.split()[1], "SRV"
        else:
            named_by, rdtype = target.host, "A"
        if not await self._secure(named_by, rdtype):
            return TlsaAnswer(name, (), False, f"the {rdtype} answer for {named_by} is not "
                                               "DNSSEC-validated")
        absolute = _absolute(name, "TLSA", name)
        try:
            answer = await self._resolver.resolve(absolute, "TLSA", search=False,
                                                  raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            secure = any(_authenticated(r) for r in exc.responses().values())
            return TlsaAnswer(name, (), secure, "no TLSA records (NXDOMAIN)")
        except dns.exception.DNSException as exc:
            raise self._failure("TLSA", absolute, exc) from exc
        secure = _authenticated(answer.response)
        records = tuple(TlsaRecord(r.usage, r.selector, r.mtype, bytes(r.cert))
                        for r in (answer.rrset or ()))
        note = "" if records else "no TLSA records"
        if records and not secure:
            note = "the TLSA answer is not DNSSEC-validated"
        return TlsaAnswer(name, records, secure, note)

    async def _secure(self, name: str, rdtype: str) -> bool:
        try:
            answer = await self._resolver.resolve(_absolute(name, rdtype, name), rdtype,
                                                  search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            return any(_authenticated(r) for r in exc.responses().values())
        except dns.exception.DNSException as exc:
            raise self._failure(rdtype, name, exc) from exc
        return _authenticated(answer.response)

    async def _srv(self, name: str) -> list[SrvRecord]:
        """SRV records at ``name``; none when the name or the records do not exist."""
        try:
            answer = await self._resolver.resolve(name, "SRV", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise self._failure("SRV", name, exc) from exc
        return [
            SrvRecord(r.priority, r.weight, r.port, r.target.to_text(omit_final_dot=True) or ".")
            for r in answer
        ]

    async def _addresses(self, name: str, rdtype: str) -> list[str]:
        try:
            answer = await self._resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN as exc:
            raise DnsResolutionError(
                "nxdomain", f"A/AAAA {name}: the name does not exist (NXDOMAIN)"
            ) from exc
        except dns.resolver.NoAnswer:
            return []
        except dns.exception.DNSException as exc:
            raise self._failure(rdtype, name, exc) from exc
        return [r.to_text() for r in answer]

    def _failure(
        self, rdtype: str, name: str, exc: dns.exception.DNSException
    ) -> DnsResolutionError:
        query = f"{rdtype} {name}"
        if isinstance(exc, dns.exception.Timeout):
            return DnsResolutionError(
                "timeout",
                f"{query}: no answer within {self.timeout:g} s from {self.nameserver_text}",
            )
        if isinstance(exc, dns.resolver.NoNameservers):
            answers = [
                f"{self._server_names.get(e[0], e[0])} answered {e[3]}"
                for e in exc.kwargs.get("errors", [])
            ]
            detail = "; ".join(answers) or f"no nameserver answered ({self.nameserver_text})"
            return DnsResolutionError("servfail", f"{query}: server failure: {detail}")
        return DnsResolutionError("servfail", f"{query}: {exc}")


def _authenticated(response: dns.message.Message | None) -> bool:
    return response is not None and bool(response.flags & dns.flags.AD)


async def _or_error(lookup: Awaitable[_T]) -> _T | DnsResolutionError:
    """The lookup's result or its DnsResolutionError, so two queries can run side by side
    and both outcomes be weighed (other exceptions propagate)."""
    try:
        return await lookup
    except DnsResolutionError as exc:
        return exc


def _absolute(name: str, rdtype: str, original: str) -> str:
    """``name`` as an absolute DNS name (no search list), checked for DNS syntax."""
    try:
        return dns.name.from_text(name).to_text()
    except (dns.exception.DNSException, UnicodeError) as exc:
        raise DnsResolutionError(
            "nxdomain", f"{rdtype} {original}: not a valid domain name ({exc})"
        ) from None
