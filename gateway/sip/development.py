"""In-process development backend: local users without a SIP server.

Why: ``make run`` and the S2S engine's integration tests need a SIP side that needs
nothing installed. Its behaviour is deliberately simple and fully
determined by the stanzas it gets:

* every ``user@<served domain>`` exists and is online (available presence);
* the last :data:`KEPT` delivered stanzas are recorded
  (:attr:`DevelopmentBackend.delivered`) and can be awaited with
  :meth:`DevelopmentBackend.next_delivered` (older ones are forgotten: ``make run`` is a
  long-running daemon that nobody reads these from);
* ``echo@<served domain>`` answers each message that has a body with the same body and type
  (handy for manual and interop tests);
* a presence subscription request is approved (``subscribed``) and followed by the local
  user's available presence, and a probe is answered with available presence — what a SIP
  presence server with auto-accepting users would do (RFC 6121 §3.1.3, §4.3.2);
* iq requests are answered with ``service-unavailable`` (there is no SIP equivalent,
  RFC 7247 covers only messages and presence) by raising :class:`DeliveryError`;
* :meth:`DevelopmentBackend.inject` sends a stanza as if a local user had sent it.

Replies go to the router, exactly as a real backend's would. It implements the whole
:class:`gateway.backend.SipSide`; what it has no use for (presence watches held for a
cluster, input flow control, live settings) does nothing and says so in its answer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from xml.etree.ElementTree import Element, SubElement

from gateway.backend import DeliveryError, Pair
from gateway.config.model import SipSettings
from gateway.contracts import RouterForBackend
from gateway.domain import normalize_domain
from gateway.xmpp.jid import Jid, JidError

if TYPE_CHECKING:
    from gateway.metrics import Metrics
    from gateway.store.notifiers import AsyncNotifierStore, NotifierRecord
    from gateway.store.protocols import AsyncWatchStore
    from gateway.store.spellings import AsyncSpellingStore

NS = "jabber:server"
MESSAGE = f"{{{NS}}}message"
PRESENCE = f"{{{NS}}}presence"
IQ = f"{{{NS}}}iq"
BODY = f"{{{NS}}}body"

DEVELOPMENT_RESOURCE = "dev"
ECHO_USER = "echo"
KEPT = 50_000  # delivered stanzas remembered (tests read them; a daemon must not grow)


def message(sender: str, recipient: str, body: str, *, message_type: str = "chat") -> Element:
    """A ``jabber:server`` message stanza."""
    stanza = Element(MESSAGE, {"from": sender, "to": recipient, "type": message_type})
    SubElement(stanza, BODY).text = body
    return stanza


def presence(sender: str, recipient: str, presence_type: str | None = None) -> Element:
    """A ``jabber:server`` presence stanza (``presence_type`` None = available)."""
    attributes = {"from": sender, "to": recipient}
    if presence_type:
        attributes["type"] = presence_type
    return Element(PRESENCE, attributes)


class DevelopmentBackend:
    """A :class:`gateway.backend.SipSide` whose users live in this process."""

    def __init__(
        self,
        domains: Iterable[str],
        *,
        echo_user: str = ECHO_USER,
        resource: str = DEVELOPMENT_RESOURCE,
    ) -> None:
        self.domains = frozenset(normalize_domain(d) for d in domains)
        if not self.domains:
            raise ValueError("the development backend needs at least one served domain")
        self.echo_user = echo_user
        self.resource = resource
        self.delivered: deque[Element] = deque(maxlen=KEPT)
        self._queue: deque[Element] = deque(maxlen=KEPT)  # not yet taken by next_delivered
        self._arrived = asyncio.Event()
        self._router: RouterForBackend | None = None

    async def start(self, router: RouterForBackend, *, watches: AsyncWatchStore | None = None,
                    notifiers: AsyncNotifierStore | None = None,
                    metrics: Metrics | None = None,
                    spellings: AsyncSpellingStore | None = None) -> None:
        """Local users' stanzas go to ``router``; there are no presence watches to
        remember (every user is always available), no spellings to keep (the users are
        their JIDs) and no figures for ``metrics``."""
        if self._router is not None:
            raise RuntimeError("development backend already started")
        self._router = router

    async def stop(self) -> None:
        self._router = None

    # -- the rest of SipSide: nothing to do in-process

    def input_paused(self, paused: bool) -> None:
        """Local users send only through :meth:`inject`, which waits for the router."""

    async def apply(self, settings: SipSettings) -> frozenset[str]:
        return frozenset()  # nothing of sip.* is used: nothing applies live

    def describe(self) -> dict[str, Any]:
        return {"delivered": len(self.delivered)}

    @property
    def address(self) -> str:
        return ""  # no SIP address: the proxy cannot reach in-process users

    @property
    def watch_count(self) -> int:
        return 0

    def held_watches(self) -> list[Pair]:
        return []

    def take_over_watches(self, pairs: Iterable[Pair]) -> int:
        return 0  # every user is always available: nothing to subscribe to

    def drop_watches(self, pairs: Iterable[Pair] | None = None) -> int:
        return 0

    def take_over_notifiers(self, records: Iterable[NotifierRecord]) -> int:
        return 0  # nobody subscribes through a proxy here: no dialogs to resume

    def drop_notifiers(self) -> int:
        return 0

    def is_watching(self, sip_user: str, contact: str) -> bool:
        return False

    def set_draining(self) -> None:
        """Nobody sends through a proxy that could fail over: nothing to refuse."""

    async def deliver(self, stanza: Element) -> None:
        """Record the stanza and act as a local user would (see module docstring)."""
        router = self._router
        if router is None:
            raise DeliveryError("service-unavailable", "backend not started", "wait")
        recipient = self._local_recipient(stanza)
        self.delivered.append(stanza)
        self._queue.append(stanza)
        self._arrived.set()
        sender = stanza.get("from", "")
        local_jid = f"{recipient}/{self.resource}"
        stanza_type = stanza.get("type")
        if stanza_type == "error":
            return  # never answer an error (RFC 6120 §8.3.1)
        if stanza.tag == IQ:
            if stanza_type in ("get", "set"):
                raise DeliveryError("service-unavailable", "no iq service for SIP users")
            return
        if stanza.tag == MESSAGE:
            body = stanza.findtext(BODY)
            if recipient.split("@", 1)[0] == self.echo_user and body is not None:
                router.submit_local(
                    message(local_jid, sender, body, message_type=stanza_type or "normal"))
            return
        if stanza.tag == PRESENCE:
            bare_sender = Jid.parse(sender).bare
            if stanza_type == "subscribe":
                router.submit_local(presence(recipient, bare_sender, "subscribed"))
                router.submit_local(presence(local_jid, bare_sender))
            elif stanza_type == "probe":
                router.submit_local(presence(local_jid, bare_sender))

    async def inject(self, stanza: Element) -> None:
        """Send ``stanza`` toward XMPP as if a local user had sent it (its ``from`` must be a
        local user). Returns once it is on its way: what became of it arrives as
        :meth:`deliver` (an error) or not at all, as for a user (a SIP user's answer
        waits for the partner's acknowledgement: docs/delivery.md)."""
        if self._router is None:
            raise RuntimeError("development backend not started")
        sender = Jid.parse(stanza.get("from", ""))
        if not sender.local or sender.domain not in self.domains:
            raise ValueError(f"{stanza.get('from')!r} is not a user of {sorted(self.domains)}")
        self._router.submit_local(stanza)

    async def next_delivered(self, timeout: float = 5.0) -> Element:
        """The next stanza delivered to any local user; raises TimeoutError after
        ``timeout`` seconds."""
        async def next_one() -> Element:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            return self._queue.popleft()

        return await asyncio.wait_for(next_one(), timeout)

    def _local_recipient(self, stanza: Element) -> str:
        try:
            recipient = Jid.parse(stanza.get("to", ""))
        except JidError as exc:
            raise DeliveryError("jid-malformed", str(exc), "modify") from exc
        if recipient.domain not in self.domains:
            raise DeliveryError(
                "item-not-found", f"{recipient.domain} is not served by this backend"
            )
        if not recipient.local:
            raise DeliveryError("service-unavailable", "no service at the bare domain")
        return recipient.bare
