"""The contracts between the gateway's parts: what each may ask of the others.

The parts are the S2S service (:mod:`gateway.net.federation`, the XMPP side), the router
(:mod:`gateway.router`, the contact rules between the sides), the SIP-side backend
(:mod:`gateway.backend` declares it) and the store (:mod:`gateway.store.protocols`).
:func:`gateway.assembly.assemble` joins them once, passing each its collaborators as
these Protocols, so a part sees only what its contract names (no attribute probing,
nothing set on another part after construction). docs/architecture.md draws them.

Stanzas are ``xml.etree.ElementTree.Element`` objects in the ``jabber:server`` namespace
with full ``from``/``to`` addresses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol
from xml.etree.ElementTree import Element

if TYPE_CHECKING:
    from gateway.config.model import GatewayConfig, PartnerPolicy

OnSettled = Callable[[], None] | None
"""Called once when the router is done with a stanza (see :class:`RouterForS2S`)."""

OnDecided = Callable[[], None] | None

OnSent = Callable[[bool], None] | None
"""Told once what became of a stanza handed to the S2S service: True when the peer server
has it (acknowledged under XEP-0198 stream management, else written to its stream),
False once its sender was told it could not be sent (the error reply delivered)."""
"""Called once when the router has decided a local user's stanza (see
:class:`RouterForBackend`)."""


class RouterForS2S(Protocol):
    """What the S2S service may ask of the router."""

    def from_xmpp(self, stanza: Element, remote: str, local: str,
                  on_settled: OnSettled = None) -> None:
        """Route an accepted inbound stanza from ``remote`` to ``local`` (domains).

        Never blocks and never refuses: stanzas are handled in arrival order by one
        worker, and above the router's high-water mark the S2S service is told to stop
        reading (:meth:`XmppSide.set_reading_paused`).

        ``on_settled``, when given, is called exactly once, on the event loop, when the
        stanza is *settled*: delivered (the backend's ``deliver`` returned), refused
        with its error reply handed to the S2S service, refused silently as the contact
        rules demand (logged and counted), or dropped with a count (including when the
        gateway stops before routing it). A stream-management layer acknowledges a
        stanza to the peer only then (XEP-0198 §4: acknowledging means the receiving
        entity has taken responsibility for it). It costs nothing per stanza beyond
        the reference kept in the queue: no task, no future.
        """
        ...

    def bounce(self, stanza: Element, condition: str, text: str,
               on_settled: OnSettled = None) -> None:
        """The S2S service could not deliver a local user's ``stanza``: tell the sender
        with an error of RFC 6120 §8.3.3 ``condition`` (in order with everything else
        delivered to local users), or count the drop when nobody can be told;
        ``on_settled`` is called once either is done."""
        ...

    def s2s_congestion(self, domain: str, congested: bool) -> None:
        """The S2S queue toward ``domain`` went over (back under) its bound: local
        senders toward that domain are held back meanwhile."""
        ...


class RouterForBackend(Protocol):
    """What a SIP-side backend may ask of the router."""

    def submit_local(self, stanza: Element, on_decided: OnDecided = None) -> None:
        """A local user's stanza toward XMPP. ``on_decided`` is called once its outcome
        is known: the partner server has it (acknowledged under XEP-0198, else written to
        the stream: docs/delivery.md), or its error reply has already been handed to the
        backend's ``deliver`` (a SIP backend answers the SIP request with that refusal,
        RFC 7247 §8.1, instead of a blind 202). Stanzas from one sender to one recipient
        leave in the order they were submitted."""
        ...

    async def from_local(self, stanza: Element) -> None:
        """:meth:`submit_local`, returning once decided (for callers that can await)."""
        ...

    def xmpp_saturated(self, domain: str) -> bool:
        """Whether new work toward ``domain`` from a sender that cannot be paused (SIP
        over UDP) must be refused for now with 503 + Retry-After: past a burst the XMPP
        side works off (senders that can be paused are, through ``input_paused``)."""
        ...


class XmppSide(Protocol):
    """What the router may ask of the S2S service."""

    def send(self, stanza: Element, on_sent: OnSent = None) -> None:
        """Send a stanza toward its XMPP domain (never blocks; failures come back
        through :meth:`RouterForS2S.bounce`); ``on_sent`` learns the outcome."""
        ...

    def set_reading_paused(self, paused: bool) -> None:
        """Stop (resume) reading inbound streams: the router's queue is full (drained)."""
        ...

    def queues(self) -> dict[str, int]:
        """Non-empty outbound queues by ``local->remote``."""
        ...


class S2SControl(XmppSide, Protocol):
    """What the daemon, the cluster (drain) and the admin socket may ask of the S2S
    service."""

    async def start(self) -> None:
        """Listen on the configured addresses (raises OSError)."""
        ...

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, give queued stanzas ``grace`` seconds, bounce the rest, close
        every stream."""
        ...

    def apply(self, config: GatewayConfig) -> int:
        """Take a reloaded configuration: new partners, policies, certificates and limits
        apply to new streams; streams whose partner was removed or whose method is no
        longer permitted are closed (their number is returned). Raises
        :class:`gateway.auth.tls_provider.TlsConfigError` before changing anything when
        the new certificates cannot be used."""
        ...

    def partner_for(self, domain: str) -> PartnerPolicy | None:
        """The policy for ``domain`` (an unlisted one when ``allow_unlisted``)."""
        ...

    def stop_accepting(self) -> None:
        """Close the listeners; established streams carry on."""
        ...

    def close_inbound(self, text: str) -> int:
        """Close every inbound stream gracefully (RFC 6120 §4.4); returns how many."""
        ...

    @property
    def inbound_streams(self) -> int:
        """Inbound streams still open."""
        ...

    @property
    def streams(self) -> int:
        """Open streams, both directions."""
        ...

    @property
    def queued(self) -> int:
        """Stanzas waiting in outbound session queues, all domains."""
        ...

    def backoffs(self) -> dict[str, dict[str, object]]:
        """Partners whose last connection round failed, by ``local->remote``: failures
        in a row, seconds before the next round, the last failure."""
        ...

    @property
    def listening_addresses(self) -> list[tuple[str, int]]:
        ...

    def describe(self) -> list[dict[str, Any]]:
        """One row per stream, for ``xmpp-gateway status``."""
        ...


class AdminCommands(Protocol):
    """What the admin socket (and the CLI behind it) may ask of the running daemon."""

    def status(self) -> dict[str, Any]: ...

    async def reload(self) -> dict[str, Any]: ...

    def start_drain(self) -> dict[str, Any]: ...

    async def probe(self, domain: str) -> dict[str, Any]: ...
