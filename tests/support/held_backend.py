"""A SIP side that stops taking stanzas, as a proxy that stopped answering makes it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from xml.etree.ElementTree import Element

from gateway.sip.development import DevelopmentBackend


class HeldBackend(DevelopmentBackend):
    """The development backend, whose ``deliver`` waits until :attr:`released` is set
    (the router's worker, and so the S2S streams, wait with it)."""

    def __init__(self, domains: Iterable[str] = ("b.example",)) -> None:
        super().__init__(domains)
        self.released = asyncio.Event()

    async def deliver(self, stanza: Element) -> None:
        await self.released.wait()
        await super().deliver(stanza)
