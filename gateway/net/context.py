"""The :class:`~gateway.xmpp.stream.StreamContext` of a configuration, made in one place.

Every S2S stream decides with one context: the served domains, the partner policies,
the dialback keys, the certificate checks and the TLS provider. The S2S service makes
it at start and again for each reload (new certificates, limits and partners apply to
new streams); both go through :func:`stream_context`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from gateway.auth.coverage import coverage_problems
from gateway.auth.dialback_key import DialbackKeyGenerator
from gateway.auth.tls_provider import OpenSslTlsProvider, certificate_verdict
from gateway.config.model import GatewayConfig, PartnerPolicy
from gateway.logs import log_event
from gateway.xmpp.stream import StreamContext

log = logging.getLogger("gateway.daemon")


def stream_context(config: GatewayConfig, keys: DialbackKeyGenerator,
                   partner_for: Callable[[str], PartnerPolicy | None]) -> StreamContext:
    """Raises :class:`gateway.auth.tls_provider.TlsConfigError` when the certificate
    files cannot be used (nothing has changed then); warns when TLS will be missing."""
    provider = OpenSslTlsProvider(config.tls, config.domains)
    if not provider.available:
        log_event(log, logging.WARNING, "tls.unavailable", certificate=str(config.tls.certificate),
                  reason="certificate or key file missing: STARTTLS will not be offered or used")
    if provider.available:
        # A certificate that does not name a served domain still gives TLS; partners then
        # refuse SASL EXTERNAL and fall back to dialback where they may (reload refuses it).
        for problem in coverage_problems(config.tls, config.domains):
            log_event(log, logging.WARNING, "tls.certificate_mismatch", domain=problem.domain,
                      certificate=str(problem.certificate), reason=str(problem))
    if config.tls.ca_file is not None and not Path(config.tls.ca_file).exists():
        log_event(log, logging.WARNING, "tls.ca_missing", ca_file=str(config.tls.ca_file),
                  reason="tls.ca_file does not exist: only the system CAs are trusted")
    return StreamContext(
        local_domains=frozenset(config.domains),
        partner_for=partner_for,
        keys=keys,
        check_certificate=certificate_verdict,
        tls=provider,
        limits=config.limits,
        stream_management=config.federation.stream_management,
        bidi=config.federation.bidi,
    )
