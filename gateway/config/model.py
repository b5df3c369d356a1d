"""Typed, immutable configuration objects: the one place each setting is defined.

The YAML loader (``gateway.config.loader``) validates a file and produces a
:class:`GatewayConfig`; everything else in the gateway reads these objects only —
wire code never sees YAML. Frozen dataclasses make a loaded configuration a value: hot
reload swaps one whole object for another.

Each field's type and default say what the file may contain (:mod:`gateway.config.fields`);
:func:`~gateway.config.fields.setting` adds ranges, choices and syntaxes. The loader derives
every key, check and default from here, so a new setting is one line in this file (and a
row in docs/configuration.md). A relative default path is relative to the directory above
the configuration file (the installation's ``config/``, ``certs/``, ``data/``, ``run/``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from gateway.config.fields import PORT, Choice, Syntax, Whole, setting
from gateway.policy.negotiation import Negotiation, Support, negotiate


class DanePolicy(StrEnum):
    """DANE (RFC 7673) for our outbound streams to a partner (gateway.dns.dane)."""

    OFF = "off"
    OPPORTUNISTIC = "opportunistic"  # secure TLSA records, when there are, must match
    REQUIRED = "required"  # secure TLSA records must exist and match


class PartnerType(StrEnum):
    """Contact rules class of a partner (docs/configuration.md, "Partner types")."""

    FEDERATED = "federated"
    PUBLIC_VERIFIED = "public-verified"
    PUBLIC_UNVERIFIED = "public-unverified"


@dataclass(frozen=True, slots=True)
class PartnerPolicy:
    """One partner entry (docs/configuration.md, "Partners"): a partner XMPP deployment and
    its rules."""

    primary_domain: str = setting(check=Syntax("domain"), key="domain")
    partner_type: PartnerType = setting(key="type")
    tls: Support = Support.OPTIONAL
    sasl: Support = Support.OPTIONAL
    dialback: bool = True
    additional_domains: tuple[str, ...] = setting((), Syntax("located_domains"))
    description: str = ""
    # DANE (RFC 7673) for our outbound streams to this partner: off, opportunistic
    # (TLSA records, when DNSSEC vouches for them, must match) or required.
    dane: DanePolicy = DanePolicy.OFF

    @property
    def domains(self) -> tuple[str, ...]:
        return (self.primary_domain, *self.additional_domains)

    @property
    def negotiation(self) -> Negotiation:
        return negotiate(self.tls, self.sasl, self.dialback)


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str = "0.0.0.0"
    port: int = setting(5269, PORT)
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
    min_version: str = setting("1.2", Choice(("1.2", "1.3")))
    # Key exchange groups offered/accepted, in preference order (OpenSSL names, e.g.
    # X25519MLKEM768, X25519, secp256r1); empty = OpenSSL's default list.
    groups: tuple[str, ...] = ()
    # Per served domain overrides, chosen by SNI / stream 'to' when several are served.
    per_domain: dict[str, CertificateFiles] = setting(factory=dict,
                                                      check=Syntax("per_domain"))


@dataclass(frozen=True, slots=True)
class DialbackSettings:
    # XEP-0185 key secret. Nodes sharing it can verify each other's keys. When empty,
    # a random secret is made at start (fine for a single node).
    secret: str = ""


@dataclass(frozen=True, slots=True)
class DnsSettings:
    # "host" or "host:port"; empty = the system resolver configuration (/etc/resolv.conf).
    nameservers: tuple[str, ...] = setting((), Syntax("nameservers"))
    timeout: float = 5.0
    direct_tls: bool = True  # also look up _xmpps-server._tcp (XEP-0368)
    # Believe the nameservers' DNSSEC validation (the AD bit) for DANE: they must be a
    # validating resolver reached over a trusted path, e.g. unbound on localhost.
    dnssec: bool = False


@dataclass(frozen=True, slots=True)
class StoreSettings:
    path: Path = Path("data/gateway.sqlite3")  # SQLite file, used when url is empty
    # postgresql://user:password@host:port/dbname — the store shared by several nodes.
    url: str = setting("", Syntax("database_url"))
    pool_size: int = setting(4, Whole(1, 100))  # PostgreSQL connections per process
    timeout: float = 5.0  # seconds to wait for a PostgreSQL connection before failing


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """Several nodes serving the same domains (docs/deploy.md; needs store.url)."""

    node_id: str = setting("", Syntax("node_id"))  # empty = the host name
    heartbeat_interval: float = 1.0
    # A node whose last heartbeat is older than this is dead: its SIP presence watches are
    # taken over by a survivor.
    lease: float = 10.0
    # `xmpp-gateway drain` / SIGTERM: longest wait for the queues to empty before stopping.
    drain_timeout: float = 30.0
    # ... and the shortest drain: keep answering new SIP requests with 503 this long even
    # when the queues are already empty, so that the proxy's dispatcher probe (OPTIONS)
    # marks the node inactive before its SIP port goes silent.
    drain_grace: float = 5.0


@dataclass(frozen=True, slots=True)
class SipSettings:
    # "development" (in-process) or "sip"
    backend: str = setting("development", Choice(("development", "sip")))
    # Settings of the real SIP backend (ignored by the development backend).
    proxy_host: str = "127.0.0.1"
    proxy_port: int = setting(5060, PORT)
    transport: str = setting("udp", Choice(("udp", "tcp", "tls")))
    local_host: str = "127.0.0.1"
    local_port: int = setting(5062, PORT)
    # Lifetime asked for the presence subscriptions the gateway makes and grants
    # (RFC 6665 §4.1.2.1 Expires; refreshed before it runs out).
    subscription_expires: int = setting(3600, Whole(60, 86400))
    # Trust (docs/sip.md "Security"): SIP requests are accepted only from the
    # addresses proxy_host resolves to and these addresses/CIDR networks (a proxy pool).
    trusted_sources: tuple[str, ...] = setting((), Syntax("networks"))
    # transport tls: ask the proxy for a client certificate, which must verify against
    # tls.ca_file (or the system CAs) and name proxy_host or one of trusted_names.
    require_client_certificate: bool = False
    trusted_names: tuple[str, ...] = setting((), Syntax("names"))
    # Certificate the gateway presents when it connects to the proxy (default tls.*).
    client_certificate: Path | None = None
    client_key: Path | None = None
    # Take the sender from P-Asserted-Identity (RFC 3325) instead of From. Off by default:
    # only safe when the proxy removes P-Asserted-Identity from its users' requests and
    # inserts its own after authenticating them (RFC 3325 §5); see docs/sip.md.
    trust_asserted_identity: bool = False
    # Flow control (docs/sip.md "Flow control"): requests outstanding at the proxy before
    # the XMPP side is made to wait (and SIP work while 32x that wait is answered 503).
    max_in_flight: int = setting(256, Whole(1, 100_000))
    # Bytes of UDP receive buffer asked of the kernel at start (SO_RCVBUFFORCE when
    # permitted): what a burst from the proxy can hold while the gateway is busy.
    udp_receive_buffer: int = setting(8 * 1024 * 1024, Whole(64 * 1024, 1 << 30))
    # Seconds a 503 asks the SIP sender to wait while the XMPP side is congested
    # (RFC 3261 §21.5.4 Retry-After).
    retry_after: int = setting(1, Whole(1, 3600))
    # Largest message body carried either way, in bytes: an XMPP message over it is
    # refused with policy-violation at once (RFC 7572 §6), a SIP one with 413.
    max_message_size: int = setting(60_000, Whole(1024, 1 << 20))
    # Answer an XMPP receipt request from a SIP 200 when the phone cannot send an IMDN
    # (docs/sip.md "Receipts": honest only if the proxy never answers MESSAGE itself).
    receipts_from_200: bool = False


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str = setting("info", Choice(("debug", "info", "warning", "error")))
    format: str = setting("text", Choice(("text", "json")))
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
    inbound_bytes_per_second: int = setting(0, Whole(0))
    # Stanzas sent under stream management and not yet acknowledged, per stream (the
    # window): no more are written until the peer acknowledges some; the next ones wait
    # in the domain's queue (max_queue_per_domain). About what a 1 MiB socket buffer
    # held of chat messages before acknowledgements.
    max_unacked: int = 5000


@dataclass(frozen=True, slots=True)
class FederationSettings:
    # Opt-in: treat domains with no partner entry as public-unverified (docs/configuration.md).
    allow_unlisted: bool = False
    # Default for the per-user XMPP federation switch (per-user overrides live in the store).
    users_enabled_by_default: bool = True
    # XEP-0198 stream management on S2S: offered to authenticated peers and enabled where
    # offered; stanzas are acknowledged only once delivered (docs/delivery.md).
    stream_management: bool = True
    # Stanzas a lost link left unacknowledged go again over a new link (True) or are
    # bounced to their senders with an error (False), as Prosody's smacks_s2s_resend.
    resend_unacked: bool = True
    # XEP-0288: one TLS connection carries both directions with partners that support it.
    bidi: bool = True


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """Prometheus endpoint: off by default, bound to localhost by default."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = setting(9269, PORT)


