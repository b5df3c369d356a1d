"""The store on both engines: persistence, normalisation, migrations, errors, asyncio use,
cluster membership and watch ownership.

Every test taking ``open_store`` or ``store`` runs twice: on a SQLite file and on a fresh
database of a real PostgreSQL server (tests/conftest.py starts one per session). Tests
named ``test_sqlite_…`` / ``test_postgresql_…`` exercise what only one engine has (file
locking, a full disk; connection loss, LISTEN/NOTIFY).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.store import (
    AsyncAuthorizationStore,
    SqliteAuthorizationStore,
    Store,
    StoreError,
    normalize_bare_jid,
)
from gateway.store.membership import DRAINING, RUNNING, STOPPED, NodeReport, node_status
from gateway.store.schema import MIGRATIONS, SCHEMA_VERSION

ALICE = "alice@contoso.example"
BOB = "bob@fabrikam.example"

Opener = Callable[..., Any]


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_store(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Opener]:
    """Opens stores (as many as a test wants, e.g. two nodes or a CLI beside a daemon) on
    one fresh database of the engine; closes them all at the end."""
    if engine == "postgresql":
        from gateway.store.postgresql import PostgresAuthorizationStore

        url = request.getfixturevalue("postgres_server").create_database()

        def opener(**options: Any) -> Any:
            return PostgresAuthorizationStore(url, **options)
    else:
        path = tmp_path / "data" / "gw.sqlite3"

        def opener(**options: Any) -> Any:
            return SqliteAuthorizationStore(path, **options)

    opened: list[Any] = []

    def factory(**options: Any) -> Any:
        store = opener(**options)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Opener) -> Any:
    return open_store()


def test_is_an_authorization_store(store: Any) -> None:
    typed: Store = store
    assert typed.list_users() == []


def test_allow_revoke_and_list(store: Any) -> None:
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


def test_addresses_are_normalised(store: Any) -> None:
    store.allow("Alice@Contoso.Example", "Bob@Fabrikam.Example/Laptop")
    assert store.is_authorized(ALICE, BOB)
    assert store.is_authorized(ALICE, "bob@fabrikam.example/phone")
    assert normalize_bare_jid("bob@fabrikam.example.") == BOB
    # one key for an internationalised domain, however it is spelt (RFC 7622 §3.2)
    store.allow(ALICE, "Carol@xn--bcher-kva.example")
    assert store.is_authorized(ALICE, "carol@Bücher.Example/phone")
    assert [c.remote_jid for c in store.list_contacts(ALICE)][-1] == "carol@bücher.example"


@pytest.mark.parametrize("bad", ["fabrikam.example", "@fabrikam.example", "bob@", "a b@c.example"])
def test_malformed_addresses_are_refused(store: Any, bad: str) -> None:
    with pytest.raises(ValueError, match="local@domain"):
        store.allow(ALICE, bad)


def test_user_switch_overrides_default(store: Any) -> None:
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


def test_survives_restart(open_store: Opener) -> None:
    first = open_store()
    first.allow(ALICE, BOB)
    first.set_user_enabled("carol@contoso.example", False)
    first.close()
    second = open_store()
    assert second.is_authorized(ALICE, BOB)
    assert second.user_enabled("carol@contoso.example", default=True) is False
    assert second.schema_version() == SCHEMA_VERSION


def test_sqlite_wal_and_schema_table(tmp_path: Path) -> None:
    path = tmp_path / "gw.sqlite3"
    SqliteAuthorizationStore(path).close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = [v for (v,) in raw.execute("SELECT version FROM schema_version")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))


def _raw_execute(store: Any, statement: str, *params: object) -> None:
    """Run SQL on the store's database behind its back (as another program would)."""
    if isinstance(store, SqliteAuthorizationStore):
        with sqlite3.connect(store.path) as raw:
            raw.execute(statement.replace("%s", "?"), params)
        raw.close()
    else:
        import psycopg

        with psycopg.connect(store.url, autocommit=True) as raw:
            raw.execute(statement, params)


def test_newer_schema_is_refused(open_store: Opener) -> None:
    first = open_store()
    _raw_execute(first, "INSERT INTO schema_version VALUES (%s)", SCHEMA_VERSION + 1)
    first.close()
    with pytest.raises(StoreError, match="newer than this gateway supports"):
        open_store()


def test_same_numbered_migrations_for_both_engines() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))
    for migration in MIGRATIONS:
        assert len(migration.sqlite) == len(migration.postgresql), migration.version


