"""Cluster membership and ownership of SIP presence watches, kept in the shared store.

Several gateway nodes serving one domain share one PostgreSQL database. Each
node writes a heartbeat row (:class:`NodeReport`) every ``cluster.heartbeat_interval``;
a node whose last heartbeat is older than ``cluster.lease`` is *dead* to the others
(:func:`node_status`, a pure function of the row and the database clock). Presence
watches (XMPP user → SIP user subscriptions) carry the id of the node that holds the SIP
dialog; when that node dies or drains, a survivor claims them
(:meth:`gateway.store.protocols.Membership.claim_watches`) and subscribes again.

Why the database and not a gossip protocol: the nodes already depend on it for the
contact rules, it gives one clock (``now()``) and atomic claims (``UPDATE … RETURNING``
under row locks), and a node that cannot reach it cannot apply the contact rules anyway.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# A node's own view of its state, written with each heartbeat.
RUNNING = "running"
DRAINING = "draining"  # accepts no new work, finishing its queues
STOPPED = "stopped"  # left cleanly
# What the others conclude when the heartbeats stop.
DEAD = "dead"


@dataclass(frozen=True, slots=True)
class NodeReport:
    """What a node says about itself in each heartbeat."""

    node_id: str
    addresses: str  # "host:port …" it listens on for S2S, and its SIP address
    started_at: str  # ISO 8601 UTC
    state: str
    sessions: int  # S2S streams
    queued: int  # stanzas waiting in its queues (its load)
    watches: int  # SIP presence subscriptions it holds
    pid: int
    config: str  # JSON: what `check config --cluster` compares (see config_fingerprint)


@dataclass(frozen=True, slots=True)
class NodeState:
    """A heartbeat row as another node sees it: the report and how old it is."""

    report: NodeReport
    age_seconds: float  # database clock minus the last heartbeat

    def status(self, lease: float) -> str:
        return node_status(self.report.state, self.age_seconds, lease)


def node_status(state: str, age_seconds: float, lease: float) -> str:
    """``dead`` once the heartbeat is older than the lease, unless the node said it left."""
    if state == STOPPED:
        return STOPPED
    return DEAD if age_seconds > lease else state


def config_fingerprint(domains: tuple[str, ...], partner_digest: str, secret_digest: str,
                       ) -> str:
    """The JSON a node publishes so that ``check config --cluster`` can compare nodes
    without any node revealing its dialback secret (only a digest leaves the host)."""
    return json.dumps({"domains": sorted(domains), "partners": partner_digest,
                       "secret": secret_digest}, sort_keys=True)
