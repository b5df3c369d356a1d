"""SIP user parts spelled as the SIP side spells them, for the Request-URIs the gateway
writes toward SIP users.

SIP compares user parts case-sensitively (RFC 3261 §19.1.4); XMPP case-maps localparts
(RFC 7622 §3.3, PRECIS UsernameCaseMapped), and so does the gateway's own :class:`Jid`:
SIP user ``JSmith`` is ``jsmith@gw.example`` to XMPP, and a reply to it must still go to
``sip:JSmith@gw.example`` where the registrar compares user parts as written. So the
user part of every request a SIP user sends (its ``From``, or ``P-Asserted-Identity``
where that is trusted) is remembered under the bare JID it maps to — in memory, and in the
store (table ``sip_user_spellings``) so that another node, or this one after a restart,
writes ``JSmith`` too. A user never seen keeps the spelling of the JID.

Reads come from memory on the hot path; :meth:`UserSpellings.load` fills a miss from the
store (a miss the store cannot fill is remembered for :data:`NEGATIVE_TTL` seconds).
Writes go to the store only when a spelling is new or changed, and not for a user part
spelled exactly as its JID (the common case writes nothing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from functools import lru_cache
from typing import Any

from gateway.logs import log_event
from gateway.sip.addresses import SipAddress, jid_to_sip
from gateway.store.spellings import AsyncSpellingStore

log = logging.getLogger("gateway.sip")

MAX_CACHED = 65_536
NEGATIVE_TTL = 60.0


@lru_cache(maxsize=65536)  # users repeat; the percent-encoding is the slow part
def _jid_address(bare: str) -> SipAddress:
    return jid_to_sip(bare)


@lru_cache(maxsize=65536)
def _jid_uri(bare: str) -> str:
    return _jid_address(bare).uri


class UserSpellings:
    def __init__(self, store: AsyncSpellingStore | None = None) -> None:
        self.store = store
        self._known: OrderedDict[str, str] = OrderedDict()  # bare JID → SIP user part
        self._unknown: dict[str, float] = {}  # bare JID → until when the store said none
        self._tasks: set[asyncio.Task[Any]] = set()

    def user_part(self, bare: str) -> str | None:
        """The SIP user part of the user XMPP calls ``bare`` (a case-mapped JID, as the
        gateway's own :class:`Jid` writes it), None when never seen spelled otherwise."""
        return self._known.get(bare)

    def uri(self, bare: str) -> str:
        """The SIP URI of the user XMPP calls ``bare``, with the user part spelled as the
        SIP side spells it (the Request-URI of whatever the gateway sends that user)."""
        spelled = self._known.get(bare)
        if spelled is None:
            return _jid_uri(bare)
        return SipAddress(spelled, _jid_address(bare).host).uri

    def learn(self, bare: str, user_part: str) -> None:
        """A request from the SIP side spelled the user XMPP calls ``bare`` ``user_part``
        (its From, or P-Asserted-Identity where trusted): remembered when new."""
        if self._known.get(bare) != user_part:
            self.seen(bare, user_part, as_jid=user_part == _jid_address(bare).user)

    def known(self, bare: str) -> bool:
        """Whether :meth:`user_part` can answer without the store (always, without one)."""
        if self.store is None or bare in self._known:
            return True
        return self._unknown.get(bare, 0.0) > time.monotonic()

    def seen(self, bare: str, user_part: str, *, as_jid: bool) -> None:
        """The SIP side wrote ``user_part`` for the user XMPP calls ``bare``; ``as_jid``:
        that is also how the JID spells it (nothing to keep unless it changed)."""
        folded = bare
        before = self._known.get(folded)
        if before == user_part or (as_jid and before is None):
            return
        self._known[folded] = user_part
        self._unknown.pop(folded, None)
        if len(self._known) > MAX_CACHED:
            self._known.popitem(last=False)
        if self.store is not None:
            task = asyncio.get_running_loop().create_task(self._write(folded, user_part))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _write(self, folded: str, user_part: str) -> None:
        assert self.store is not None
        try:
            await self.store.remember_spelling(folded, user_part)
        except Exception as exc:  # StoreError or a closed store: the memory still knows
            log_event(log, logging.WARNING, "sip.spelling_not_stored", user=folded,
                      spelled=user_part, reason=str(exc) or type(exc).__name__)

    async def load(self, bare: str) -> None:
        """Fill :meth:`user_part` for ``bare`` from the store (one read per miss)."""
        folded = bare
        if self.store is None or self.known(bare):
            return
        try:
            spelled = await self.store.spelling(folded)
        except Exception as exc:
            log_event(log, logging.WARNING, "sip.spelling_unavailable", user=bare,
                      reason=str(exc) or type(exc).__name__)
            spelled = None
        if spelled:
            self._known[folded] = spelled
        else:
            if len(self._unknown) > MAX_CACHED:
                self._unknown.clear()
            self._unknown[folded] = time.monotonic() + NEGATIVE_TTL
