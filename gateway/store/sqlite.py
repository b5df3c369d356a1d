"""SQLite implementation of :class:`~gateway.store.protocols.Store`.

Why SQLite: embedded (``make run`` needs nothing else), transactional, and safe for the
one daemon plus occasional ``xmpp-gateway contacts``/``users`` CLI processes that share
the file. Choices:

* **WAL journal** (``PRAGMA journal_mode=WAL``): the CLI can write while the gateway reads,
  readers never block; ``synchronous=FULL`` because grants are rare and must survive a
  power cut, not only a crash.
* **busy timeout**: a writer waits up to ``busy_timeout`` seconds for another process'
  write lock instead of failing at once; after that the caller gets :class:`StoreError`.
* **schema version table + ordered migrations** (:data:`MIGRATIONS`): opening an older
  file upgrades it inside one transaction; a file newer than this code is refused rather
  than misread.
* **one connection, one lock**: every method is short and synchronous and serialised by a
  :class:`threading.Lock`, so the object may be used from any single thread at a time —
  the CLI calls it directly, the daemon through
  :class:`gateway.store.threaded.AsyncAuthorizationStore`, which runs each call in one
  dedicated worker thread so that an ``fsync`` or a lock wait never stalls the event loop.
* every :class:`sqlite3.Error`/:class:`OSError` becomes :class:`StoreError` naming the file
  and the operation (disk full, read-only file system, locked database, not a database).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from gateway.store import notifiers
from gateway.store.authorizations import (
    Authorization,
    StoreError,
    UserSetting,
    normalize_bare_jid,
)
from gateway.store.membership import NodeReport, NodeState, node_status
from gateway.store.notifiers import NotifierRecord, as_row, from_row
from gateway.store.protocols import ChangeListener
from gateway.store.schema import MIGRATIONS, SCHEMA_VERSION, newer_schema_message

T = TypeVar("T")



# Shared with the PostgreSQL store (which has %s placeholders natively).
_UPSERT_NODE = (
    "INSERT INTO cluster_nodes (node_id, addresses, started_at, last_seen, state, sessions,"
    " queued, watches, pid, config) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (node_id) DO UPDATE SET addresses = excluded.addresses,"
    " started_at = excluded.started_at, last_seen = excluded.last_seen,"
    " state = excluded.state, sessions = excluded.sessions, queued = excluded.queued,"
    " watches = excluded.watches, pid = excluded.pid, config = excluded.config"
)
_SELECT_NODES = (
    "SELECT node_id, addresses, started_at, state, sessions, queued, watches, pid, config,"
    " ? - last_seen FROM cluster_nodes ORDER BY node_id"
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class SqliteAuthorizationStore:
    """The authorization store in one SQLite file (created with its directory if missing)."""

    engine = "sqlite"

    def __init__(self, path: Path | str, *, busy_timeout: float = 5.0,
                 node_id: str = "local") -> None:
        self.path = Path(path)
        self.node_id = node_id
        self._lock = threading.Lock()
        try:
            if str(self.path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path,
                timeout=busy_timeout,
                isolation_level=None,  # explicit BEGIN/COMMIT below
                check_same_thread=False,  # guarded by self._lock
            )
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open authorization store {self.path}: {exc}") from exc
        try:
            self._run("set up", self._setup)
        except StoreError:
            self._db.close()
            raise

    # -- plumbing ----------------------------------------------------------------------

    def _run(self, what: str, operation: Callable[[], T]) -> T:
        with self._lock:
            try:
                return operation()
            except sqlite3.Error as exc:
                raise StoreError(f"authorization store {self.path}: {what} failed: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _setup(self) -> None:
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() not in ("wal", "memory"):
            raise sqlite3.OperationalError(f"could not enable WAL (journal_mode is {mode})")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT max(version) FROM schema_version").fetchone()
            current = row[0] or 0
            if current > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(newer_schema_message(current))
            for migration in MIGRATIONS:
                if migration.version > current:
                    for statement in migration.statements(self.engine):
                        db.execute(statement)
                    db.execute("INSERT INTO schema_version (version) VALUES (?)",
                               (migration.version,))

    def schema_version(self) -> int:
        return self._run(
            "read schema version",
            lambda: self._db.execute("SELECT max(version) FROM schema_version").fetchone()[0],
        )

    # -- authorizations ------------------------------------------------------------------

    def is_authorized(self, local_user: str, remote_jid: str) -> bool:
        key = (normalize_bare_jid(local_user), normalize_bare_jid(remote_jid))
        return self._run(
            "read authorization",
            lambda: (
                self._db.execute(
                    "SELECT 1 FROM authorizations WHERE local_user = ? AND remote_jid = ?", key
                ).fetchone()
                is not None
            ),
        )

    def allow(self, local_user: str, remote_jid: str, source: str = "cli") -> bool:
        row = (normalize_bare_jid(local_user), normalize_bare_jid(remote_jid), _now(), source)

        def insert() -> bool:
            with self._write() as db:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO authorizations"
                    " (local_user, remote_jid, granted_at, source) VALUES (?, ?, ?, ?)",
                    row,
                )
                return cursor.rowcount == 1

        return self._run("record authorization", insert)

    def allow_many(self, pairs: list[tuple[str, str]], source: str = "cli") -> None:
        """Record several authorizations in one transaction: a presence storm records
        thousands at once, and one synchronous commit each made the store the bottleneck."""
        now = _now()
        rows = [(normalize_bare_jid(local), normalize_bare_jid(remote), now, source)
                for local, remote in pairs]

        def insert() -> None:
            with self._write() as db:
                db.executemany(
                    "INSERT OR IGNORE INTO authorizations"
                    " (local_user, remote_jid, granted_at, source) VALUES (?, ?, ?, ?)",
                    rows,
                )

        self._run("record authorizations", insert)

    def revoke(self, local_user: str, remote_jid: str) -> bool:
        key = (normalize_bare_jid(local_user), normalize_bare_jid(remote_jid))

        def delete() -> bool:
            with self._write() as db:
                cursor = db.execute(
                    "DELETE FROM authorizations WHERE local_user = ? AND remote_jid = ?", key
                )
                return cursor.rowcount == 1

        return self._run("revoke authorization", delete)

    def list_contacts(self, local_user: str) -> list[Authorization]:
        user = normalize_bare_jid(local_user)
        rows = self._run(
            "list authorizations",
            lambda: self._db.execute(
                "SELECT local_user, remote_jid, granted_at, source FROM authorizations"
                " WHERE local_user = ? ORDER BY remote_jid",
                (user,),
            ).fetchall(),
        )
        return [Authorization(*row) for row in rows]

    # -- per-user switch -------------------------------------------------------------------

    def user_enabled(self, local_user: str, default: bool) -> bool:
        user = normalize_bare_jid(local_user)
        row = self._run(
            "read user setting",
            lambda: self._db.execute(
                "SELECT enabled FROM user_settings WHERE local_user = ?", (user,)
            ).fetchone(),
        )
        return default if row is None else bool(row[0])

    def set_user_enabled(self, local_user: str, enabled: bool | None) -> None:
        user = normalize_bare_jid(local_user)

        def write() -> None:
            with self._write() as db:
                if enabled is None:
                    db.execute("DELETE FROM user_settings WHERE local_user = ?", (user,))
                else:
                    db.execute(
                        "INSERT INTO user_settings (local_user, enabled, updated_at)"
                        " VALUES (?, ?, ?) ON CONFLICT (local_user) DO UPDATE"
                        " SET enabled = excluded.enabled, updated_at = excluded.updated_at",
                        (user, int(enabled), _now()),
                    )

        self._run("write user setting", write)

    def list_users(self) -> list[UserSetting]:
        rows = self._run(
            "list user settings",
            lambda: self._db.execute(
                "SELECT local_user, enabled, updated_at FROM user_settings ORDER BY local_user"
            ).fetchall(),
        )
        return [UserSetting(user, bool(enabled), updated) for user, enabled, updated in rows]

    # -- presence subscriptions to SIP users ------------------------------------------------

    def add_watch(self, watcher: str, sip_user: str) -> None:
        row = (normalize_bare_jid(watcher), normalize_bare_jid(sip_user), _now(), self.node_id)

        def insert() -> None:
            with self._write() as db:
                db.execute("INSERT INTO presence_watches (watcher, sip_user, since, owner)"
                           " VALUES (?, ?, ?, ?) ON CONFLICT (watcher, sip_user)"
                           " DO UPDATE SET owner = excluded.owner", row)

        self._run("record presence subscription", insert)

    def remove_watch(self, watcher: str, sip_user: str) -> None:
        key = (normalize_bare_jid(watcher), normalize_bare_jid(sip_user))

        def delete() -> None:
            with self._write() as db:
                db.execute("DELETE FROM presence_watches WHERE watcher = ? AND sip_user = ?",
                           key)

        self._run("remove presence subscription", delete)

    def list_watches(self) -> list[tuple[str, str]]:
        rows = self._run(
            "list presence subscriptions",
            lambda: self._db.execute(
                "SELECT watcher, sip_user FROM presence_watches WHERE owner = ?"
                " ORDER BY sip_user, watcher", (self.node_id,)
            ).fetchall(),
        )
        return [(watcher, sip_user) for watcher, sip_user in rows]

    # -- SIP user spellings (gateway.sip.spellings) ------------------------------------------

    def remember_spelling(self, folded: str, spelled: str) -> None:
        row = (folded.lower(), spelled, _now())

        def upsert() -> None:
            with self._write() as db:
                db.execute("INSERT INTO sip_user_spellings (folded, spelled, seen_at)"
                           " VALUES (?, ?, ?) ON CONFLICT (folded) DO UPDATE SET"
                           " spelled = excluded.spelled, seen_at = excluded.seen_at", row)

        self._run("record a SIP user's spelling", upsert)

    def spelling(self, folded: str) -> str | None:
        row = self._run("read a SIP user's spelling", lambda: self._db.execute(
            "SELECT spelled FROM sip_user_spellings WHERE folded = ?", (folded.lower(),)
        ).fetchone())
        return row[0] if row else None

    # -- cluster membership (one host sharing the file; see gateway.store.membership) ------

    def heartbeat(self, report: NodeReport) -> None:
        row = (report.node_id, report.addresses, report.started_at, time.time(), report.state,
               report.sessions, report.queued, report.watches, report.pid, report.config)

        def upsert() -> None:
            with self._write() as db:
                db.execute(_UPSERT_NODE.replace("%s", "?"), row)

        self._run("write heartbeat", upsert)

    def list_nodes(self) -> list[NodeState]:
        rows = self._run(
            "list cluster nodes",
            lambda: self._db.execute(_SELECT_NODES, (time.time(),)).fetchall())
        return [NodeState(NodeReport(*row[:-1]), float(row[-1])) for row in rows]

    def forget_node(self, node_id: str) -> bool:
        def delete() -> bool:
            with self._write() as db:
                return db.execute("DELETE FROM cluster_nodes WHERE node_id = ?",
                                  (node_id,)).rowcount == 1

        return self._run("forget cluster node", delete)

    def claim_watches(self, lease: float) -> list[tuple[str, str]]:
        def claim() -> list[tuple[str, str]]:
            with self._write() as db:
                live = self._live_nodes(db, lease)
                orphans = [(w, u, o) for w, u, o in db.execute(
                               "SELECT watcher, sip_user, owner FROM presence_watches")
                           if o not in live]
                db.executemany("UPDATE presence_watches SET owner = ? WHERE watcher = ? AND"
                               " sip_user = ? AND owner = ?",
                               [(self.node_id, w, u, o) for w, u, o in orphans])
                return sorted((w, u) for w, u, _ in orphans)

        return self._run("claim presence subscriptions", claim)

    def release_watches(self) -> int:
        def release() -> int:
            with self._write() as db:
                return db.execute("UPDATE presence_watches SET owner = '' WHERE owner = ?",
                                  (self.node_id,)).rowcount

        return self._run("hand over presence subscriptions", release)

    # -- phones' subscriptions to XMPP contacts (gateway.store.notifiers) ----------------

    def save_notifiers(self, records: list[NotifierRecord]) -> None:
        rows = [as_row(record, self.node_id) for record in records]

        def upsert() -> None:
            with self._write() as db:
                db.executemany(notifiers.UPSERT.replace("%s", "?"), rows)

        self._run("record phones' presence subscriptions", upsert)

    def remove_notifiers(self, call_ids: list[str]) -> None:
        def delete() -> None:
            with self._write() as db:
                db.executemany("DELETE FROM presence_notifiers WHERE call_id = ?",
                               [(call_id,) for call_id in call_ids])

        self._run("remove phones' presence subscriptions", delete)

    def list_notifiers(self) -> list[NotifierRecord]:
        rows = self._run("list phones' presence subscriptions", lambda: self._db.execute(
            f"SELECT {notifiers.COLUMNS} FROM presence_notifiers WHERE owner = ?"
            " ORDER BY call_id", (self.node_id,)).fetchall())
        return [from_row(row) for row in rows]

    def claim_notifiers(self, lease: float) -> list[NotifierRecord]:
        def claim() -> list[NotifierRecord]:
            with self._write() as db:
                live = self._live_nodes(db, lease)
                orphans = [row for row in db.execute(
                    f"SELECT {notifiers.COLUMNS}, owner FROM presence_notifiers")
                    if row[-1] not in live]
                db.executemany("UPDATE presence_notifiers SET owner = ? WHERE call_id = ?"
                               " AND owner = ?",
                               [(self.node_id, row[0], row[-1]) for row in orphans])
                return [from_row(row) for row in sorted(orphans)]

        return self._run("claim phones' presence subscriptions", claim)

    def _live_nodes(self, db: sqlite3.Connection, lease: float) -> set[str]:
        now = time.time()
        live = {node for node, state, seen in db.execute(
                    "SELECT node_id, state, last_seen FROM cluster_nodes")
                if node_status(state, now - seen, lease) not in ("dead", "stopped")}
        live.add(self.node_id)
        return live

    def publish(self, topic: str, payload: str) -> None:
        """One process per SQLite file: there are no other nodes to tell."""

    def on_change(self, listener: ChangeListener) -> None:
        """SQLite has no change notification across processes: the router's short cache
        lifetime (USER_CACHE_SECONDS) bounds staleness instead."""

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SqliteAuthorizationStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
