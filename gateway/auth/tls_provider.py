"""TLS contexts built from the configuration, and the peer-certificate verdict.

Two pieces the sans-I/O core takes as plain callables/objects (``StreamContext``):

* :class:`OpenSslTlsProvider` — pyOpenSSL contexts for both directions. Inbound, the
  certificate is chosen by SNI when several domains are served (RFC 6120 §13.7.1.2,
  RFC 6066 §3); outbound, we present our certificate as a client certificate so the peer
  can authenticate us with SASL EXTERNAL (XEP-0178 §3). TLS 1.2 minimum, 1.3 preferred
  (RFC 7590 §3.1, RFC 9325).
* :func:`certificate_verdict` — "does this chain authenticate that domain?" combining
  OpenSSL's chain verification (trust from the system CAs and/or a configured CA file)
  with the RFC 6125 identity check, and wording the refusal precisely enough that an
  admin can fix it from one log line (docs/admin-guide.md, "Certificates").
"""

from __future__ import annotations

from pathlib import Path

from OpenSSL import SSL

from gateway.auth.identity import check_identity, describe_verify_error
from gateway.config.model import CertificateFiles, TlsSettings
from gateway.domain import DomainError, normalize_domain
from gateway.xmpp.openssl_internals import OpenSslInternalsError, self_test, set_groups
from gateway.xmpp.stream import CertificateVerdict
from gateway.xmpp.tls import PeerCertificate, TlsEngine, install_verify_callback

# Modern AEAD suites only for TLS 1.2 (RFC 9325 §4.2); TLS 1.3 suites are OpenSSL's default.
_TLS12_CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM"


class TlsConfigError(Exception):
    """The configured certificate, key or CA file cannot be used."""


def _base_context(settings: TlsSettings) -> SSL.Context:
    context = SSL.Context(SSL.TLS_METHOD)
    minimum = SSL.TLS1_3_VERSION if settings.min_version == "1.3" else SSL.TLS1_2_VERSION
    context.set_min_proto_version(minimum)
    context.set_cipher_list(_TLS12_CIPHERS)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    # Free each connection's ~34 KiB of TLS record buffers while it is idle: most S2S
    # sessions are idle most of the time (docs/performance.md, memory per idle session).
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    # The key share of the group used stays in the connection until it is freed: with
    # OpenSSL 3.5+'s default X25519MLKEM768 about 8 KiB per session, 0.1 with X25519
    # (docs/performance.md). pyOpenSSL has no setter (see openssl_internals).
    if settings.groups and not set_groups(context, settings.groups):
        raise TlsConfigError(f"tls.groups: OpenSSL does not know all of "
                             f"{', '.join(settings.groups)}")
    try:
        if settings.use_system_cas:
            context.set_default_verify_paths()
        # A missing CA file is reported by `check config` and at start-up (tls.ca_missing);
        # an unreadable or malformed one is an error.
        if settings.ca_file is not None and Path(settings.ca_file).exists():
            context.load_verify_locations(str(settings.ca_file))
    except SSL.Error as exc:
        raise TlsConfigError(f"cannot load CA file {settings.ca_file}: {exc}") from None
    install_verify_callback(context)
    # XEP-0368 §3: a direct-TLS client names 'xmpp-server'; accepted when offered.
    # Anything else offered alone gets no protocol (the stream decides, as over STARTTLS).
    context.set_alpn_select_callback(_select_alpn)
    return context


XMPP_SERVER_ALPN = b"xmpp-server"


def _select_alpn(_connection: SSL.Connection, offered: list[bytes]) -> bytes:
    return XMPP_SERVER_ALPN if XMPP_SERVER_ALPN in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def _load_identity(context: SSL.Context, files: CertificateFiles) -> None:
    try:
        context.use_certificate_chain_file(str(files.certificate))
    except SSL.Error as exc:
        raise TlsConfigError(f"cannot load certificate {files.certificate}: {exc}") from None
    try:
        context.use_privatekey_file(str(files.key))
        context.check_privatekey()
    except SSL.Error as exc:
        raise TlsConfigError(
            f"cannot use key {files.key} with certificate {files.certificate}: {exc}"
        ) from None


class OpenSslTlsProvider:
    """A :class:`gateway.xmpp.tls.TlsProvider` over pyOpenSSL contexts."""

    def __init__(self, settings: TlsSettings, served_domains: tuple[str, ...] = ()) -> None:
        try:
            self_test()  # once per process: the OpenSSL internals TLS relies on are there
        except OpenSslInternalsError as exc:
            raise TlsConfigError(str(exc)) from None
        self.settings = settings
        default = CertificateFiles(settings.certificate, settings.key)
        self._available = Path(default.certificate).is_file() and Path(default.key).is_file()
        # One context per certificate, for both directions: each holds its own copy of
        # the trust store (the system CAs: about a megabyte) and settings; the SNI
        # callback is only ever called on the server side.
        self._server = _base_context(settings)
        self._client = self._server
        self._per_domain: dict[str, SSL.Context] = {}
        if self._available:
            _load_identity(self._server, default)
        for domain, files in settings.per_domain.items():
            context = _base_context(settings)
            _load_identity(context, files)
            self._per_domain[domain] = context
        if self._available and self._per_domain:
            self._server.set_tlsext_servername_callback(self._choose_by_sni)
        self._client_per_domain = self._per_domain
        self.served_domains = served_domains

    @property
    def available(self) -> bool:
        return self._available

    def _choose_by_sni(self, connection: SSL.Connection) -> None:
        name = connection.get_servername()
        if not name:
            return
        try:
            domain = normalize_domain(name.decode("ascii", "replace"))
        except DomainError:
            return
        context = self._per_domain.get(domain)
        if context is not None:
            connection.set_context(context)

    def server_engine(self) -> TlsEngine:
        return TlsEngine(self._server, server_side=True)

    def client_engine(self, server_name: str, local_domain: str | None = None,
                      alpn: tuple[bytes, ...] = ()) -> TlsEngine:
        context = self._client_per_domain.get(local_domain or "", self._client)
        return TlsEngine(context, server_side=False, server_name=server_name, alpn=alpn)


def certificate_verdict(
    peer: PeerCertificate, domain: str, *, direct_tls: bool = False
) -> CertificateVerdict:
    """Whether ``peer``'s certificate authenticates ``domain`` (RFC 6120 §13.7.2, RFC 6125,
    RFC 7590), with a reason naming the exact problem."""
    if peer.leaf is None:
        return CertificateVerdict(False, "the peer presented no certificate")
    problems = peer.chain_errors
    if problems:
        first = problems[0]
        cert = first.certificate if first.certificate is not None else peer.leaf
        return CertificateVerdict(False, describe_verify_error(first.errno, first.depth, cert))
    identity = check_identity(peer.leaf, domain, direct_tls=direct_tls)
    return CertificateVerdict(identity.ok, identity.reason)
