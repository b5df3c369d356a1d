"""PostgreSQL implementation of the store, for several gateway nodes serving one domain.

Same Protocol (:class:`~gateway.store.protocols.Store`), same numbered migrations
(:mod:`gateway.store.schema`) and same results as the SQLite store: the whole store test
suite runs against both. Choices:

* **psycopg 3** (with ``psycopg_pool``): the maintained successor of psycopg2, by the same
  authors; synchronous calls fit the store's worker-thread model
  (:class:`~gateway.store.threaded.AsyncAuthorizationStore`), LISTEN/NOTIFY is built in
  (``Connection.notifies``), and the pool reconnects by itself with exponential backoff.
  asyncpg would need a second code path beside the synchronous one the CLI uses.
* **connection pool** (``store.pool_size``): the daemon's store worker, its heartbeat
  and the watch claims share it; every connection is checked when taken from the pool
  (``ConnectionPool.check_connection``), so one that died with a database restart is
  replaced instead of failing a request.
* **database down**: a call that gets no connection within ``store.timeout`` raises
  :class:`StoreError` ("PostgreSQL … unreachable"); while the database stays down, later
  calls wait only :data:`DOWN_WAIT` so that the router answers senders promptly with an
  error instead of queueing behind timeouts. The pool keeps reconnecting in the
  background (backoff up to ``reconnect_timeout``, then again on the next request).
  Every write is one transaction: a failure part-way leaves nothing half-written.
* **migrations** run under a transaction-scoped advisory lock, so two nodes starting at
  once do not both apply them.
* **cache invalidation**: each change to authorizations or user switches sends
  ``NOTIFY xmpp_gateway_changes, 'table:key'`` in its transaction (delivered on commit);
  a listener thread with its own connection calls the registered listeners, and after a
  reconnect calls them with ``("", "")`` (= drop everything) because notifications sent
  while it was away are lost.
* **clock**: heartbeats and lease checks use the database's clock
  (``clock_timestamp()``), never the nodes', so skewed node clocks do not kill nodes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from gateway.logs import log_event
from gateway.store import notifiers
from gateway.store.authorizations import (
    Authorization,
    StoreError,
    UserSetting,
    normalize_bare_jid,
)
from gateway.store.membership import NodeReport, NodeState
from gateway.store.notifiers import NotifierRecord, as_row, from_row
from gateway.store.protocols import ChangeListener
from gateway.store.schema import MIGRATIONS, SCHEMA_VERSION, newer_schema_message

log = logging.getLogger("gateway.store")

T = TypeVar("T")
CHANNEL = "xmpp_gateway_changes"
MIGRATION_LOCK = 0x786D7070  # pg_advisory_xact_lock key ("xmpp")
DOWN_WAIT = 0.25  # seconds a call waits for a connection while the database is known down
LISTEN_BACKOFF_MAX = 2.0  # a missed invalidation must not outlive an outage by long
_NOW = "extract(epoch from clock_timestamp())"


def describe_url(url: str) -> str:
    """``postgresql://user@host:port/db`` without the password, for messages and logs."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable URL)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    host = parts.get("host") or "localhost"
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{host}{port}/{parts.get('dbname', '')}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class PostgresAuthorizationStore:
    """The store in a PostgreSQL database shared by the nodes of one gateway."""

    engine = "postgresql"

    def __init__(self, url: str, *, node_id: str = "local", pool_size: int = 4,
                 timeout: float = 5.0, reconnect_timeout: float = 60.0) -> None:
        self.url = url
        self.where = describe_url(url)
        self.node_id = node_id
        self.timeout = timeout
        self._healthy = True
        self._listeners: list[ChangeListener] = []
        self._listener_thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._listening = threading.Event()
        connect_timeout = max(1, round(timeout))
        try:
            self._pool = ConnectionPool(
                url, min_size=1, max_size=max(1, pool_size), open=False, timeout=timeout,
                check=ConnectionPool.check_connection, reconnect_timeout=reconnect_timeout,
                kwargs={"autocommit": True, "connect_timeout": connect_timeout},
                name=f"gateway-store-{node_id}")
            self._pool.open(wait=True, timeout=timeout)
        except PoolTimeout as exc:
            self._pool.close()
            raise StoreError(f"cannot open authorization store {self.where}: no connection "
                             f"within {timeout:g} s ({exc})") from exc
        except psycopg.Error as exc:
            raise StoreError(f"cannot open authorization store {self.where}: {exc}") from exc
        try:
            self._run("set up", self._setup)
        except StoreError:
            self._pool.close()
            raise

    # -- plumbing ----------------------------------------------------------------------

    def _run(self, what: str, operation: Callable[[psycopg.Connection[Any]], T]) -> T:
        wait = self.timeout if self._healthy else min(DOWN_WAIT, self.timeout)
        try:
            with self._pool.connection(timeout=wait) as conn:
                result = operation(conn)
        except PoolTimeout as exc:
            self._healthy = False
            raise StoreError(f"authorization store {self.where}: {what} failed: PostgreSQL "
                             f"unreachable (no connection within {wait:g} s; reconnecting "
                             "in the background)") from exc
        except psycopg.OperationalError as exc:
            self._healthy = False
            raise StoreError(f"authorization store {self.where}: {what} failed: "
                             f"{_first_line(exc)}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"authorization store {self.where}: {what} failed: "
                             f"{_first_line(exc)}") from exc
        self._healthy = True
        return result

    def _setup(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            found = (current[0] if current else None) or 0
            if found > SCHEMA_VERSION:
                raise psycopg.DataError(newer_schema_message(found))
            for migration in MIGRATIONS:
                if migration.version > found:
                    for statement in migration.statements(self.engine):
                        conn.execute(statement)  # type: ignore[arg-type]
                    conn.execute("INSERT INTO schema_version (version) VALUES (%s)",
                                 (migration.version,))

    def schema_version(self) -> int:
        return self._run("read schema version", lambda conn: _one(
            conn, "SELECT max(version) FROM schema_version"))

    @staticmethod
    def _notify(conn: psycopg.Connection[Any], table: str, key: str) -> None:
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{table}:{key}"))

    # -- authorizations ------------------------------------------------------------------

    def is_authorized(self, local_user: str, remote_jid: str) -> bool:
        key = (normalize_bare_jid(local_user), normalize_bare_jid(remote_jid))
        return self._run("read authorization", lambda conn: conn.execute(
            "SELECT 1 FROM authorizations WHERE local_user = %s AND remote_jid = %s", key
        ).fetchone() is not None)

    def allow(self, local_user: str, remote_jid: str, source: str = "cli") -> bool:
        row = (normalize_bare_jid(local_user), normalize_bare_jid(remote_jid), _now(), source)

        def insert(conn: psycopg.Connection[Any]) -> bool:
            with conn.transaction():
                cursor = conn.execute(
                    "INSERT INTO authorizations (local_user, remote_jid, granted_at, source)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING", row)
                if cursor.rowcount == 1:
                    self._notify(conn, "authorizations", row[0])
                return cursor.rowcount == 1

        return self._run("record authorization", insert)

    def allow_many(self, pairs: list[tuple[str, str]], source: str = "cli") -> None:
        """Several authorizations in one transaction (a presence storm records thousands
        at once; one commit each would make the store the bottleneck)."""
        now = _now()
        rows = [(normalize_bare_jid(local), normalize_bare_jid(remote), now, source)
                for local, remote in pairs]

        def insert(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO authorizations (local_user, remote_jid, granted_at, source)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING", rows)
                for user in sorted({row[0] for row in rows}):
                    self._notify(conn, "authorizations", user)

        self._run("record authorizations", insert)

    def revoke(self, local_user: str, remote_jid: str) -> bool:
        key = (normalize_bare_jid(local_user), normalize_bare_jid(remote_jid))

        def delete(conn: psycopg.Connection[Any]) -> bool:
            with conn.transaction():
                cursor = conn.execute(
                    "DELETE FROM authorizations WHERE local_user = %s AND remote_jid = %s", key)
                if cursor.rowcount == 1:
                    self._notify(conn, "authorizations", key[0])
                return cursor.rowcount == 1

        return self._run("revoke authorization", delete)

    def list_contacts(self, local_user: str) -> list[Authorization]:
        user = normalize_bare_jid(local_user)
        rows = self._run("list authorizations", lambda conn: conn.execute(
            "SELECT local_user, remote_jid, granted_at, source FROM authorizations"
            " WHERE local_user = %s ORDER BY remote_jid", (user,)).fetchall())
        return [Authorization(*row) for row in rows]

    # -- per-user switch -------------------------------------------------------------------

    def user_enabled(self, local_user: str, default: bool) -> bool:
        user = normalize_bare_jid(local_user)
        row = self._run("read user setting", lambda conn: conn.execute(
            "SELECT enabled FROM user_settings WHERE local_user = %s", (user,)).fetchone())
        return default if row is None else bool(row[0])

    def set_user_enabled(self, local_user: str, enabled: bool | None) -> None:
        user = normalize_bare_jid(local_user)

        def write(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                if enabled is None:
                    conn.execute("DELETE FROM user_settings WHERE local_user = %s", (user,))
                else:
                    conn.execute(
                        "INSERT INTO user_settings (local_user, enabled, updated_at)"
                        " VALUES (%s, %s, %s) ON CONFLICT (local_user) DO UPDATE"
                        " SET enabled = excluded.enabled, updated_at = excluded.updated_at",
                        (user, int(enabled), _now()))
                self._notify(conn, "user_settings", user)

        self._run("write user setting", write)

    def list_users(self) -> list[UserSetting]:
        rows = self._run("list user settings", lambda conn: conn.execute(
            "SELECT local_user, enabled, updated_at FROM user_settings ORDER BY local_user"
        ).fetchall())
        return [UserSetting(user, bool(enabled), updated) for user, enabled, updated in rows]

    # -- presence subscriptions to SIP users ------------------------------------------------

    def add_watch(self, watcher: str, sip_user: str) -> None:
        row = (normalize_bare_jid(watcher), normalize_bare_jid(sip_user), _now(), self.node_id)
        self._run("record presence subscription", lambda conn: conn.execute(
            "INSERT INTO presence_watches (watcher, sip_user, since, owner)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (watcher, sip_user)"
            " DO UPDATE SET owner = excluded.owner", row))

    def remove_watch(self, watcher: str, sip_user: str) -> None:
        key = (normalize_bare_jid(watcher), normalize_bare_jid(sip_user))
        self._run("remove presence subscription", lambda conn: conn.execute(
            "DELETE FROM presence_watches WHERE watcher = %s AND sip_user = %s", key))

    def remember_spelling(self, folded: str, spelled: str) -> None:
        row = (folded.lower(), spelled, _now())
        self._run("record a SIP user's spelling", lambda conn: conn.execute(
            "INSERT INTO sip_user_spellings (folded, spelled, seen_at) VALUES (%s, %s, %s)"
            " ON CONFLICT (folded) DO UPDATE SET spelled = excluded.spelled,"
            " seen_at = excluded.seen_at", row))

    def spelling(self, folded: str) -> str | None:
        row = self._run("read a SIP user's spelling", lambda conn: conn.execute(
            "SELECT spelled FROM sip_user_spellings WHERE folded = %s", (folded.lower(),)
        ).fetchone())
        return row[0] if row else None

    def list_watches(self) -> list[tuple[str, str]]:
        rows = self._run("list presence subscriptions", lambda conn: conn.execute(
            "SELECT watcher, sip_user FROM presence_watches WHERE owner = %s"
            " ORDER BY sip_user, watcher", (self.node_id,)).fetchall())
        return [(watcher, sip_user) for watcher, sip_user in rows]

    # -- cluster membership ----------------------------------------------------------------

    def heartbeat(self, report: NodeReport) -> None:
        row = (report.node_id, report.addresses, report.started_at, report.state,
               report.sessions, report.queued, report.watches, report.pid, report.config)
        self._run("write heartbeat", lambda conn: conn.execute(
            "INSERT INTO cluster_nodes (node_id, addresses, started_at, last_seen, state,"
            f" sessions, queued, watches, pid, config) VALUES (%s, %s, %s, {_NOW}, %s, %s,"
            " %s, %s, %s, %s) ON CONFLICT (node_id) DO UPDATE SET"
            " addresses = excluded.addresses, started_at = excluded.started_at,"
            " last_seen = excluded.last_seen, state = excluded.state,"
            " sessions = excluded.sessions, queued = excluded.queued,"
            " watches = excluded.watches, pid = excluded.pid, config = excluded.config", row))

    def list_nodes(self) -> list[NodeState]:
        rows = self._run("list cluster nodes", lambda conn: conn.execute(
            "SELECT node_id, addresses, started_at, state, sessions, queued, watches, pid,"
            f" config, {_NOW} - last_seen FROM cluster_nodes ORDER BY node_id").fetchall())
        return [NodeState(NodeReport(*row[:-1]), float(row[-1])) for row in rows]

    def forget_node(self, node_id: str) -> bool:
        return self._run("forget cluster node", lambda conn: conn.execute(
            "DELETE FROM cluster_nodes WHERE node_id = %s", (node_id,)).rowcount == 1)

    def claim_watches(self, lease: float) -> list[tuple[str, str]]:
        # Row locks make the claim atomic: of two survivors updating the same row, the
        # second re-checks ``owner`` after the first commits and finds a live owner.
        rows = self._run("claim presence subscriptions", lambda conn: conn.execute(
            "UPDATE presence_watches SET owner = %(me)s WHERE owner <> %(me)s"
            " AND owner NOT IN (SELECT node_id FROM cluster_nodes WHERE state <> 'stopped'"
            f" AND {_NOW} - last_seen <= %(lease)s) RETURNING watcher, sip_user",
            {"me": self.node_id, "lease": lease}).fetchall())
        return sorted((watcher, sip_user) for watcher, sip_user in rows)

    def release_watches(self) -> int:
        return self._run("hand over presence subscriptions", lambda conn: conn.execute(
            "UPDATE presence_watches SET owner = '' WHERE owner = %s",
            (self.node_id,)).rowcount)

    # -- phones' subscriptions to XMPP contacts (gateway.store.notifiers) ----------------

    def save_notifiers(self, records: list[NotifierRecord]) -> None:
        rows = [as_row(record, self.node_id) for record in records]

        def upsert(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(notifiers.UPSERT, rows)

        self._run("record phones' presence subscriptions", upsert)

    def remove_notifiers(self, call_ids: list[str]) -> None:
        self._run("remove phones' presence subscriptions", lambda conn: conn.execute(
            "DELETE FROM presence_notifiers WHERE call_id = ANY(%s)", (list(call_ids),)))

    def list_notifiers(self) -> list[NotifierRecord]:
        rows = self._run("list phones' presence subscriptions", lambda conn: conn.execute(
            f"SELECT {notifiers.COLUMNS} FROM presence_notifiers WHERE owner = %s"
            " ORDER BY call_id", (self.node_id,)).fetchall())
        return [from_row(row) for row in rows]

    def claim_notifiers(self, lease: float) -> list[NotifierRecord]:
        # As claim_watches: row locks make the claim atomic between two survivors.
        rows = self._run("claim phones' presence subscriptions", lambda conn: conn.execute(
            "UPDATE presence_notifiers SET owner = %(me)s WHERE owner <> %(me)s"
            " AND owner NOT IN (SELECT node_id FROM cluster_nodes WHERE state <> 'stopped'"
            f" AND {_NOW} - last_seen <= %(lease)s) RETURNING {notifiers.COLUMNS}",
            {"me": self.node_id, "lease": lease}).fetchall())
        return [from_row(row) for row in sorted(rows)]

    # -- change notification ---------------------------------------------------------------

    def on_change(self, listener: ChangeListener) -> None:
        """Also waits (up to ``timeout``) until the LISTEN is in place, so that a change
        committed after this returns is never missed."""
        self._listeners.append(listener)
        if self._listener_thread is None:
            self._listener_thread = threading.Thread(
                target=self._listen, name="store-listen", daemon=True)
            self._listener_thread.start()
            self._listening.wait(self.timeout)

    def publish(self, topic: str, payload: str) -> None:
        """Send ``payload`` to every node's change listeners as ``(topic, payload)`` (a
        message bus over NOTIFY, e.g. XMPP presence for the node holding a SIP dialog).
        PostgreSQL limits a payload to 8000 bytes: larger ones raise StoreError."""
        if len(payload.encode()) + len(topic) + 1 >= 8000:
            raise StoreError(f"{topic} message of {len(payload.encode())} bytes is too large "
                             "for NOTIFY (8000 bytes)")
        self._run("publish to the other nodes", lambda conn: self._notify(conn, topic,
                                                                           payload))

    def _emit(self, table: str, key: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(table, key)
            except Exception:  # a listener's bug must not stop invalidation for the others
                log.exception("store change listener failed")

    def _listen(self) -> None:
        """LISTEN on its own connection; reconnect with exponential backoff."""
        delay = 0.25
        first = True
        while not self._closing.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True,
                                     connect_timeout=max(1, round(self.timeout))) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    if not first:
                        log_event(log, logging.INFO, "store.listen_restored", store=self.where)
                    # What changed before the LISTEN (while we were away, or between a
                    # cache filling and this first LISTEN) is unknown: drop everything.
                    self._emit("", "")
                    first, delay = False, 0.25
                    while not self._closing.is_set():
                        for notice in conn.notifies(timeout=0.5):
                            table, _, key = notice.payload.partition(":")
                            self._emit(table, key)
            except psycopg.Error as exc:
                self._listening.clear()
                if self._closing.is_set():
                    return
                first = False
                log_event(log, logging.WARNING, "store.listen_lost", store=self.where,
                          reason=_first_line(exc), retry_in=f"{delay:g}s")
                self._emit("", "")
                self._closing.wait(delay)
                delay = min(delay * 2, LISTEN_BACKOFF_MAX)

    def describe(self) -> dict[str, Any]:
        stats = self._pool.get_stats()
        return {"engine": self.engine, "url": self.where, "healthy": self._healthy,
                "pool_size": stats.get("pool_size", 0),
                "pool_available": stats.get("pool_available", 0)}

    def close(self) -> None:
        self._closing.set()
        if self._listener_thread is not None:
            self._listener_thread.join(timeout=3.0)
        self._pool.close(timeout=2.0)

    def __enter__(self) -> PostgresAuthorizationStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _one(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()  # type: ignore[arg-type]
    return row[0] if row else None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