@dataclass(frozen=True, slots=True)
class AdminWebSettings:
    """The browser console (docs/console.md): off by default, bound to localhost by default.

    ``accounts`` is the file ``xmpp-gateway admin-user`` writes (argon2 hashes), beside the
    configuration file unless given; HTTPS when ``certificate`` and ``key`` are both set."""

    enabled: bool = False
    listen: str = setting("127.0.0.1:8480", Syntax("host_port"))  # or "[v6 address]:port"
    accounts: Path = setting(Path("admin-users"), beside=True)
    certificate: Path | None = None
    key: Path | None = None
    session_idle: float = 1800.0  # seconds without a request before logging in again
    session_lifetime: float = 43200.0  # seconds after login, whatever the activity

    @property
    def address(self) -> tuple[str, int]:
        """``listen`` as (host, port) (checked when the file was loaded)."""
        from gateway.config.values import parse_host_port

        return parse_host_port(self.listen)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    domains: tuple[str, ...] = setting(check=Syntax("served_domains"))
    partners: tuple[PartnerPolicy, ...] = setting((), Syntax("partners"))
    listen: tuple[ListenAddress, ...] = setting((ListenAddress(),), Syntax("listen"))
    tls: TlsSettings = field(default_factory=TlsSettings)
    dialback: DialbackSettings = field(default_factory=DialbackSettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    sip: SipSettings = field(default_factory=SipSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    limits: Limits = field(default_factory=Limits)
    federation: FederationSettings = field(default_factory=FederationSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    admin_web: AdminWebSettings = field(default_factory=AdminWebSettings)
    admin_socket: Path = Path("run/gateway.sock")
    source: Path | None = setting(None, read=False)  # file this was loaded from, for messages

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
