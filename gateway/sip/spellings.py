"""SIP user parts spelled as the SIP side spells them, for the Request-URIs the gateway
writes toward SIP users.

SIP compares user parts case-sensitively (RFC 3261 §19.1.4), XMPP lower-cases localparts
(RFC 7622 §3.3, PRECIS UsernameCaseMapped): SIP user ``JSmith`` writes to an XMPP contact
as ``JSmith@gw.example``, the contact's server answers ``jsmith@gw.example``, and a
registrar that compares user parts as written has no ``jsmith``. So every spelling the SIP
side uses (the ``From`` of its requests) is remembered under its lower-case form — in
memory, and in the store (table ``sip_user_spellings``) so that another node, or this one
after a restart, writes ``JSmith`` too. A user never seen keeps the XMPP spelling.

Reads are from memory on the hot path; :meth:`UserSpellings.load` fills a miss from the
store (a miss that the store cannot fill is remembered for :data:`NEGATIVE_TTL` seconds).
Writes go to the store only when a spelling is new or changed, and only for spellings
that differ from their lower-case form (the common case writes nothing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any, Protocol

from gateway.logs import log_event

log = logging.getLogger("gateway.sip")

MAX_CACHED = 65_536
NEGATIVE_TTL = 60.0


class AsyncSpellingStore(Protocol):
    async def remember_spelling(self, spelled: str) -> None: ...

    async def spelling(self, folded: str) -> str | None: ...


class UserSpellings:
    def __init__(self, store: AsyncSpellingStore | None = None) -> None:
        self.store = store
        self._known: OrderedDict[str, str] = OrderedDict()  # folded → spelled
        self._unknown: dict[str, float] = {}  # folded → until when the store said none
        self._tasks: set[asyncio.Task[Any]] = set()

    def spelled(self, bare: str) -> str:
        """``bare`` as the SIP side spells it (unchanged when never seen)."""
        return self._known.get(bare.lower(), bare)

    def known(self, bare: str) -> bool:
        """Whether :meth:`spelled` can answer without the store."""
        folded = bare.lower()
        return folded in self._known or self._unknown.get(folded, 0.0) > time.monotonic()

    def seen(self, spelled: str) -> None:
        """The SIP side wrote ``spelled`` (a bare ``user@domain``)."""
        folded = spelled.lower()
        if self._known.get(folded) == spelled:
            return
        had = folded in self._known
        self._known[folded] = spelled
        self._unknown.pop(folded, None)
        if len(self._known) > MAX_CACHED:
            self._known.popitem(last=False)
        if self.store is not None and (spelled != folded or had):
            task = asyncio.get_running_loop().create_task(self._write(spelled))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _write(self, spelled: str) -> None:
        assert self.store is not None
        try:
            await self.store.remember_spelling(spelled)
        except Exception as exc:  # StoreError or a closed store: the memory still knows
            log_event(log, logging.WARNING, "sip.spelling_not_stored", user=spelled,
                      reason=str(exc) or type(exc).__name__)

    async def load(self, bare: str) -> None:
        """Fill :meth:`spelled` for ``bare`` from the store (one read per miss)."""
        folded = bare.lower()
        if self.store is None or self.known(bare):
            return
        try:
            spelled = await self.store.spelling(folded)
        except Exception as exc:
            log_event(log, logging.WARNING, "sip.spelling_unavailable", user=bare,
                      reason=str(exc) or type(exc).__name__)
            spelled = None
        if spelled and spelled.lower() == folded:
            self._known[folded] = spelled
        else:
            if len(self._unknown) > MAX_CACHED:
                self._unknown.clear()
            self._unknown[folded] = time.monotonic() + NEGATIVE_TTL
