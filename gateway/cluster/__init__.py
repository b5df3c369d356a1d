"""The gateway as one node of several serving the same domains on a shared store.

* :mod:`~gateway.cluster.member` — heartbeat, claims of dead nodes' watches, fencing;
* :mod:`~gateway.cluster.forwarding` — presence between nodes, change notifications;
* :mod:`~gateway.cluster.drain` — a planned restart without losing a stanza;
* :mod:`~gateway.cluster.fingerprint` — what the nodes must agree on.
"""

from __future__ import annotations

from gateway.cluster.drain import drain
from gateway.cluster.fingerprint import compare_fingerprints, config_fingerprint
from gateway.cluster.forwarding import PresenceForwarding, listen_for_changes
from gateway.cluster.member import RECONCILE_EVERY, ClusterMember, ClusterStore
from gateway.store.membership import DRAINING, RUNNING, STOPPED

__all__ = ["DRAINING", "RECONCILE_EVERY", "RUNNING", "STOPPED", "ClusterMember",
           "ClusterStore", "PresenceForwarding", "compare_fingerprints", "config_fingerprint",
           "drain", "listen_for_changes"]
