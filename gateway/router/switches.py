"""The per-user federation switches, as the router reads them: a recent snapshot.

Why a snapshot of every explicit switch, refreshed in the background every
:data:`USER_CACHE_SECONDS`: the store is changed by ``xmpp-gateway users …`` from another
process, so what the router uses must be recent, but a store lookup per new user capped
a presence storm at the thread hop (5,000 contacts, each a different SIP user, took
seconds). Users without a switch get ``federation.users_enabled_by_default``. A store
with change notification (PostgreSQL) drops the snapshot at once (:meth:`forget`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

from gateway.logs import log_event
from gateway.store.authorizations import normalize_bare_jid
from gateway.store.protocols import AsyncUserSwitches

log = logging.getLogger("gateway.router")

USER_CACHE_SECONDS = 5.0


class SwitchCache:
    """Whether a local user may federate, from the latest snapshot of the store."""

    def __init__(self, store: AsyncUserSwitches, default: bool,
                 lifetime: float = USER_CACHE_SECONDS) -> None:
        self.store = store
        self.default = default
        self.lifetime = lifetime
        self._switches: dict[str, bool] | None = None  # None until loaded (or forgotten)
        self._until = 0.0
        self._refresh: asyncio.Task[None] | None = None

    def now(self, local_user: str) -> bool | None:
        """The switch from the current snapshot, without waiting (None before the first
        snapshot: the caller waits for :meth:`enabled`). A stale snapshot is still used
        while a new one loads in the background."""
        switches = self._switches
        if switches is None:
            return None
        if time.monotonic() >= self._until:
            self._refresh_soon()
        try:
            user = _normalized(local_user)
        except ValueError:
            user = local_user
        return switches.get(user, self.default)

    async def enabled(self, local_user: str) -> bool:
        """The switch, loading the first snapshot if there is none (raises StoreError)."""
        enabled = self.now(local_user)
        if enabled is None:
            await self._load()
            enabled = self.now(local_user)
        # None only if the snapshot was dropped again meanwhile (forget)
        return self.default if enabled is None else enabled

    def forget(self) -> None:
        """Another node or process changed the switches: the next stanza waits for a
        new snapshot."""
        self._switches = None

    def apply(self, default: bool) -> None:
        """Reload: a new ``federation.users_enabled_by_default``."""
        self.default = default

    async def _load(self) -> None:
        settings = await self.store.list_users()
        self._switches = {setting.local_user: setting.enabled for setting in settings}
        self._until = time.monotonic() + self.lifetime

    def _refresh_soon(self) -> None:
        if self._refresh is not None and not self._refresh.done():
            return
        self._until = time.monotonic() + self.lifetime  # one attempt a period
        task = asyncio.get_running_loop().create_task(self._load())
        task.add_done_callback(_refreshed)
        self._refresh = task


def _refreshed(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log_event(log, logging.WARNING, "store.switches_not_refreshed",
                  reason=str(task.exception()),
                  consequence="routing goes on with the previous per-user switches")


@functools.lru_cache(maxsize=65536)
def _normalized(local_user: str) -> str:
    return normalize_bare_jid(local_user)
