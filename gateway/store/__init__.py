"""Persistent state of the contact rules: authorizations and per-user federation switches."""

from __future__ import annotations

from gateway.config.model import StoreSettings
from gateway.store.authorizations import (
    Authorization,
    AuthorizationStore,
    StoreError,
    UserSetting,
    normalize_bare_jid,
)
from gateway.store.sqlite import SqliteAuthorizationStore
from gateway.store.threaded import AsyncAuthorizationStore

__all__ = [
    "AsyncAuthorizationStore",
    "Authorization",
    "AuthorizationStore",
    "SqliteAuthorizationStore",
    "StoreError",
    "UserSetting",
    "normalize_bare_jid",
    "open_authorization_store",
]


def open_authorization_store(settings: StoreSettings) -> SqliteAuthorizationStore:
    """The store the configuration names (``store.path``); raises :class:`StoreError`."""
    return SqliteAuthorizationStore(settings.path)
