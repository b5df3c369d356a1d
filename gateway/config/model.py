"""Typed, immutable configuration objects.

The YAML loader (``gateway.config.loader``) validates a file and produces a
:class:`GatewayConfig`; everything else in the gateway reads these objects only —
wire code never sees YAML (ARCHITECTURE.md). Frozen dataclasses make a loaded
configuration a value: hot reload swaps one whole object for another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from gateway.policy.negotiation import Negotiation, Support, negotiate


class PartnerType(StrEnum):
    """Contact rules class of a partner (GATEWAY-SPEC §3)."""

    FEDERATED = "federated"
    PUBLIC_VERIFIED = "public-verified"
    PUBLIC_UNVERIFIED = "public-unverified"


@dataclass(frozen=True, slots=True)
class PartnerPolicy:
    """One partner entry (GATEWAY-SPEC §2): a partner XMPP deployment and its rules."""

    primary_domain: str
    partner_type: PartnerType
    tls: Support = Support.OPTIONAL
    sasl: Support = Support.OPTIONAL
    dialback: bool = True
    additional_domains: tuple[str, ...] = ()
    description: str = ""

    @property
    def domains(self) -> tuple[str, ...]:
        return (self.primary_domain, *self.additional_domains)

    @property
    def negotiation(self) -> Negotiation:
        return negotiate(self.tls, self.sasl, self.dialback)


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str = "0.0.0.0"
    port: int = 5269
    direct_tls: bool = False  # XEP-0368: TLS from the first byte (_xmpps-server._tcp)


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    certificate: Path
    key: Path


@dataclass(frozen=True, slots=True)
class TlsSettings:
    certificate: Path = Path("certs/gateway.crt")
    key: Path = Path("certs/gateway.key")
    # Extra CA bundle trusted for peers, in addition to the system CAs (or instead, below).
    ca_file: Path | None = None
    use_system_cas: bool = True
    min_version: str = "1.2"  # "1.2" or "1.3"
    # Key exchange groups offered/accepted, in preference order (OpenSSL names, e.g.
    # X25519MLKEM768, X25519, secp256r1); empty = OpenSSL's default list.
    groups: tuple[str, ...] = ()
    # Per served domain overrides, chosen by SNI / stream 'to' when several are served.
    per_domain: dict[str, CertificateFiles] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DialbackSettings:
    # XEP-0185 key secret. Nodes sharing it can verify each other's keys. When empty,
    # a random secret is made at start (fine for a single node).
    secret: str = ""


@dataclass(frozen=True, slots=True)
class DnsSettings:
    # "host" or "host:port"; empty = the system resolver configuration (/etc/resolv.conf).
    nameservers: tuple[str, ...] = ()
    timeout: float = 5.0
    direct_tls: bool = True  # also look up _xmpps-server._tcp (XEP-0368)


@dataclass(frozen=True, slots=True)
class StoreSettings:
    path: Path = Path("data/gateway.sqlite3")


@dataclass(frozen=True, slots=True)
class SipSettings:
    backend: str = "development"  # "development" (in-process) or "sip"
    # Settings of the real SIP backend (ignored by the development backend).
    proxy_host: str = "127.0.0.1"
    proxy_port: int = 5060
    transport: str = "udp"  # udp | tcp | tls
    local_host: str = "127.0.0.1"
    local_port: int = 5062
    # Lifetime asked for the presence subscriptions the gateway makes and grants
    # (RFC 6665 §4.1.2.1 Expires; refreshed before it runs out).
    subscription_expires: int = 3600


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str = "info"  # debug | info | warning | error
    format: str = "text"  # text | json
    file: Path | None = None  # None = stderr


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits (RFC 6120 §13.12). Defaults follow Prosody's order of magnitude."""

    max_stanza_bytes: int = 512 * 1024
    max_depth: int = 32
    max_attributes: int = 64
    max_attribute_bytes: int = 16 * 1024
    connect_timeout: float = 10.0
    negotiation_timeout: float = 30.0
    idle_timeout: float = 600.0
    keepalive_interval: float = 60.0
    max_queue_per_domain: int = 1000
    max_connections: int = 10000
    max_connections_per_ip: int = 100
    # Per inbound stream, bytes/s before reads are paused (0 = unlimited); a flood on one
    # session then slows that peer down through TCP instead of starving the others.
    inbound_bytes_per_second: int = 0


@dataclass(frozen=True, slots=True)
class FederationSettings:
    # Opt-in: treat domains with no partner entry as public-unverified (GATEWAY-SPEC §2).
    allow_unlisted: bool = False
    # Default for the per-user XMPP federation switch (per-user overrides live in the store).
    users_enabled_by_default: bool = True


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """Prometheus endpoint: off by default, bound to localhost by default."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9269


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    domains: tuple[str, ...]
    partners: tuple[PartnerPolicy, ...] = ()
    listen: tuple[ListenAddress, ...] = (ListenAddress(),)
    tls: TlsSettings = field(default_factory=TlsSettings)
    dialback: DialbackSettings = field(default_factory=DialbackSettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    sip: SipSettings = field(default_factory=SipSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    limits: Limits = field(default_factory=Limits)
    federation: FederationSettings = field(default_factory=FederationSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    admin_socket: Path = Path("run/gateway.sock")
    source: Path | None = None  # file this was loaded from, for messages

    _partner_index: dict[str, PartnerPolicy] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        index = {d: p for p in self.partners for d in p.domains}
        object.__setattr__(self, "_partner_index", index)

    def partner_for(self, domain: str) -> PartnerPolicy | None:
        """The partner entry a (normalised) domain belongs to, if any."""
        return self._partner_index.get(domain)

    def serves(self, domain: str) -> bool:
        return domain in self.domains
