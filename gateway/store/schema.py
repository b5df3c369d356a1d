"""The store's schema as numbered migrations, one list for both engines.

Why one list: a SQLite file and a PostgreSQL database written by the same gateway version
have the same ``schema_version`` and the same tables, so an operator can move from one to
the other (or read either) knowing exactly what is in it. Each migration carries the SQL
for both dialects side by side; they differ only where the engines do (SQLite's
``WITHOUT ROWID`` tables, PostgreSQL's ``double precision``), never in columns or keys.

Append only; never edit a released migration — a database remembers which numbers it
has run, not what they said.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    why: str
    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...]

    def statements(self, engine: str) -> tuple[str, ...]:
        return self.sqlite if engine == "sqlite" else self.postgresql


_AUTHORIZATIONS = """CREATE TABLE authorizations (
       local_user TEXT NOT NULL,
       remote_jid TEXT NOT NULL,
       granted_at TEXT NOT NULL,
       source TEXT NOT NULL,
       PRIMARY KEY (local_user, remote_jid)
   )"""
_USER_SETTINGS = """CREATE TABLE user_settings (
       local_user TEXT PRIMARY KEY NOT NULL,
       enabled INTEGER NOT NULL CHECK (enabled IN (0, 1)),
       updated_at TEXT NOT NULL
   )"""
_PRESENCE_WATCHES = """CREATE TABLE presence_watches (
       watcher TEXT NOT NULL,
       sip_user TEXT NOT NULL,
       since TEXT NOT NULL,
       PRIMARY KEY (watcher, sip_user)
   )"""
# Cluster membership (docs/deploy.md, several nodes): one row per gateway node, rewritten
# by its heartbeat. last_seen is seconds since the epoch by the *database's* clock where
# the engine has one (PostgreSQL), so that nodes with skewed clocks still agree on who is
# alive.
_CLUSTER_NODES = """CREATE TABLE cluster_nodes (
       node_id TEXT PRIMARY KEY NOT NULL,
       addresses TEXT NOT NULL,
       started_at TEXT NOT NULL,
       last_seen {real} NOT NULL,
       state TEXT NOT NULL,
       sessions INTEGER NOT NULL,
       queued INTEGER NOT NULL,
       watches INTEGER NOT NULL,
       pid INTEGER NOT NULL,
       config TEXT NOT NULL
   )"""
# Which node holds each XMPP->SIP presence subscription ('' = nobody: handed over by a
# draining node or written before clusters existed); a survivor claims the watches of
# nodes whose heartbeat is older than the lease.
_WATCH_OWNER = "ALTER TABLE presence_watches ADD COLUMN owner TEXT NOT NULL DEFAULT ''"
_WATCH_OWNER_INDEX = "CREATE INDEX presence_watches_owner ON presence_watches (owner)"
# Phones' subscription dialogs to XMPP contacts, resumed after a restart or by the node that
# takes over (gateway.store.notifiers says why each column is there).
_PRESENCE_NOTIFIERS = """CREATE TABLE presence_notifiers (
       call_id TEXT PRIMARY KEY NOT NULL,
       sip_watcher TEXT NOT NULL,
       xmpp_contact TEXT NOT NULL,
       local_tag TEXT NOT NULL,
       remote TEXT NOT NULL,
       remote_target TEXT NOT NULL,
       route_set TEXT NOT NULL,
       cseq INTEGER NOT NULL,
       expires_at {real} NOT NULL,
       approved INTEGER NOT NULL CHECK (approved IN (0, 1)),
       owner TEXT NOT NULL
   )"""
_NOTIFIER_OWNER_INDEX = "CREATE INDEX presence_notifiers_owner ON presence_notifiers (owner)"

# SIP user parts as the SIP side spells them (RFC 3261 §19.1.4: user parts compare
# case-sensitively), keyed by their lower-case form: XMPP servers lower-case localparts
# (RFC 7622 §3.3), so a reply to ``JSmith`` arrives for ``jsmith``.
_SIP_USER_SPELLINGS = """CREATE TABLE sip_user_spellings (
       folded TEXT PRIMARY KEY NOT NULL,
       spelled TEXT NOT NULL,
       seen_at TEXT NOT NULL
   )"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "authorizations and per-user federation switches",
              sqlite=(_AUTHORIZATIONS + " WITHOUT ROWID", _USER_SETTINGS + " WITHOUT ROWID"),
              postgresql=(_AUTHORIZATIONS, _USER_SETTINGS)),
    # Presence subscriptions an XMPP contact holds to a SIP user, remembered so that the
    # SIP backend can subscribe again after a restart (the XMPP side still considers
    # itself subscribed and will not ask again).
    Migration(2, "presence watches",
              sqlite=(_PRESENCE_WATCHES + " WITHOUT ROWID",),
              postgresql=(_PRESENCE_WATCHES,)),
    Migration(3, "cluster membership and watch ownership",
              sqlite=(_CLUSTER_NODES.format(real="REAL") + " WITHOUT ROWID", _WATCH_OWNER,
                      _WATCH_OWNER_INDEX),
              postgresql=(_CLUSTER_NODES.format(real="double precision"), _WATCH_OWNER,
                          _WATCH_OWNER_INDEX)),
    Migration(4, "SIP user spellings",
              sqlite=(_SIP_USER_SPELLINGS + " WITHOUT ROWID",),
              postgresql=(_SIP_USER_SPELLINGS,)),
    Migration(5, "phones' presence subscriptions to XMPP contacts",
              sqlite=(_PRESENCE_NOTIFIERS.format(real="REAL") + " WITHOUT ROWID",
                      _NOTIFIER_OWNER_INDEX),
              postgresql=(_PRESENCE_NOTIFIERS.format(real="double precision"),
                          _NOTIFIER_OWNER_INDEX)),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def newer_schema_message(found: int) -> str:
    return (f"schema version {found} is newer than this gateway supports ({SCHEMA_VERSION}); "
            "upgrade the gateway")
