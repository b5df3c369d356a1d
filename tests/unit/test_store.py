"""SQLite authorization store: persistence, normalisation, migrations, errors, asyncio use."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from gateway.store import (
    AsyncAuthorizationStore,
    AuthorizationStore,
    SqliteAuthorizationStore,
    StoreError,
    normalize_bare_jid,
)
from gateway.store.sqlite import SCHEMA_VERSION

ALICE = "alice@contoso.example"
BOB = "bob@fabrikam.example"


@pytest.fixture
def store(tmp_path: Path):
    with SqliteAuthorizationStore(tmp_path / "data" / "gw.sqlite3") as opened:
        yield opened


def test_is_an_authorization_store(store: SqliteAuthorizationStore) -> None:
    typed: AuthorizationStore = store
    assert typed.list_users() == []


def test_allow_revoke_and_list(store: SqliteAuthorizationStore) -> None:
    assert not store.is_authorized(ALICE, BOB)
    assert store.allow(ALICE, BOB, source="subscribe") is True
    assert store.allow(ALICE, BOB) is False  # already there, first grant kept
    assert store.is_authorized(ALICE, BOB)
    assert not store.is_authorized("carol@contoso.example", BOB)  # per local user
    store.allow(ALICE, "zed@fabrikam.example")
    contacts = store.list_contacts(ALICE)
    assert [c.remote_jid for c in contacts] == [BOB, "zed@fabrikam.example"]
    assert contacts[0].source == "subscribe" and contacts[0].granted_at.endswith("+00:00")
    assert store.revoke(ALICE, BOB) is True
    assert store.revoke(ALICE, BOB) is False
    assert not store.is_authorized(ALICE, BOB)


def test_addresses_are_normalised(store: SqliteAuthorizationStore) -> None:
    store.allow("Alice@Contoso.Example", "Bob@Fabrikam.Example/Laptop")
    assert store.is_authorized(ALICE, BOB)
    assert store.is_authorized(ALICE, "bob@fabrikam.example/phone")
    assert normalize_bare_jid("bob@fabrikam.example.") == BOB


@pytest.mark.parametrize("bad", ["fabrikam.example", "@fabrikam.example", "bob@", "a b@c.example"])
def test_malformed_addresses_are_refused(store: SqliteAuthorizationStore, bad: str) -> None:
    with pytest.raises(ValueError, match="local@domain"):
        store.allow(ALICE, bad)


def test_user_switch_overrides_default(store: SqliteAuthorizationStore) -> None:
    assert store.user_enabled(ALICE, default=True) is True
    assert store.user_enabled(ALICE, default=False) is False
    store.set_user_enabled(ALICE, False)
    assert store.user_enabled(ALICE, default=True) is False
    store.set_user_enabled(ALICE, True)
    assert store.user_enabled(ALICE, default=False) is True
    [setting] = store.list_users()
    assert (setting.local_user, setting.enabled) == (ALICE, True)
    store.set_user_enabled(ALICE, None)  # back to the global default
    assert store.user_enabled(ALICE, default=False) is False
    assert store.list_users() == []


def test_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "gw.sqlite3"
    first = SqliteAuthorizationStore(path)
    first.allow(ALICE, BOB)
    first.set_user_enabled("carol@contoso.example", False)
    first.close()
    second = SqliteAuthorizationStore(path)
    try:
        assert second.is_authorized(ALICE, BOB)
        assert second.user_enabled("carol@contoso.example", default=True) is False
        assert second.schema_version() == SCHEMA_VERSION
    finally:
        second.close()


def test_wal_and_schema_table(tmp_path: Path) -> None:
    path = tmp_path / "gw.sqlite3"
    SqliteAuthorizationStore(path).close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = [v for (v,) in raw.execute("SELECT version FROM schema_version")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gw.sqlite3"
    SqliteAuthorizationStore(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer than this gateway supports"):
        SqliteAuthorizationStore(path)


def test_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "gw.sqlite3"
    path.write_bytes(b"this is not SQLite " * 100)
    with pytest.raises(StoreError, match=str(path)):
        SqliteAuthorizationStore(path)


def test_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot open"):
        SqliteAuthorizationStore(tmp_path / "file" / "gw.sqlite3")  # parent is a file


def test_locked_database_is_a_store_error(tmp_path: Path) -> None:
    """Another process holding the write lock past the busy timeout: clear error, no crash."""
    path = tmp_path / "gw.sqlite3"
    store = SqliteAuthorizationStore(path, busy_timeout=0.1)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError, match="record authorization failed: database is locked"):
            store.allow(ALICE, BOB)
        other.execute("ROLLBACK")
        assert store.allow(ALICE, BOB)  # usable again afterwards
    finally:
        other.close()
        store.close()


def test_full_database_is_a_store_error(tmp_path: Path) -> None:
    """SQLITE_FULL (what a full disk gives) surfaces as StoreError and rolls back."""
    store = SqliteAuthorizationStore(tmp_path / "gw.sqlite3")
    try:
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count={pages}")
        with pytest.raises(StoreError, match="full"):
            for index in range(10_000):
                store.allow(ALICE, f"user{index}-{'x' * 200}@fabrikam.example")
        assert not store._db.in_transaction
    finally:
        store.close()


async def test_async_wrapper_runs_off_the_event_loop(tmp_path: Path) -> None:
    store = SqliteAuthorizationStore(tmp_path / "gw.sqlite3")
    threads: set[str] = set()
    original = store.is_authorized

    def recording(local_user: str, remote_jid: str) -> bool:
        threads.add(threading.current_thread().name)
        return original(local_user, remote_jid)

    store.is_authorized = recording  # type: ignore[method-assign]
    wrapped = AsyncAuthorizationStore(store)
    assert await wrapped.allow(ALICE, BOB, "subscribe") is True
    results = await asyncio.gather(*(wrapped.is_authorized(ALICE, BOB) for _ in range(20)))
    assert all(results)
    assert threads and all(name.startswith("authz-store") for name in threads)
    assert len(threads) == 1  # one dedicated worker
    await wrapped.set_user_enabled(ALICE, False)
    assert await wrapped.user_enabled(ALICE, True) is False
    assert [u.local_user for u in await wrapped.list_users()] == [ALICE]
    assert [c.remote_jid for c in await wrapped.list_contacts(ALICE)] == [BOB]
    assert await wrapped.revoke(ALICE, BOB) is True
    await wrapped.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await wrapped.is_authorized(ALICE, BOB)


async def test_async_wrapper_propagates_store_errors(tmp_path: Path) -> None:
    path = tmp_path / "gw.sqlite3"
    wrapped = AsyncAuthorizationStore(SqliteAuthorizationStore(path, busy_timeout=0.05))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError, match="locked"):
            await wrapped.allow(ALICE, BOB)
    finally:
        other.close()
        await wrapped.aclose()


def test_concurrent_processes_share_the_file(tmp_path: Path) -> None:
    """A CLI process writing while the daemon's store is open: the daemon sees the grant."""
    path = tmp_path / "gw.sqlite3"
    daemon = SqliteAuthorizationStore(path)
    try:
        assert not daemon.is_authorized(ALICE, BOB)
        with SqliteAuthorizationStore(path) as cli:
            cli.allow(ALICE, BOB)
        assert daemon.is_authorized(ALICE, BOB)
    finally:
        daemon.close()


