"""Phones' subscriptions to XMPP contacts in the store (gateway.store.notifiers), on both
engines: what a restarted gateway, or the node taking over from a dead one, resumes."""

from __future__ import annotations

import threading
import time
from typing import Any

from gateway.store.notifiers import NotifierRecord
from tests.unit.test_store import Opener, _report, engine, open_store  # noqa: F401 - fixtures

ALICE = "alice@contoso.example"
EXPIRES_AT = time.time() + 600


def record(index: int, **changes: Any) -> NotifierRecord:
    fields: dict[str, Any] = dict(
        call_id=f"call-{index}@10.0.0.7", sip_watcher=ALICE,
        xmpp_contact=f"contact{index}@fabrikam.example", local_tag=f"tag{index}",
        remote=f"<sip:{ALICE}>;tag=phone{index}", remote_target="sip:alice@10.0.0.7:5060",
        route_set=("<sip:10.0.0.1;lr>", "<sip:10.0.0.2;lr>"), cseq=100 + index,
        expires_at=EXPIRES_AT, approved=index % 2 == 0)
    fields.update(changes)
    return NotifierRecord(**fields)


def test_notifiers_are_saved_replaced_and_removed(open_store: Opener) -> None:  # noqa: F811
    store = open_store(node_id="a")
    first = [record(index) for index in range(3)]
    store.save_notifiers(first)
    assert store.list_notifiers() == first  # every field comes back as it went in
    refreshed = record(1, cseq=250, approved=True, remote_target="sip:alice@10.0.0.8:5060")
    store.save_notifiers([refreshed])
    assert store.list_notifiers() == [first[0], refreshed, first[2]]
    store.remove_notifiers([first[0].call_id, "unknown@nowhere"])
    assert store.list_notifiers() == [refreshed, first[2]]
    assert open_store(node_id="b").list_notifiers() == []  # another node's are not its own


def test_notifiers_of_a_dead_node_are_claimed_once(open_store: Opener) -> None:  # noqa: F811
    dead, b, c = (open_store(node_id=node) for node in ("dead", "b", "c"))
    for node in (dead, b, c):
        node.heartbeat(_report(node.node_id))
    dead.save_notifiers([record(index) for index in range(10)])
    c.save_notifiers([record(99)])
    assert b.claim_notifiers(lease=10) == []  # everybody alive
    time.sleep(1.2)
    b.heartbeat(_report("b"))
    c.heartbeat(_report("c"))
    results: dict[str, list[NotifierRecord]] = {}

    def claim(node: Any) -> None:
        results[node.node_id] = node.claim_notifiers(lease=1.0)

    threads = [threading.Thread(target=claim, args=(node,)) for node in (b, c)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    claimed = results["b"] + results["c"]
    assert sorted(r.call_id for r in claimed) == sorted(record(i).call_id for i in range(10))
    assert claimed[0] in [record(i) for i in range(10)]  # the whole dialog comes along
    assert dead.list_notifiers() == []
    assert record(99) in c.list_notifiers()  # a live node's dialog stays where it is


def test_a_restarted_node_finds_its_own_notifiers(open_store: Opener) -> None:  # noqa: F811
    before = open_store(node_id="gw1")
    before.save_notifiers([record(1)])
    before.close()
    assert open_store(node_id="gw1").list_notifiers() == [record(1)]
