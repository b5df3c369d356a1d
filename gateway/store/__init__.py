"""Persistent state of the contact rules (authorizations, per-user federation switches),
of XMPP->SIP presence watches and of cluster membership.

Two engines behind one Protocol (:class:`gateway.store.protocols.Store`, split by job):
SQLite (embedded, the default: ``store.path``) and
PostgreSQL (``store.url: postgresql://…``, for several nodes serving one domain; needs
the ``postgresql`` extra: ``pip install 'xmpp-gateway[postgresql]'``).
"""

from __future__ import annotations

from gateway.config.model import StoreSettings
from gateway.store.authorizations import (
    Authorization,
    StoreError,
    UserSetting,
    normalize_bare_jid,
)
from gateway.store.membership import NodeReport, NodeState
from gateway.store.protocols import AsyncStore, Store
from gateway.store.sqlite import SqliteAuthorizationStore
from gateway.store.threaded import AsyncAuthorizationStore

__all__ = [
    "AsyncAuthorizationStore",
    "AsyncStore",
    "Authorization",
    "NodeReport",
    "NodeState",
    "SqliteAuthorizationStore",
    "Store",
    "StoreError",
    "UserSetting",
    "describe_store",
    "normalize_bare_jid",
    "open_authorization_store",
]


def describe_store(settings: StoreSettings) -> str:
    """Where the store is, for messages: the SQLite file or the URL without password."""
    if settings.url:
        from gateway.store.postgresql import describe_url

        return describe_url(settings.url)
    return str(settings.path)


def open_authorization_store(settings: StoreSettings, node_id: str = "local") -> Store:
    """The store the configuration names (``store.url`` if set, else the SQLite file at
    ``store.path``), writing watches and heartbeats as ``node_id``; raises
    :class:`StoreError`."""
    if settings.url:
        try:
            from gateway.store.postgresql import PostgresAuthorizationStore
        except ImportError as exc:
            raise StoreError(f"store.url is a PostgreSQL URL but the driver is not installed "
                             f"({exc}): pip install 'xmpp-gateway[postgresql]'") from None
        return PostgresAuthorizationStore(settings.url, node_id=node_id,
                                          pool_size=settings.pool_size,
                                          timeout=settings.timeout)
    return SqliteAuthorizationStore(settings.path, node_id=node_id)
