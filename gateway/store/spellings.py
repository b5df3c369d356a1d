"""The store's job for SIP user spellings (see :mod:`gateway.sip.spellings`): a small
Protocol of its own, implemented by the SQLite and PostgreSQL stores (table
``sip_user_spellings``)."""

from __future__ import annotations

from typing import Protocol


class SpellingStore(Protocol):
    def remember_spelling(self, spelled: str) -> None:
        """Remember ``spelled`` (a bare ``user@domain`` as the SIP side wrote it) under its
        lower-case form, replacing an older spelling."""

    def spelling(self, folded: str) -> str | None:
        """The spelling remembered for ``folded`` (any case), None when there is none."""
