"""gateway.cluster: configuration fingerprints and the heartbeat loop's self-fencing.

The loop runs against a real SQLite store whose file another connection locks, which is
how a heartbeat really fails (the PostgreSQL side of the same loop is exercised by
tests/integration/test_cluster.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from gateway.cluster import ClusterMember, compare_fingerprints, config_fingerprint
from gateway.config.loader import load_config_text
from gateway.config.model import ClusterSettings
from gateway.store import AsyncAuthorizationStore, SqliteAuthorizationStore
from gateway.store.membership import RUNNING, NodeReport
from gateway.store.notifiers import NotifierRecord

CONFIG = """domains: [contoso.example]
dialback: {secret: s3cret}
partners:
  - {domain: fabrikam.example, type: federated}
  - {domain: tailspin.example, type: public-unverified, tls: required}
"""


def test_fingerprint_hides_the_secret_and_ignores_partner_order() -> None:
    config = load_config_text(CONFIG)
    fingerprint = config_fingerprint(config)
    assert "s3cret" not in json.dumps(fingerprint)
    assert fingerprint["domains"] == ["contoso.example"] and fingerprint["partner_count"] == 2
    reordered = dataclasses.replace(config, partners=tuple(reversed(config.partners)))
    assert compare_fingerprints(fingerprint, config_fingerprint(reordered)) == []


def test_fingerprint_differences_are_named() -> None:
    mine = config_fingerprint(load_config_text(CONFIG))
    other = load_config_text(CONFIG.replace("s3cret", "other").replace("tls: required",
                                                                         "tls: optional"))
    problems = compare_fingerprints(mine, config_fingerprint(other))
    assert len(problems) == 2
    assert problems[0].startswith("has different partner entries (2 partners")
    assert problems[1].startswith("uses a different dialback.secret")
    no_secret = load_config_text(CONFIG.replace("dialback: {secret: s3cret}\n", ""))
    assert compare_fingerprints(mine, config_fingerprint(no_secret)) == [
        "has no dialback.secret (a random one per start): keys it issues cannot be "
        "verified by other nodes"]
    elsewhere = load_config_text(CONFIG.replace("contoso.example", "northwind.example"))
    assert compare_fingerprints(mine, config_fingerprint(elsewhere))[0] == (
        "serves northwind.example (this configuration: contoso.example)")


class Watches:
    """The SIP side's watch dialogs, as the member sees them (a
    :class:`gateway.backend.WatchHolder`): what it was asked to take over or end."""

    def __init__(self, held: list[tuple[str, str]] | None = None) -> None:
        self.held = held if held is not None else []
        self.taken: list[list[tuple[str, str]]] = []
        self.dropped: list[list[tuple[str, str]]] = []
        self.dropped_all: list[bool] = []
        self.resumed: list[list[NotifierRecord]] = []  # phones' dialogs taken over
        self.notifiers_dropped = 0

    def held_watches(self) -> list[tuple[str, str]]:
        return list(self.held)

    def take_over_watches(self, pairs: Iterable[tuple[str, str]]) -> int:
        self.taken.append(list(pairs))
        return len(self.taken[-1])

    def drop_watches(self, pairs: Iterable[tuple[str, str]] | None = None) -> int:
        if pairs is None:
            self.dropped_all.append(True)
            return len(self.held)
        pairs = list(pairs)
        self.dropped.append(pairs)  # as SipBackend.drop_watches does
        self.held[:] = [w for w in self.held if (w[0].lower(), w[1].lower()) not in pairs]
        return len(pairs)

    def take_over_notifiers(self, records: Iterable[NotifierRecord]) -> int:
        self.resumed.append(list(records))
        return len(self.resumed[-1])

    def drop_notifiers(self) -> int:
        self.notifiers_dropped += 1
        return 0


def _report(state: str) -> NodeReport:
    return NodeReport("a", "127.0.0.1:5269", "2026-12-02T10:00:00+00:00", state, 0, 0, 0, 1,
                      "{}")


async def test_a_node_that_cannot_heartbeat_for_a_lease_fences_itself(tmp_path: Path) -> None:
    """The database refuses the heartbeat (locked past the busy timeout) for longer than
    the lease: the node drops its SIP watches, and takes back what is still its own when
    the heartbeat works again."""
    path = tmp_path / "gw.sqlite3"
    store = AsyncAuthorizationStore(SqliteAuthorizationStore(path, busy_timeout=0.05,
                                                             node_id="a"))
    watches = Watches()
    claimed, fenced = watches.taken, watches.dropped_all
    member = ClusterMember(store, ClusterSettings("a", heartbeat_interval=0.1, lease=0.4),
                           _report, watches)
    try:
        assert await member.start() == []
        await store.add_watch("bob@fabrikam.example", "alice@contoso.example")
        await member.tick()
        assert not fenced and claimed == []
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            await asyncio.sleep(0.25)
            assert not fenced  # late, but within the lease
            await asyncio.sleep(0.5)
            assert fenced == [True] and member.fenced
            assert watches.notifiers_dropped == 1  # the phones' dialogs too
        finally:
            other.execute("ROLLBACK")
            other.close()
        for _ in range(20):
            if claimed:
                break
            await asyncio.sleep(0.05)
        assert claimed == [[("bob@fabrikam.example", "alice@contoso.example")]]
        assert not member.fenced and member.state == RUNNING
    finally:
        await member.stop()
        await store.aclose()


async def test_dialogs_whose_row_went_away_are_ended(tmp_path: Path) -> None:
    """An unsubscribe handled by node b deletes the row of a watch node a holds: a ends
    its dialog after two consecutive checks (one could race the row being written)."""
    path = tmp_path / "gw.sqlite3"
    node_a = AsyncAuthorizationStore(SqliteAuthorizationStore(path, node_id="a"))
    node_b = SqliteAuthorizationStore(path, node_id="b")
    held = [("Bob@Fabrikam.example", "alice@contoso.example"),
            ("carol@fabrikam.example", "alice@contoso.example")]
    watches = Watches(held)
    lost = watches.dropped
    member = ClusterMember(node_a, ClusterSettings("a"), _report, watches)
    try:
        await node_a.add_watch(*held[0])
        await member.reconcile()
        await member.reconcile()
        assert lost == [[("carol@fabrikam.example", "alice@contoso.example")]]  # no row
        node_b.remove_watch(*held[0])  # the XMPP user unsubscribed through node b
        await member.reconcile()
        assert len(lost) == 1  # seen once: not yet
        await member.reconcile()
        assert lost[-1] == [("bob@fabrikam.example", "alice@contoso.example")]
    finally:
        node_b.close()
        await node_a.aclose()


async def test_a_dead_nodes_phone_subscriptions_are_resumed_here(tmp_path: Path) -> None:
    """A node stops heart-beating while it holds a phone's subscription to an XMPP
    contact: after the lease the member claims the stored dialog and hands it to the SIP
    side to go on notifying the phone."""
    path = tmp_path / "gw.sqlite3"
    dead = SqliteAuthorizationStore(path, node_id="dead")
    dead.heartbeat(dataclasses.replace(_report(RUNNING), node_id="dead"))
    record = NotifierRecord("c1@10.0.0.7", "alice@contoso.example", "bob@fabrikam.example",
                            "t1", "<sip:alice@contoso.example>;tag=p1",
                            "sip:alice@10.0.0.7:5060", (), 150, 4_000_000_000.0, True)
    dead.save_notifiers([record])
    dead.close()
    store = AsyncAuthorizationStore(SqliteAuthorizationStore(path, node_id="a"))
    watches = Watches()
    member = ClusterMember(store, ClusterSettings("a", heartbeat_interval=0.1, lease=0.3),
                           _report, watches)
    try:
        await member.start()
        await member.tick()
        assert watches.resumed == []  # the other node is alive
        await asyncio.sleep(0.4)
        await member.tick()
        assert watches.resumed == [[record]]
        assert await store.list_notifiers() == [record]  # this node's now
    finally:
        await member.stop()
        await store.aclose()
