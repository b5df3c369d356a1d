"""The SIP side, as the rest of the gateway sees it.

The router hands every stanza that passed the contact rules to a :class:`LocalBackend`
(``deliver``) and receives the local users' stanzas through the
:class:`~gateway.contracts.RouterForBackend` given at ``start``. Errors addressed to a
local user (bounces) are delivered the same way, so a backend sees every outcome of what
its users sent.

:class:`SipSide` is the whole contract: besides the router's part it says what the
daemon (status, reload), the cluster (presence watches held per node, drain) and the
presence forwarding between nodes may ask. Every backend implements all of it; one
with nothing to do for a call (the development backend holds no watches) does nothing
and says so in its answer. Two implementations: :class:`gateway.sip.backend.SipBackend`
(a SIP user agent beside a proxy) and :class:`gateway.sip.development.DevelopmentBackend`
(in-process users, for ``make run`` and tests).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol
from xml.etree.ElementTree import Element

if TYPE_CHECKING:
    from gateway.config.model import SipSettings
    from gateway.contracts import RouterForBackend
    from gateway.metrics import Metrics
    from gateway.store.notifiers import AsyncNotifierStore, NotifierRecord
    from gateway.store.protocols import AsyncWatchStore
    from gateway.store.spellings import AsyncSpellingStore

Pair = tuple[str, str]


class DeliveryError(Exception):
    """The backend could not deliver a stanza; ``condition`` is an RFC 6120 §8.3.3 name."""

    def __init__(self, condition: str, text: str = "", error_type: str = "cancel") -> None:
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text
        self.error_type = error_type


class LocalBackend(Protocol):
    """Where local (SIP-side) users live: what the router asks."""

    async def deliver(self, stanza: Element) -> None:
        """Deliver an XMPP stanza to a local user or raise :class:`DeliveryError`. May
        wait (flow control): the router's worker, and so the S2S streams, wait too."""
        ...

    def input_paused(self, paused: bool) -> None:
        """The XMPP side is (no longer) congested: stop (resume) taking new work from
        local users where the transport allows it (a stream connection is not read)."""
        ...


class WatchHolder(Protocol):
    """The XMPP→SIP presence watches this node holds (a cluster hands them between
    nodes: :class:`gateway.cluster.ClusterMember`)."""

    def held_watches(self) -> list[Pair]:
        """The (watcher, SIP user) pairs whose subscription is established and recorded."""
        ...

    def take_over_watches(self, pairs: Iterable[Pair]) -> int:
        """Subscribe for watches another node held (it died or drained); returns how
        many subscriptions were started."""
        ...

    def drop_watches(self, pairs: Iterable[Pair] | None = None) -> int:
        """End the SIP side of these watches (all when None) but leave the store alone:
        another node holds or takes them over. Returns how many were ended."""
        ...

    def take_over_notifiers(self, records: Iterable[NotifierRecord]) -> int:
        """Go on notifying the phones' subscriptions to XMPP contacts another node held
        (it died or drained); returns how many dialogs were resumed."""
        ...

    def drop_notifiers(self) -> int:
        """Stop notifying the phones' subscriptions held here, telling nobody (another
        node resumes them: this one lost its lease). Returns how many were dropped."""
        ...


class SipSide(LocalBackend, WatchHolder, Protocol):
    """The whole SIP-side contract (see the module docstring)."""

    async def start(self, router: RouterForBackend, *, watches: AsyncWatchStore | None = None,
                    notifiers: AsyncNotifierStore | None = None,
                    metrics: Metrics | None = None,
                    spellings: AsyncSpellingStore | None = None) -> None:
        """Begin operating: stanzas from local users toward XMPP go to ``router``;
        presence watches are remembered in ``watches`` (and those it holds for this node
        are subscribed again now), the phones' subscriptions to XMPP contacts in
        ``notifiers`` (and those it holds are resumed now); how the SIP side spells its
        users in ``spellings``; ``metrics`` (None: off) get the backend's figures."""
        ...

    async def stop(self) -> None:
        """Stop; pending work is finished or reported, never dropped silently."""
        ...

    async def apply(self, settings: SipSettings) -> frozenset[str]:
        """Reload: apply what can change while running; returns the names of the
        settings applied live (the rest change on restart)."""
        ...

    def describe(self) -> dict[str, Any]:
        """The backend's own figures for ``xmpp-gateway status`` (JSON)."""
        ...

    @property
    def address(self) -> str:
        """Where the SIP proxy reaches this node (``sip:host:port``), "" if nowhere."""
        ...

    @property
    def watch_count(self) -> int:
        """Watches whose SIP subscription this node holds."""
        ...

    def is_watching(self, sip_user: str, contact: str) -> bool:
        """Whether ``sip_user`` (bare) holds a subscription to the XMPP ``contact``'s
        presence here: presence another node received for it must be routed here."""
        ...

    def set_draining(self) -> None:
        """This node is draining: refuse new work so that the proxy tries another node."""
        ...
