"""TLS contexts for the gateway-proxy leg, mutual when configured (docs/sip.md, "Security").

With ``sip.transport: tls`` both directions are TLS connections between the gateway and
the SIP proxy (RFC 3261 §26.2.1, RFC 5630): the gateway connects to the proxy for the
requests it originates, and the proxy connects to the gateway for the requests it relays.

* client (our connection to the proxy): verifies the proxy's certificate for
  ``proxy_host`` against ``tls.ca_file`` (and the system CAs when ``tls.use_system_cas``),
  and presents the gateway's certificate (``sip.client_certificate``/``client_key``,
  default ``tls.certificate``/``tls.key``) so a proxy with ``require_certificate`` on can
  authenticate us;
* server (connections the proxy opens): presents ``tls.certificate``; with
  ``sip.require_client_certificate`` it asks for the peer's certificate and verifies it
  against the same CAs. Whether the verified certificate *names* the proxy is checked
  after the handshake by the transport (:func:`gateway.sip.trust.certificate_names_match`,
  names from :func:`expected_peer_names`), so a refusal is logged and counted like any
  other untrusted source. The context asks with ``CERT_OPTIONAL`` for that reason: a peer
  without a certificate completes the handshake and is then refused with a reason, while
  a certificate that does not verify still fails the handshake.
"""

from __future__ import annotations

import ssl

from gateway.config.model import SipSettings, TlsSettings


def _load_cas(context: ssl.SSLContext, tls: TlsSettings) -> None:
    if tls.ca_file:
        context.load_verify_locations(cafile=str(tls.ca_file))
    if tls.use_system_cas:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH if context.check_hostname
                                   else ssl.Purpose.CLIENT_AUTH)
    elif not tls.ca_file:
        raise ValueError("sip.transport tls needs tls.ca_file or tls.use_system_cas")


def client_context(tls: TlsSettings, sip: SipSettings | None = None) -> ssl.SSLContext:
    """Context for our connection to the proxy (hostname checked against ``proxy_host``
    by the caller's ``server_hostname``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_cas(context, tls)
    certificate = (sip.client_certificate if sip else None) or tls.certificate
    key = (sip.client_key if sip else None) or (tls.key if certificate == tls.certificate
                                                else None)
    context.load_cert_chain(str(certificate), str(key) if key else None)
    return context


def server_context(tls: TlsSettings, sip: SipSettings | None = None) -> ssl.SSLContext:
    """Context for connections the proxy opens to us (see the module docstring)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.certificate), str(tls.key))
    if sip is not None and sip.require_client_certificate:
        context.verify_mode = ssl.CERT_OPTIONAL
        _load_cas(context, tls)
    return context


def contexts(tls: TlsSettings | None,
             sip: SipSettings | None = None) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts; ValueError/OSError name what is missing."""
    if tls is None:
        raise ValueError("sip.transport tls needs the tls section (certificate, key, ca_file)")
    return server_context(tls, sip), client_context(tls, sip)


def expected_peer_names(sip: SipSettings) -> tuple[str, ...]:
    """Names a proxy's client certificate may carry: ``proxy_host`` and ``trusted_names``."""
    return (sip.proxy_host, *sip.trusted_names)
