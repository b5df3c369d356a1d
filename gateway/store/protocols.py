"""What the gateway asks of its store, split by job.

One database holds four kinds of state, each used by a different part of the gateway:

* :class:`Authorizations` — which XMPP contacts a local user authorized (the contact
  rules for public-unverified partners; the router reads them, outgoing subscriptions
  write them);
* :class:`UserSwitches` — the per-user federation switch overriding
  ``federation.users_enabled_by_default`` (the router's switch cache reads them, the CLI
  writes them);
* :class:`WatchStore` and :class:`Membership` — XMPP→SIP presence watches and the nodes
  that hold them (the SIP backend records watches, the cluster heartbeats and claims the
  watches of dead nodes);
* :class:`ChangeFeed` — change notification and a small message bus between the nodes
  sharing one database (cache invalidation, presence forwarded between nodes).

Each job is a synchronous Protocol (what an engine such as SQLite or PostgreSQL
implements, and what the CLI calls directly) with an awaitable twin that the daemon uses
on its event loop (:class:`gateway.store.threaded.AsyncAuthorizationStore` implements all
of them over one worker thread). A part of the gateway is given the narrowest one it
needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from gateway.store.authorizations import Authorization, UserSetting
from gateway.store.membership import NodeReport, NodeState
from gateway.store.notifiers import AsyncNotifierStore, NotifierStore
from gateway.store.spellings import SpellingStore

ChangeListener = Callable[[str, str], None]
"""``(table or topic, key)``; key ``""`` means "anything may have changed"."""

Pair = tuple[str, str]


# ---------------------------------------------------------------------- synchronous


class Authorizations(Protocol):
    """Contacts a local user authorized (bare JIDs, compared in normalised form)."""

    def is_authorized(self, local_user: str, remote_jid: str) -> bool:
        """Has ``local_user`` authorized the bare JID of ``remote_jid``?"""
        ...

    def allow(self, local_user: str, remote_jid: str, source: str = "cli") -> bool:
        """Record an authorization; False if it already existed (kept with its first date)."""
        ...

    def allow_many(self, pairs: list[Pair], source: str = "cli") -> None:
        """Record several authorizations in one transaction."""
        ...

    def revoke(self, local_user: str, remote_jid: str) -> bool:
        """Remove an authorization; False if there was none."""
        ...

    def list_contacts(self, local_user: str) -> list[Authorization]:
        """The user's authorizations, sorted by remote JID."""
        ...


class UserSwitches(Protocol):
    """Per-user overrides of the federation default."""

    def user_enabled(self, local_user: str, default: bool) -> bool:
        """The per-user federation switch: the override if set, else ``default``."""
        ...

    def set_user_enabled(self, local_user: str, enabled: bool | None) -> None:
        """Set the override; None removes it (the global default applies again)."""
        ...

    def list_users(self) -> list[UserSetting]:
        """Every user with an override, sorted by address."""
        ...


class WatchStore(Protocol):
    """XMPP users subscribed to SIP users' presence, owned by this store's node."""

    def add_watch(self, watcher: str, sip_user: str) -> None:
        """Remember that XMPP ``watcher`` is subscribed to ``sip_user``'s presence."""
        ...

    def remove_watch(self, watcher: str, sip_user: str) -> None:
        """Forget that subscription (no error if there was none)."""
        ...

    def list_watches(self) -> list[Pair]:
        """Every (watcher, SIP user) subscription this node owns."""
        ...


class Membership(Protocol):
    """Heartbeats of the nodes sharing the store, and who holds which watch."""

    @property
    def node_id(self) -> str:
        """The node this store object writes watches and heartbeats for."""
        ...

    def heartbeat(self, report: NodeReport) -> None:
        """Insert or replace this node's row, stamping it with the database clock."""
        ...

    def list_nodes(self) -> list[NodeState]:
        """Every node row, sorted by id, with its age by the database clock."""
        ...

    def forget_node(self, node_id: str) -> bool:
        """Delete a node's row (an operator removing a node for good)."""
        ...

    def claim_watches(self, lease: float) -> list[Pair]:
        """Atomically take over the watches of nodes whose heartbeat is older than
        ``lease`` (or that are stopped, or handed over: owner ''); return them."""
        ...

    def release_watches(self) -> int:
        """Hand this node's watches over (owner ''), for a survivor to claim."""
        ...


class ChangeFeed(Protocol):
    """Changes made by other processes, and messages between nodes."""

    def publish(self, topic: str, payload: str) -> None:
        """Deliver ``(topic, payload)`` to the change listeners of every node (engines
        without notification: nobody)."""
        ...

    def on_change(self, listener: ChangeListener) -> None:
        """Call ``listener(table, key)`` from a background thread when another process
        changed authorizations or user switches, or published a message. Engines without
        change notification never call it."""
        ...


class Store(Authorizations, UserSwitches, WatchStore, NotifierStore, Membership, ChangeFeed,
            SpellingStore, Protocol):
    """A whole storage engine (SQLite, PostgreSQL)."""

    def close(self) -> None:
        """Release the database."""
        ...


# ---------------------------------------------------------------------- on the event loop


class AsyncAuthorizations(Protocol):
    async def is_authorized(self, local_user: str, remote_jid: str) -> bool: ...

    async def allow(self, local_user: str, remote_jid: str, source: str = "cli") -> bool: ...

    async def allow_many(self, pairs: list[Pair], source: str = "cli") -> None: ...

    async def revoke(self, local_user: str, remote_jid: str) -> bool: ...

    async def list_contacts(self, local_user: str) -> list[Authorization]: ...


class AsyncUserSwitches(Protocol):
    async def user_enabled(self, local_user: str, default: bool) -> bool: ...

    async def set_user_enabled(self, local_user: str, enabled: bool | None) -> None: ...

    async def list_users(self) -> list[UserSetting]: ...


class AsyncWatchStore(Protocol):
    async def add_watch(self, watcher: str, sip_user: str) -> None: ...

    async def remove_watch(self, watcher: str, sip_user: str) -> None: ...

    async def list_watches(self) -> list[Pair]: ...


class AsyncMembership(Protocol):
    @property
    def node_id(self) -> str: ...

    async def heartbeat(self, report: NodeReport) -> None: ...

    async def list_nodes(self) -> list[NodeState]: ...

    async def claim_watches(self, lease: float) -> list[Pair]: ...

    async def release_watches(self) -> int: ...


class AsyncChangeFeed(Protocol):
    def publish_in_order(self, topic: str, payload: str,
                         on_failure: Callable[[BaseException], None]) -> None:
        """Publish without waiting; messages leave in the order of the calls (one
        worker thread), and ``on_failure`` is called on the event loop if one fails."""
        ...

    def on_change(self, listener: ChangeListener) -> None:
        """``listener`` runs in the store's notification thread (hand over to the loop
        with ``call_soon_threadsafe``)."""
        ...


class AsyncStore(AsyncAuthorizations, AsyncUserSwitches, AsyncWatchStore, AsyncNotifierStore,
                 AsyncMembership, AsyncChangeFeed, Protocol):
    """The whole store, awaitable."""

    async def aclose(self) -> None: ...