def test_sqlite_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "gw.sqlite3"
    path.write_bytes(b"this is not SQLite " * 100)
    with pytest.raises(StoreError, match=str(path)):
        SqliteAuthorizationStore(path)


def test_sqlite_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot open"):
        SqliteAuthorizationStore(tmp_path / "file" / "gw.sqlite3")  # parent is a file


def test_sqlite_locked_database_is_a_store_error(tmp_path: Path) -> None:
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


def test_sqlite_full_database_is_a_store_error(tmp_path: Path) -> None:
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


async def test_async_wrapper_runs_off_the_event_loop(open_store: Opener) -> None:
    store = open_store()
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


async def test_sqlite_async_wrapper_propagates_store_errors(tmp_path: Path) -> None:
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


def test_concurrent_processes_share_the_store(open_store: Opener) -> None:
    """A CLI process (or another node) writing while the daemon's store is open: the
    daemon sees the grant."""
    daemon = open_store()
    assert not daemon.is_authorized(ALICE, BOB)
    with open_store() as cli:
        cli.allow(ALICE, BOB)
    assert daemon.is_authorized(ALICE, BOB)


def test_presence_watches(store: Any) -> None:
    assert store.list_watches() == []
    store.add_watch("Bob@Fabrikam.example/phone", ALICE)
    store.add_watch(BOB, ALICE)  # the same subscription: kept once
    store.add_watch(BOB, "carol@contoso.example")
    assert store.list_watches() == [(BOB, ALICE), (BOB, "carol@contoso.example")]
    store.remove_watch(BOB, ALICE)
    store.remove_watch(BOB, ALICE)  # already gone: no error
    assert store.list_watches() == [(BOB, "carol@contoso.example")]


def test_sip_user_spellings(store: Any) -> None:
    """A SIP user part keeps the case the SIP side wrote, found from the bare JID."""
    assert store.spelling("jsmith@gw.example") is None
    store.remember_spelling("jsmith@gw.example", "JSmith")
    assert store.spelling("jsmith@gw.example") == "JSmith"
    assert store.spelling("JSMITH@gw.example") == "JSmith"
    store.remember_spelling("JSmith@gw.example", "JSMITH")  # re-spelled: the latest wins
    assert store.spelling("jsmith@gw.example") == "JSMITH"


def test_sqlite_version_1_database_is_migrated(tmp_path: Path) -> None:
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
        assert migrated.schema_version() == SCHEMA_VERSION == 5
        assert migrated.claim_watches(10.0) == []  # nothing to claim yet
        assert migrated.is_authorized(ALICE, BOB)
        migrated.add_watch(BOB, ALICE)
        assert migrated.list_watches() == [(BOB, ALICE)]


def test_postgresql_version_1_database_is_migrated(postgres_server: Any) -> None:
    """The same numbered migrations on PostgreSQL: a version-1 database keeps its data."""
    import psycopg

    from gateway.store.postgresql import PostgresAuthorizationStore

    url = postgres_server.create_database()
    with psycopg.connect(url, autocommit=True) as raw:
        raw.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        raw.execute("INSERT INTO schema_version VALUES (1)")
        for statement in MIGRATIONS[0].postgresql:
            raw.execute(statement)
        raw.execute("INSERT INTO authorizations VALUES (%s, %s, '2026-01-01', 'cli')",
                    (ALICE, BOB))
    with PostgresAuthorizationStore(url) as migrated:
        assert migrated.schema_version() == SCHEMA_VERSION
        assert migrated.is_authorized(ALICE, BOB)
        migrated.add_watch(BOB, ALICE)
        assert migrated.list_watches() == [(BOB, ALICE)]


# -- cluster membership and watch ownership (both engines) ------------------------------


def _report(node_id: str, state: str = RUNNING, **changes: Any) -> NodeReport:
    fields = {"node_id": node_id, "addresses": f"{node_id}.gw.example:5269",
              "started_at": "2026-12-02T10:00:00+00:00", "state": state, "sessions": 2,
              "queued": 0, "watches": 1, "pid": 4242,
              "config": json.dumps({"domains": ["contoso.example"]})}
    fields.update(changes)
    return NodeReport(**fields)


def test_heartbeats_list_nodes_with_their_age(open_store: Opener) -> None:
    a, b = open_store(node_id="a"), open_store(node_id="b")
    a.heartbeat(_report("a"))
    b.heartbeat(_report("b", sessions=7))
    b.heartbeat(_report("b", sessions=9))  # replaces its row
    nodes = a.list_nodes()
    assert [n.report.node_id for n in nodes] == ["a", "b"]
    assert nodes[1].report == _report("b", sessions=9)
    assert all(0 <= n.age_seconds < 5 for n in nodes)
    assert [n.status(lease=10) for n in nodes] == [RUNNING, RUNNING]
    assert a.forget_node("b") is True and a.forget_node("b") is False
    assert [n.report.node_id for n in b.list_nodes()] == ["a"]


