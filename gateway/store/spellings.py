"""The store's job for SIP user spellings (see :mod:`gateway.sip.spellings`): a small
Protocol of its own beside those of :mod:`gateway.store.protocols`, implemented by the
SQLite and PostgreSQL stores (table ``sip_user_spellings``), with its awaitable twin
(:class:`gateway.store.threaded.AsyncAuthorizationStore`)."""

from __future__ import annotations

from typing import Protocol


class SpellingStore(Protocol):
    def remember_spelling(self, folded: str, spelled: str) -> None:
        """Remember ``spelled`` (a SIP user part as the SIP side wrote it) for the bare JID
        ``folded`` (any case; kept lower-case), replacing an older spelling."""
        ...

    def spelling(self, folded: str) -> str | None:
        """The user part remembered for the bare JID ``folded``, None when there is none."""
        ...


class AsyncSpellingStore(Protocol):
    async def remember_spelling(self, folded: str, spelled: str) -> None: ...

    async def spelling(self, folded: str) -> str | None: ...
