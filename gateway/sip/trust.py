"""Who may speak SIP to the gateway, and for whom (docs/sip.md, "Security").

The gateway speaks for its local (SIP) users towards XMPP partners with its domain's S2S
authority, so a SIP request must only be believed when it comes from the SIP proxy that
authenticated those users. The gateway itself authenticates nobody; it trusts *where* a
request comes from, which is the "trust domain" model of RFC 3325 §2.3 (Spec(T)): the
proxy authenticates its users (e.g. digest, RFC 3261 §22) and the gateway believes what
the proxy relays.

Pure policy, no sockets:

* :class:`SourceTrust` — the trusted source set: the addresses ``sip.proxy_host``
  resolves to plus the ``sip.trusted_sources`` networks; :meth:`SourceTrust.is_trusted`.
* :func:`refusal_for` — the ``403 Forbidden`` answered (once) to a request from anyone
  else; nothing for responses, ACKs or bytes that are not SIP (no reflection of garbage).
* :func:`asserted_sender` — the sender taken from ``P-Asserted-Identity`` (RFC 3325 §9.1)
  when the deployment says the proxy asserts identities.
* :func:`certificate_names_match` — does a TLS peer's certificate name the proxy
  (RFC 6125 §6.4, rules shared with the S2S side in :mod:`gateway.auth.identity`)?

The one piece of I/O, :func:`resolve_addresses`, turns ``proxy_host`` into addresses at
start-up (a change of the proxy's address in DNS needs a restart).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509

from gateway.auth.identity import a_label_domain, dns_name_matches, presented_identities
from gateway.config.values import Network, parse_network
from gateway.sip.message import (
    SipParseError,
    SipRequest,
    SipResponse,
    new_tag,
    parse_message,
    parse_name_addr,
    response_wire,
    split_values,
)


def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return address


@dataclass(frozen=True, slots=True)
class SourceTrust:
    """The set of source addresses SIP requests are accepted from."""

    networks: tuple[Network, ...]

    @classmethod
    def build(cls, proxy_addresses: Iterable[str], trusted_sources: Iterable[str] = ()
              ) -> SourceTrust:
        networks: list[Network] = []
        for ip in proxy_addresses:
            address = _address(ip)
            if address is not None:
                networks.append(ipaddress.ip_network(address))
        networks.extend(parse_network(text) for text in trusted_sources)
        return cls(tuple(networks))

    def is_trusted(self, ip: str) -> bool:
        """True when ``ip`` (as a socket reports it) is the proxy or in an allowed network."""
        address = _address(ip)
        return address is not None and any(address in network for network in self.networks)

    def describe(self) -> str:
        return ", ".join(str(n) for n in self.networks) or "nobody"


@dataclass(slots=True)
class RefusalLogBudget:
    """At most ``per_second`` refusal log lines a second; the rest are counted and the
    count is reported on the next line that is logged (``suppressed=N``). A flood of
    forged packets must not become a flood of log lines (the metric counts every one)."""

    per_second: int = 20
    window_start: float = float("-inf")
    used: int = 0
    suppressed: int = 0

    def allow(self, now: float) -> tuple[bool, int]:
        """(log this one?, refusals not logged since the last line that was)."""
        if now - self.window_start >= 1.0:
            self.window_start, self.used = now, 0
        if self.used >= self.per_second:
            self.suppressed += 1
            return False, 0
        self.used += 1
        suppressed, self.suppressed = self.suppressed, 0
        return True, suppressed


async def resolve_addresses(host: str) -> tuple[str, ...]:
    """Every address ``host`` resolves to (an address resolves to itself)."""
    if _address(host) is not None:
        return (str(_address(host)),)
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    return tuple(dict.fromkeys(str(info[4][0]) for info in infos))


def refusal_for(data: bytes, *, stream: bool) -> tuple[bytes | None, str]:
    """``(403 response bytes or None, method)`` for a message from an untrusted source.

    Only a request that can be read far enough gets an answer (RFC 3261 §8.2.6 needs its
    Via, From, To, Call-ID and CSeq to build one; a bad Content-Length or CSeq number does
    not spare it the 403, which comes first); responses and ACKs are never answered (§17.1.1.3), and
    anything that does not parse is dropped, so the gateway never reflects arbitrary bytes.
    The answer is sent once: there is no server transaction, so a retransmission of the
    request is refused again but nothing is retransmitted by us (§17.2.2 does not apply to
    a request we never accepted)."""
    try:
        message: SipRequest | SipResponse = parse_message(data, stream=stream)
    except SipParseError as exc:
        # refused for where it comes from, whatever else is wrong with it, when it can be
        # read far enough to answer
        if exc.request is None:
            return None, "unparseable"
        message = exc.request
    if not isinstance(message, SipRequest):
        return None, "response"
    if message.method == "ACK":
        return None, "ACK"
    return response_wire(message, 403, "Forbidden", to_tag=new_tag(), extra=[
        ("warning", '399 gateway "source not trusted: only the SIP proxy may send '
                    'requests here"')]), message.method


def asserted_sender(request: SipRequest) -> str | None:
    """The ``sip:``/``sips:`` URI of ``P-Asserted-Identity`` (RFC 3325 §9.1), if any.

    The header holds one or two name-addrs (at most one SIP URI, one tel URI); the SIP one
    is the sender. Call this only for requests from trusted sources (§5: a header from
    outside the trust domain means nothing)."""
    for value in request.get_all("p-asserted-identity"):
        for part in split_values(value):
            try:
                uri = parse_name_addr(part).uri
            except SipParseError:
                continue
            if uri.lower().startswith(("sip:", "sips:")):
                return uri
    return None


def certificate_names_match(der: bytes | None, names: Iterable[str]) -> str | None:
    """None when the DER certificate names one of ``names``, else the reason it does not.

    Names are DNS names (RFC 6125 §6.4 DNS-ID, wildcards as on the S2S side, CN only when
    there is no SAN) or IP addresses (matched against iPAddress SANs, RFC 5280 §4.2.1.6)."""
    if not der:
        return "no client certificate presented"
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        return f"unreadable client certificate: {exc}"
    ids = presented_identities(cert)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    except x509.ExtensionNotFound:
        ips = set()
    presented = list(ids.dns_ids) or ([] if ids.has_san_identifiers else list(ids.common_names))
    wanted = [name for name in names if name]
    for name in wanted:
        address = _address(name)
        if address is not None:
            if str(address) in ips:
                return None
            continue
        try:
            reference = a_label_domain(name)
        except ValueError:
            continue
        if any(dns_name_matches(p, reference) for p in presented):
            return None
    shown = ", ".join([*presented, *sorted(ips)]) or "no names"
    return f"client certificate names {shown}, not {' or '.join(wanted)}"