def test_node_status_is_dead_after_the_lease() -> None:
    assert node_status(RUNNING, 3.0, lease=10) == RUNNING
    assert node_status(DRAINING, 3.0, lease=10) == DRAINING
    assert node_status(RUNNING, 10.5, lease=10) == "dead"
    assert node_status(STOPPED, 100.0, lease=10) == STOPPED


def test_watches_belong_to_the_node_that_made_them(open_store: Opener) -> None:
    a, b = open_store(node_id="a"), open_store(node_id="b")
    a.add_watch(BOB, ALICE)
    b.add_watch("carol@fabrikam.example", ALICE)
    assert a.list_watches() == [(BOB, ALICE)]
    assert b.list_watches() == [("carol@fabrikam.example", ALICE)]
    b.add_watch(BOB, ALICE)  # the XMPP user subscribed again through node b
    assert a.list_watches() == [] and len(b.list_watches()) == 2


def test_watches_of_a_dead_node_are_claimed_once(open_store: Opener) -> None:
    """A node stops heart-beating: after the lease, exactly one survivor takes each of its
    watches; watches of live nodes are never taken."""
    dead, b, c = open_store(node_id="dead"), open_store(node_id="b"), open_store(node_id="c")
    for node in (dead, b, c):
        node.heartbeat(_report(node.node_id))
    for index in range(20):
        dead.add_watch(f"user{index}@fabrikam.example", ALICE)
    c.add_watch(BOB, ALICE)
    assert b.claim_watches(lease=10) == []  # everybody alive
    time.sleep(1.2)
    b.heartbeat(_report("b"))
    c.heartbeat(_report("c"))
    results: dict[str, list[tuple[str, str]]] = {}

    def claim(node: Any) -> None:
        results[node.node_id] = node.claim_watches(lease=1.0)

    threads = [threading.Thread(target=claim, args=(node,)) for node in (b, c)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    claimed = results["b"] + results["c"]
    assert sorted(claimed) == sorted((f"user{i}@fabrikam.example", ALICE) for i in range(20))
    assert len(set(claimed)) == 20  # nobody twice
    assert dead.list_watches() == []
    assert (BOB, ALICE) in c.list_watches()  # a live node's watch stays where it is


def test_released_watches_are_claimed_by_a_survivor(open_store: Opener) -> None:
    draining, survivor = open_store(node_id="a"), open_store(node_id="b")
    draining.heartbeat(_report("a", DRAINING))
    survivor.heartbeat(_report("b"))
    draining.add_watch(BOB, ALICE)
    assert survivor.claim_watches(lease=10) == []  # a draining node still holds them
    assert draining.release_watches() == 1
    assert survivor.claim_watches(lease=10) == [(BOB, ALICE)]
    assert survivor.list_watches() == [(BOB, ALICE)]


def test_watches_from_before_clusters_are_claimed(open_store: Opener) -> None:
    """Rows without an owner (written by a gateway before migration 3) go to the first
    node that claims: a single node restarting gets its subscriptions back."""
    store = open_store(node_id="gw1")
    _raw_execute(store, "INSERT INTO presence_watches (watcher, sip_user, since)"
                 " VALUES (%s, %s, '2026-01-01')", BOB, ALICE)
    assert store.list_watches() == []
    assert store.claim_watches(lease=10) == [(BOB, ALICE)]
    assert store.list_watches() == [(BOB, ALICE)]


# -- PostgreSQL only: connection loss, change notification -------------------------------


def test_postgresql_unreachable_is_a_clear_store_error() -> None:
    from gateway.store.postgresql import PostgresAuthorizationStore
    from testbed.dnsmasq import free_port

    port = free_port(kind=1)
    started = time.monotonic()
    with pytest.raises(StoreError, match=rf"postgresql://gw@127.0.0.1:{port}/x") as caught:
        PostgresAuthorizationStore(f"postgresql://gw:s3cret@127.0.0.1:{port}/x", timeout=1.0)
    assert "s3cret" not in str(caught.value)  # the password never reaches a log
    assert time.monotonic() - started < 10


@pytest.fixture
def open_pg_store(postgres_server: Any) -> Iterator[Opener]:
    """Like ``open_store``, PostgreSQL only."""
    from gateway.store.postgresql import PostgresAuthorizationStore

    url = postgres_server.create_database()
    opened: list[Any] = []

    def factory(**options: Any) -> Any:
        opened.append(PostgresAuthorizationStore(url, **options))
        return opened[-1]

    yield factory
    for store in opened:
        store.close()


def test_postgresql_failed_write_leaves_nothing(open_pg_store: Opener) -> None:
    """A write that fails inside its transaction (here a trigger raising, as a full disk or
    a constraint would) is rolled back: no row, no notification, the store still works."""
    store = open_pg_store()
    _raw_execute(store, "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
                 " $$ BEGIN RAISE EXCEPTION 'simulated: could not extend file'; END $$")
    _raw_execute(store, "CREATE TRIGGER refuse AFTER INSERT ON user_settings"
                 " FOR EACH ROW EXECUTE FUNCTION refuse()")
    seen: list[tuple[str, str]] = []
    store.on_change(lambda table, key: seen.append((table, key)))
    time.sleep(0.3)
    seen.clear()
    with pytest.raises(StoreError, match="write user setting failed: simulated"):
        store.set_user_enabled(ALICE, False)
    assert store.list_users() == []
    assert store.allow(ALICE, BOB)  # usable again
    time.sleep(0.5)
    assert ("user_settings", ALICE) not in seen


def test_postgresql_change_on_one_node_reaches_the_other_within_a_second(
        open_pg_store: Opener) -> None:
    """LISTEN/NOTIFY: node B hears of a grant or a user switch made on node A."""
    node_a, node_b = open_pg_store(node_id="a"), open_pg_store(node_id="b")
    heard = threading.Event()
    seen: list[tuple[str, str, float]] = []

    def listener(table: str, key: str) -> None:
        seen.append((table, key, time.monotonic()))
        if table:
            heard.set()

    node_b.on_change(listener)
    time.sleep(0.5)  # the listener connection is up
    for change, table in ((lambda: node_a.allow(ALICE, BOB), "authorizations"),
                          (lambda: node_a.revoke(ALICE, BOB), "authorizations"),
                          (lambda: node_a.set_user_enabled(ALICE, False), "user_settings")):
        heard.clear()
        seen.clear()
        started = time.monotonic()
        change()
        assert heard.wait(1.0), f"no notification for {table} within 1 s"
        assert (seen[-1][0], seen[-1][1]) == (table, ALICE)
        assert seen[-1][2] - started < 1.0
    heard.clear()
    node_a.add_watch(BOB, ALICE)  # watches and heartbeats are nobody's cache: no traffic
    node_a.heartbeat(_report("a"))
    time.sleep(0.3)
    assert not heard.is_set()


def test_postgresql_restart_fails_requests_then_recovers(postgres_server: Any) -> None:
    """The database restarts: calls meanwhile raise a clear StoreError quickly, nothing is
    half-written, and the same store object works again once the server is back — its
    change listener reconnects too and says "drop every cache"."""
    from gateway.store.postgresql import PostgresAuthorizationStore

    url = postgres_server.create_database()
    store = PostgresAuthorizationStore(url, node_id="a", timeout=2.0)
    other = None
    dropped = threading.Event()
    try:
        store.allow(ALICE, BOB)
        store.on_change(lambda table, key: dropped.set() if table == "" else None)
        time.sleep(0.5)
        postgres_server.stop(signal.SIGINT)
        with pytest.raises(StoreError, match=r"PostgreSQL unreachable|terminat|connection"):
            store.is_authorized(ALICE, BOB)
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"unreachable|connection"):
            store.allow(ALICE, "zed@fabrikam.example")
        assert time.monotonic() - started < 1.5  # known down: fail fast, not after timeout
        postgres_server.start()
        dropped.clear()
        deadline = time.monotonic() + 30
        while True:
            try:
                assert store.is_authorized(ALICE, BOB)
                break
            except StoreError:
                assert time.monotonic() < deadline, "store did not reconnect in 30 s"
                time.sleep(0.2)
        assert [c.remote_jid for c in store.list_contacts(ALICE)] == [BOB]
        assert dropped.wait(10), "the change listener did not report its reconnection"
        other = PostgresAuthorizationStore(url, node_id="b")
        heard = threading.Event()
        store.on_change(lambda table, key: heard.set() if table == "user_settings" else None)
        time.sleep(0.5)
        other.set_user_enabled(ALICE, False)
        assert heard.wait(5), "no notification after the reconnection"
    finally:
        if postgres_server.process is None:
            postgres_server.start()
        store.close()
        if other is not None:
            other.close()
