"""The SIP-side interface (GATEWAY-SPEC §6).

The router hands every stanza that passed the contact rules to a :class:`LocalBackend`
and receives the local users' stanzas through the ``sink`` given at start. Stanzas are
``xml.etree.ElementTree.Element`` objects in the ``jabber:server`` namespace with full
``from``/``to`` JIDs; errors addressed to a local user (bounces) are delivered the
same way, so a backend sees every outcome of what its users sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol
from xml.etree.ElementTree import Element

StanzaSink = Callable[[Element], Awaitable[None]]


class DeliveryError(Exception):
    """The backend could not deliver a stanza; ``condition`` is an RFC 6120 §8.3.3 name."""

    def __init__(self, condition: str, text: str = "", error_type: str = "cancel") -> None:
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text
        self.error_type = error_type


class LocalBackend(Protocol):
    """Where local (SIP-side) users live."""

    async def start(self, sink: StanzaSink) -> None:
        """Begin operating; stanzas from local users toward XMPP go to ``sink``."""

    async def deliver(self, stanza: Element) -> None:
        """Deliver an XMPP stanza to a local user or raise :class:`DeliveryError`."""

    async def stop(self) -> None:
        """Stop; pending work is finished or reported, never dropped silently."""
