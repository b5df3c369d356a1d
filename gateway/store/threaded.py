"""Awaitable access to a synchronous :class:`AuthorizationStore` for the event loop.

Why a dedicated worker thread: even short SQLite calls can block for milliseconds to
seconds (``fsync`` on commit, waiting for a CLI process' write lock up to the busy
timeout); on the event loop that would stall every S2S stream. One thread — not a pool —
keeps the calls in submission order (an ``allow`` followed by an ``is_authorized`` sees
the grant) and matches SQLite's one-writer model; it is never the bottleneck for a table
read once per inbound stanza from public-unverified partners.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from gateway.store.authorizations import Authorization, UserSetting
from gateway.store.membership import NodeReport, NodeState
from gateway.store.notifiers import NotifierRecord
from gateway.store.protocols import ChangeListener, Pair, Store

T = TypeVar("T")


class AsyncAuthorizationStore:
    """The store's methods as coroutines, each run in the store's own worker thread
    (implements :class:`gateway.store.protocols.AsyncStore`)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="authz-store")
        self._closed = False

    async def _call(self, function: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise RuntimeError("authorization store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(function, *args))

    async def is_authorized(self, local_user: str, remote_jid: str) -> bool:
        return await self._call(self.store.is_authorized, local_user, remote_jid)

    async def allow(self, local_user: str, remote_jid: str, source: str = "cli") -> bool:
        return await self._call(self.store.allow, local_user, remote_jid, source)

    async def allow_many(self, pairs: list[Pair], source: str = "cli") -> None:
        """Several authorizations at once (one transaction)."""
        await self._call(self.store.allow_many, pairs, source)

    async def revoke(self, local_user: str, remote_jid: str) -> bool:
        return await self._call(self.store.revoke, local_user, remote_jid)

    async def list_contacts(self, local_user: str) -> list[Authorization]:
        return await self._call(self.store.list_contacts, local_user)

    async def user_enabled(self, local_user: str, default: bool) -> bool:
        return await self._call(self.store.user_enabled, local_user, default)

    async def set_user_enabled(self, local_user: str, enabled: bool | None) -> None:
        await self._call(self.store.set_user_enabled, local_user, enabled)

    async def list_users(self) -> list[UserSetting]:
        return await self._call(self.store.list_users)

    async def add_watch(self, watcher: str, sip_user: str) -> None:
        await self._call(self.store.add_watch, watcher, sip_user)

    async def remove_watch(self, watcher: str, sip_user: str) -> None:
        await self._call(self.store.remove_watch, watcher, sip_user)

    async def list_watches(self) -> list[tuple[str, str]]:
        return await self._call(self.store.list_watches)

    async def remember_spelling(self, folded: str, spelled: str) -> None:
        await self._call(self.store.remember_spelling, folded, spelled)

    async def spelling(self, folded: str) -> str | None:
        return await self._call(self.store.spelling, folded)

    # -- cluster (gateway.store.protocols.Membership, ChangeFeed) ----------------------

    @property
    def node_id(self) -> str:
        return self.store.node_id

    async def heartbeat(self, report: NodeReport) -> None:
        await self._call(self.store.heartbeat, report)

    async def list_nodes(self) -> list[NodeState]:
        return await self._call(self.store.list_nodes)

    async def claim_watches(self, lease: float) -> list[Pair]:
        return await self._call(self.store.claim_watches, lease)

    async def release_watches(self) -> int:
        return await self._call(self.store.release_watches)

    def publish_in_order(self, topic: str, payload: str,
                         on_failure: Callable[[BaseException], None]) -> None:
        """Hand the message to the store's one worker thread now, so messages leave in
        call order (a task per message would only keep that order by accident); no task
        is made per message."""
        if self._closed:
            on_failure(RuntimeError("authorization store is closed"))
            return
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, self.store.publish, topic, payload)

        def finished(done: asyncio.Future[None]) -> None:
            error = None if done.cancelled() else done.exception()
            if error is not None:
                on_failure(error)

        future.add_done_callback(finished)

    def on_change(self, listener: ChangeListener) -> None:
        """Registered directly: the listener runs in the store's notification thread."""
        self.store.on_change(listener)

    # -- phones' subscriptions to XMPP contacts (gateway.store.notifiers) ----------------

    async def save_notifiers(self, records: list[NotifierRecord]) -> None:
        await self._call(self.store.save_notifiers, records)

    async def remove_notifiers(self, call_ids: list[str]) -> None:
        await self._call(self.store.remove_notifiers, call_ids)

    async def list_notifiers(self) -> list[NotifierRecord]:
        return await self._call(self.store.list_notifiers)

    async def claim_notifiers(self, lease: float) -> list[NotifierRecord]:
        return await self._call(self.store.claim_notifiers, lease)

    async def aclose(self) -> None:
        """Finish queued calls, close the store, stop the thread."""
        if self._closed:
            return
        await self._call(self.store.close)
        self._closed = True
        self._executor.shutdown(wait=True)
