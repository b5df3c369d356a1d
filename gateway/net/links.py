"""What the S2S service's two directions share: the configuration both read, the set of
open connections, the way received stanzas reach the router, and the log lines of the
negotiation events either direction raises.

Stanzas arrive on inbound streams and, once XEP-0288 bidi is negotiated, on outbound ones
too; the path to the router is the same for both, which is why it lives here and not in
either direction's module. Under XEP-0198 stream management a received stanza is
acknowledged only once the router *settled* it (XEP-0198 §4: acknowledging means the
receiving entity has taken responsibility for it). A stanza the peer sends again after a
lost link, that this node had delivered already, is recognised (:mod:`gateway.net.resent`)
and acknowledged without being delivered twice.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.auth.dialback_key import DialbackKeyGenerator
from gateway.config.model import GatewayConfig, PartnerPolicy, PartnerType
from gateway.contracts import RouterForS2S
from gateway.logs import log_event
from gateway.net import resent
from gateway.net.connection import EventHandler, StreamConnection
from gateway.net.context import stream_context
from gateway.xmpp.events import (
    BidiNegotiated,
    Event,
    PairAuthenticated,
    StanzaReceived,
    StreamManagementEnabled,
    StreamManagementFailed,
    TlsEstablished,
)
from gateway.xmpp.stream import StreamContext

if TYPE_CHECKING:
    from gateway.metrics import Metrics

log = logging.getLogger("gateway.s2s")

EventHandlers = dict[type[Event], Callable[[StreamConnection, Any], None]]
"""What each event of a stream means: one table per direction, so that nothing asks a
stream which way it goes."""


def dispatcher(handlers: EventHandlers) -> EventHandler:
    """The ``on_event`` of a connection whose events mean what ``handlers`` say (events
    absent from the table are the core's own business)."""

    def on_event(conn: StreamConnection, event: Event) -> None:
        handler = handlers.get(type(event))
        if handler is not None:
            handler(conn, event)

    return on_event


def unlisted_partner(domain: str) -> PartnerPolicy:
    """With ``federation.allow_unlisted`` an unlisted domain federates as
    public-unverified with the default (optional/optional/dialback) settings."""
    return PartnerPolicy(domain, PartnerType.PUBLIC_UNVERIFIED)


class S2SSettings:
    """The configuration and the stream context every S2S part reads, replaced together
    on a reload (new streams negotiate with them; open ones keep what they agreed)."""

    def __init__(self, config: GatewayConfig, keys: DialbackKeyGenerator) -> None:
        self.config = config
        self.keys = keys
        self.ctx: StreamContext = stream_context(config, keys, self.partner_for)

    def partner_for(self, domain: str) -> PartnerPolicy | None:
        partner = self.config.partner_for(domain)
        if partner is None and self.config.federation.allow_unlisted:
            return unlisted_partner(domain)
        return partner

    def apply(self, config: GatewayConfig) -> None:
        """Take ``config``; raises (TlsConfigError) before changing anything when its
        certificates cannot be used."""
        context = stream_context(config, self.keys, self.partner_for)
        self.config, self.ctx = config, context


class Links:
    """The open S2S connections of both directions and the handling their events share."""

    def __init__(self, router: RouterForS2S, metrics: Metrics | None) -> None:
        self.router = router
        self.metrics = metrics
        self.connections: set[StreamConnection] = set()
        self.recent = resent.RecentStanzas()  # delivered lately (re-sends recognised)

    def count(self, what: str, label: str) -> None:
        if self.metrics is not None:
            self.metrics.count(what, label)

    def common_handlers(self) -> EventHandlers:
        """The events that mean the same whichever way the stream goes."""
        return {
            StanzaReceived: self.on_stanza,
            TlsEstablished: self.on_tls,
            StreamManagementEnabled: self.on_sm_enabled,
            StreamManagementFailed: self.on_sm_failed,
        }

    def ended(self, conn: StreamConnection) -> None:
        """``conn`` is gone: what it had received and not yet acknowledged under XEP-0198
        is what its peer sends again over the next link (remembered: resent.py)."""
        self.connections.discard(conn)
        stream = conn.stream
        if stream.sm_in is not None and stream.remote_domain:
            for stanza in stream.received_unacked():
                self.recent.remember(stanza, stream.remote_domain)

    def close(self, predicate: Callable[[StreamConnection], bool], condition: str,
              text: str) -> int:
        """Close the open streams ``predicate`` picks, with the RFC 6120 §4.9.3 stream
        error ``condition`` ('' for a plain ``</stream:stream>``, §4.4: what is in flight
        is still read and handled); how many."""
        closed = 0
        for conn in list(self.connections):
            if not conn.stream.closed and predicate(conn):
                conn.stream.close(condition, text)
                conn.pump()
                closed += 1
        return closed

    # ------------------------------------------------------------------ receiving

    def on_stanza(self, conn: StreamConnection, event: StanzaReceived) -> None:
        stream = conn.stream
        self.count("stanzas_in", event.remote_domain)
        if self.recent.keys and self.recent.seen(event.stanza, event.remote_domain):
            # Sent again after a lost link, and delivered here already (resent.py).
            self.count("duplicates_dropped", event.remote_domain)
            if stream.stanza_settled(event.seq):
                conn.schedule_pump()
            return
        # XEP-0198: acknowledged to the peer only once the router settled it.
        settled = None if event.seq < 0 else functools.partial(self.settled, conn, event.seq)
        self.router.from_xmpp(event.stanza, event.remote_domain, event.local_domain, settled)

    @staticmethod
    def settled(conn: StreamConnection, seq: int) -> None:
        """The router is done with received stanza ``seq``: it may be acknowledged."""
        if conn.stream.stanza_settled(seq):
            conn.schedule_pump()

    # ------------------------------------------------------------------ log lines

    def authenticated(self, conn: StreamConnection, event: PairAuthenticated,
                      direction: str) -> None:
        """Log and count a pair authenticated (RFC 6120 §6, XEP-0220) on ``conn``."""
        stream = conn.stream
        log_event(log, logging.INFO, "s2s.authenticated", peer=event.remote_domain,
                  local=event.local_domain, direction=direction, stream=stream.stream_id,
                  method=str(event.method), tls=stream.tls_version or "none",
                  addr=conn.peer_address)
        if self.metrics is not None:
            self.metrics.session_authenticated(direction, str(event.method))

    @staticmethod
    def on_tls(conn: StreamConnection, event: TlsEstablished) -> None:
        log_event(log, logging.DEBUG, "s2s.tls", **conn.log_fields(), version=event.version,
                  cipher=event.cipher, peer_cert=event.peer_certificate_present)

    @staticmethod
    def on_sm_enabled(conn: StreamConnection, event: StreamManagementEnabled) -> None:
        log_event(log, logging.INFO, "s2s.stream_management", **conn.log_fields(),
                  state="enabled", requested_by="us" if event.initiated_by_us else "peer")

    @staticmethod
    def on_sm_failed(conn: StreamConnection, event: StreamManagementFailed) -> None:
        log_event(log, logging.INFO, "s2s.stream_management", **conn.log_fields(),
                  state="refused by peer", condition=event.condition)

    @staticmethod
    def on_bidi(conn: StreamConnection, event: BidiNegotiated) -> None:
        log_event(log, logging.INFO, "s2s.bidi", **conn.log_fields())