def test_presence_watches(store: SqliteAuthorizationStore) -> None:
    assert store.list_watches() == []
    store.add_watch("Bob@Fabrikam.example/phone", ALICE)
    store.add_watch(BOB, ALICE)  # the same subscription: kept once
    store.add_watch(BOB, "carol@contoso.example")
    assert store.list_watches() == [(BOB, ALICE), (BOB, "carol@contoso.example")]
    store.remove_watch(BOB, ALICE)
    store.remove_watch(BOB, ALICE)  # already gone: no error
    assert store.list_watches() == [(BOB, "carol@contoso.example")]


def test_version_1_database_is_migrated(tmp_path: Path) -> None:
    """A store written by a gateway before presence watches existed opens, keeps its data
    and gains the table."""
    path = tmp_path / "gw.sqlite3"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
        raw.execute("INSERT INTO schema_version VALUES (1)")
        raw.execute("CREATE TABLE authorizations (local_user TEXT NOT NULL, remote_jid TEXT "
                    "NOT NULL, granted_at TEXT NOT NULL, source TEXT NOT NULL, PRIMARY KEY "
                    "(local_user, remote_jid)) WITHOUT ROWID")
        raw.execute("CREATE TABLE user_settings (local_user TEXT PRIMARY KEY NOT NULL, enabled "
                    "INTEGER NOT NULL CHECK (enabled IN (0, 1)), updated_at TEXT NOT NULL) "
                    "WITHOUT ROWID")
        raw.execute("INSERT INTO authorizations VALUES (?, ?, '2026-01-01', 'cli')",
                    (ALICE, BOB))
    raw.close()
    with SqliteAuthorizationStore(path) as migrated:
        assert migrated.schema_version() == SCHEMA_VERSION == 2
        assert migrated.is_authorized(ALICE, BOB)
        migrated.add_watch(BOB, ALICE)
        assert migrated.list_watches() == [(BOB, ALICE)]
