"""``xmpp-gateway drain``, ``forget-node``, ``status --cluster`` and ``check config
--cluster``: several nodes serving one domain (docs/deploy.md, Several nodes for one
domain).

``status --cluster`` and ``check config --cluster`` read the shared store directly (the
cluster table every node heartbeats into), so they work from any host with the
configuration, also when the local node is down. ``drain`` asks the local node, through
its admin socket, to hand its work over and stop, and waits until it has.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.cli.main import config_parent


def register(subparsers: Any) -> None:
    drain = subparsers.add_parser(
        "drain", parents=[config_parent()],
        help="stop taking new work, hand SIP watches to another node, finish the queues, "
             "exit (a planned restart of one cluster node)")
    drain.add_argument("--no-wait", action="store_true",
                       help="return once draining started instead of when the node exited")
    drain.set_defaults(func=_drain)
    forget = subparsers.add_parser(
        "forget-node", parents=[config_parent()],
        help="remove a dead or stopped node from the cluster table (status --cluster)")
    forget.add_argument("node", help="its cluster.node_id")
    forget.set_defaults(func=_forget_node)


def _shared_store(config: Any) -> Any:
    """The configured store if it is the shared (PostgreSQL) one; None after saying why."""
    from gateway.store import StoreError, open_authorization_store

    if not config.store.url:
        print("error: store.url is not set: this gateway keeps its state in its own SQLite "
              "file and is not part of a cluster", file=sys.stderr)
        return None
    try:
        return open_authorization_store(config.store, node_id=config.cluster.node_id or "cli")
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _cluster_nodes(config: Any) -> list[Any] | None:
    """The rows of the shared store's cluster table; None after saying why not."""
    from gateway.store import StoreError

    store = _shared_store(config)
    if store is None:
        return None
    try:
        return list(store.list_nodes())
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    finally:
        store.close()


def cluster_status(args: argparse.Namespace) -> int:
    """``status --cluster``: every node in the cluster table with its state."""
    from gateway.cli.common import load_or_report

    config = load_or_report(args)
    if config is None:
        return 2
    nodes = _cluster_nodes(config)
    if nodes is None:
        return 1
    lease = config.cluster.lease
    rows = [{**_row(node), "status": node.status(lease)} for node in nodes]
    if getattr(args, "json", False):
        print(json.dumps({"lease": lease, "nodes": rows}, indent=2))
    else:
        alive = sum(1 for r in rows if r["status"] in ("running", "draining"))
        print(f"cluster: {len(rows)} node(s), {alive} alive (lease {lease:g} s)")
        header = ("NODE", "STATE", "LAST SEEN", "UP SINCE", "SESSIONS", "QUEUED", "WATCHES",
                  "PID", "ADDRESSES")
        table = [header] + [
            (r["node"], r["status"], f"{r['age_seconds']:.1f}s ago", r["started_at"],
             str(r["sessions"]), str(r["queued"]), str(r["watches"]), str(r["pid"]),
             r["addresses"]) for r in rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]
        for line in table:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    return 0 if any(r["status"] == "running" for r in rows) else 1


def _row(node: Any) -> dict[str, Any]:
    report = node.report
    return {"node": report.node_id, "state": report.state, "age_seconds": node.age_seconds,
            "started_at": report.started_at, "sessions": report.sessions,
            "queued": report.queued, "watches": report.watches, "pid": report.pid,
            "addresses": report.addresses}


def check_cluster(config: Any) -> int:
    """``check config --cluster``: do the nodes in the cluster table run with the same
    domains, partners and dialback secret (by digest) as this configuration?"""
    from gateway.cluster import compare_fingerprints, config_fingerprint

    nodes = _cluster_nodes(config)
    if nodes is None:
        return 1
    mine = config_fingerprint(config)
    problems = 0
    if not mine["secret"]:
        print("cluster: dialback.secret is empty in this configuration: every node must "
              "share one secret")
        problems += 1
    if not nodes:
        print("cluster: no node has heartbeated into the store yet (start the nodes first)")
        return 1
    for node in nodes:
        status = node.status(config.cluster.lease)
        try:
            theirs = json.loads(node.report.config)
        except ValueError:
            theirs = {}
        found = compare_fingerprints(mine, theirs)
        label = f"node {node.report.node_id} ({status})"
        if found:
            problems += len(found)
            for text in found:
                print(f"cluster: {label} {text}")
        else:
            print(f"cluster: {label} agrees (domains, {mine['partner_count']} partners, "
                  "dialback secret)")
    print("cluster: OK" if not problems else f"cluster: {problems} problem(s)")
    return 0 if not problems else 1


def _forget_node(args: argparse.Namespace) -> int:
    """Only a node the others consider dead or stopped: a live node would write its row
    again at its next heartbeat anyway, and forgetting it would hide it meanwhile."""
    from gateway.cli.common import load_or_report
    from gateway.store import StoreError

    config = load_or_report(args)
    if config is None:
        return 2
    store = _shared_store(config)
    if store is None:
        return 1
    try:
        nodes = {n.report.node_id: n for n in store.list_nodes()}
        node = nodes.get(args.node)
        if node is None:
            print(f"error: no node {args.node!r} in the cluster table "
                  f"(known: {', '.join(nodes) or 'none'})", file=sys.stderr)
            return 1
        status = node.status(config.cluster.lease)
        if status not in ("dead", "stopped"):
            print(f"error: node {args.node} is {status} (last heartbeat "
                  f"{node.age_seconds:.1f} s ago); drain or stop it first", file=sys.stderr)
            return 1
        store.forget_node(args.node)
        print(f"node {args.node} ({status}) removed from the cluster table")
        return 0
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _drain(args: argparse.Namespace) -> int:
    from gateway.cli.common import load_or_report
    from gateway.net.admin import query

    config = load_or_report(args)
    if config is None:
        return 2
    try:
        answer = query(config.admin_socket, "drain")
    except OSError as exc:
        print(f"xmpp-gateway: no gateway answering on {config.admin_socket} "
              f"({exc.strerror or exc}); is it running with this configuration?",
              file=sys.stderr)
        return 1
    if not answer.get("ok"):
        print(f"drain refused: {answer.get('error')}", file=sys.stderr)
        return 1
    print(f"node {answer.get('node')} is draining (up to {answer.get('timeout')} s)")
    if args.no_wait:
        return 0
    deadline = datetime.now(UTC) + timedelta(seconds=float(answer.get("timeout", 30)) + 15)
    while datetime.now(UTC) < deadline:
        try:
            query(config.admin_socket, "status", timeout=2.0)
        except OSError:
            print(f"node {answer.get('node')} drained and stopped")
            return 0
        time.sleep(0.2)
    print(f"node {answer.get('node')} still running after the drain timeout", file=sys.stderr)
    return 1
