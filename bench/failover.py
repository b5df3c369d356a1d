"""Failover under load: two gateway nodes for gw.example on one PostgreSQL store, a real
Prosody 0.12 with stream management (``smacks_s2s_resend``), Kamailio's dispatcher over
both nodes; SIGKILL one node while 2,000 messages a second flow, and count by index.

    Prosody a.example ──S2S (SASL EXTERNAL, XEP-0198)── node a 127.0.0.4 ┐ SRV gw.example
       c2s writer / receiver                            node b 127.0.0.6 ┘ (equal weight)
    Kamailio 5.6 (dispatcher: a, b; failover on 408/503) ── SIP UA user@gw.example

One run, one direction:

- ``xmpp_sip``: a c2s writer on a.example sends N messages to user@gw.example at RATE;
  after ``kill_after`` seconds the node holding Prosody's stream gets SIGKILL; the SIP
  sink counts the indices that arrive, the writer the indices that came back as errors;
- ``sip_xmpp``: the SIP load (bench/relay_sip.py, retransmitting as a phone does) sends
  N MESSAGEs to user@a.example through Kamailio; a node gets SIGKILL the same way; the
  c2s receiver counts indices, the SIP load the indices answered with a failure.

``lost`` = sent minus (delivered or refused): neither delivered nor told to the sender. It must
be 0. ``duplicates`` = deliveries beyond one per index (a stanza delivered by the dead node
whose acknowledgement never left, re-sent by Prosody; or a MESSAGE the dead node had
passed on without answering, re-sent by Kamailio). ``recovery_s`` = the longest pause in
arrivals at the receiver (the steady flow stops at the kill and resumes on the survivor).
The killed node is started again before the next run, which kills the other one.

Used by ``python -m bench.run --only-failover`` (``make bench``'s failover row, 10 runs
each way) and by tests/interop/test_failover_zero_loss.py (one run each way).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from bench.relay_child import Child
from testbed.cluster_node import KAMAILIO, NODE_IPS, SIP_PORT, ClusterNode
from testbed.dnsmasq import DnsmasqServer
from testbed.kamailio import Kamailio
from testbed.namespace import IPS, Namespace
from testbed.pki import Pki
from testbed.postgres import PostgresServer, postgres_bindir
from testbed.servers import Prosody

QUIET = 8.0  # a receiver that saw nothing new for this long has all it will get
# Prosody keeps at most this many unacknowledged stanzas per stream and forgets the oldest
# beyond (util/smqueue); at 2,000 msg/s the default 500 is a quarter of a second of
# traffic, so the partner of a gateway cluster raises it (docs/delivery.md).
PROSODY_SMACKS_QUEUE = 10_000


def failover_node(ns: Namespace, pki: Pki, name: str, store_url: str) -> ClusterNode:
    """A node whose partner a.example must use SASL EXTERNAL (the only method after
    which Prosody offers stream management)."""
    return ClusterNode(ns, pki, name, store_url, prefix="failover-node",
                       partner="{domain: a.example, type: federated, tls: required, "
                               "sasl: required, dialback: false}",
                       limits="{negotiation_timeout: 10, max_connections_per_ip: 1000}")


class FailoverWorld:
    """DNS with two SRV targets for gw.example, PostgreSQL, Prosody (smacks), Kamailio with
    the dispatcher over both nodes, and the two nodes; started in ``ns``, stopped by PID."""

    def __init__(self, ns: Namespace, pki: Pki, *, resend: bool = True) -> None:
        self.ns, self.pki = ns, pki
        self.logs = ns.workdir / "failover"
        self.logs.mkdir(exist_ok=True)
        self.prosody = Prosody(ns, pki, "a.example", log_level="info",
                               users=("writer", "user"), smacks=True, smacks_resend=resend,
                               extra=(f"smacks_max_queue_size = {PROSODY_SMACKS_QUEUE}",))
        self.kamailio = Kamailio(self.logs, domain="gw.example", host=KAMAILIO[0],
                                 port=KAMAILIO[1], gateway=(NODE_IPS["a"], SIP_PORT),
                                 prefix=ns.exec, debug=1,
                                 gateways=[(NODE_IPS["a"], SIP_PORT), (NODE_IPS["b"], SIP_PORT)])
        self.database: PostgresServer | None = None
        self.nodes: dict[str, ClusterNode] = {}

    def _dns(self) -> None:
        ns = self.ns
        if ns.dns is not None:
            ns.dns.stop()
        records = {**{f"xmpp.{d}": ip for d, ip in IPS.items()}, **IPS,
                   "xmpp1.gw.example": NODE_IPS["a"], "xmpp2.gw.example": NODE_IPS["b"]}
        srv = [(f"_xmpp-server._tcp.{d}", f"xmpp.{d}", 5269, 0, 5) for d in IPS
               if d != "gw.example"]
        srv += [("_xmpp-server._tcp.gw.example", "xmpp1.gw.example", 5269, 10, 50),
                ("_xmpp-server._tcp.gw.example", "xmpp2.gw.example", 5269, 10, 50)]
        ns.dns = DnsmasqServer(ns.workdir / "dns-failover", address="127.0.0.53", port=53,
                               prefix=tuple(ns.exec), host_records=records,
                               srv_records=srv).start()
        subprocess.run([*ns.exec, "ip", "addr", "add", f"{NODE_IPS['b']}/8", "dev", "lo"],
                       capture_output=True, check=False)

    @contextlib.contextmanager
    def running(self) -> Iterator[FailoverWorld]:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed: run `make debs`")
        self._dns()
        self.database = PostgresServer(bindir, prefix=self.ns.exec)
        try:
            self.database.initdb()
            self.database.start()
            url = self.database.url("postgres")
            self.nodes = {name: failover_node(self.ns, self.pki, name, url) for name in NODE_IPS}
            self.prosody.start()
            self.kamailio.start()
            for node in self.nodes.values():
                node.start()
            yield self
        finally:
            for node in self.nodes.values():
                node.stop()
            self.kamailio.stop()
            self.prosody.stop()
            self.database.cleanup()

    def child(self, module: str, *args: Any) -> Child:
        return Child(self.ns.exec, module, list(args), self.logs / f"{module}.log")

    def holder(self) -> ClusterNode | None:
        """The live node with Prosody's authenticated inbound stream."""
        for node in self.nodes.values():
            if not node.alive:
                continue
            status = node.status() or {}
            if any(s["direction"] == "inbound" and s["peer_domain"] == "a.example"
                   and s["method"] for s in status.get("sessions", [])):
                return node
        return None

    def revive(self) -> None:
        for node in self.nodes.values():
            if not node.alive:
                node.start()
        # both answering again and back in the dispatcher (its ping every second)
        time.sleep(3.0)


def run(world: FailoverWorld, direction: str, rate: int, seconds: float,
        kill_after: float, victim: str | None = None, quiet: float = QUIET) -> dict[str, Any]:
    """One run (see the module docstring); the node killed is the holder of Prosody's
    stream for ``xmpp_sip``, ``victim`` (or node a) for ``sip_xmpp``."""
    n = int(rate * seconds)
    limit = 30 + n / 1000
    if direction == "xmpp_sip" and world.holder() is None:
        warm_up(world)  # the last kill took Prosody's stream: it reconnects on use
    with contextlib.ExitStack() as children:
        if direction == "xmpp_sip":
            sink = children.enter_context(world.child(
                "bench.sip_sink", KAMAILIO[0], KAMAILIO[1], "user", "gw.example", 0,
                limit + 60, "--control"))
            sink.line(30)
            writer = children.enter_context(world.child(
                "bench.relay_xmpp", "write", IPS["a.example"], "a.example", "writer",
                "user@gw.example", n, rate, limit))
            writer.line(30)
            holder = world.holder()
            if holder is None:
                raise RuntimeError("no node holds Prosody's stream after a warm-up")
            writer.send("go")
            time.sleep(kill_after)
            killed_at = time.monotonic()
            holder.kill()
            sent = writer.line(limit + 10)
        else:
            sink = children.enter_context(world.child(
                "bench.relay_xmpp", "sink", IPS["a.example"], "a.example", "user", limit + 60))
            sink.line(30)
            holder = world.nodes[victim or "a"]
            load = children.enter_context(world.child(
                "bench.relay_sip", "message", KAMAILIO[0], KAMAILIO[1], n, rate, 2 * rate,
                limit, "user@a.example"))
            time.sleep(kill_after)
            killed_at = time.monotonic()
            holder.kill()
            sent = load.line(limit + 40)
        # Wait for quiet, not for a count: duplicates would make a count come early.
        sink.send(f"{10**9} {quiet} {limit}")
        arrived = sink.line(limit + 90)
        if direction == "xmpp_sip":
            writer.send("stop")
            answers = writer.line(30)
            refused = set(answers["refused_indices"])
        else:  # a final failure or no final answer at all (Timer F): the phone knows
            refused = set(sent["refused_indices"]) | set(sent["timed_out_indices"])
    indices = set(arrived["indices"])
    deliveries = arrived["received"]
    return {
        "direction": direction, "rate": rate, "sent": sent["sent"], "killed": holder.name,
        "delivered": len(indices), "refused": len(refused),
        "lost": sent["sent"] - len(indices | refused),
        "lost_indices": sorted(set(range(sent["sent"])) - indices - refused)[:20],
        "duplicates": deliveries - len(indices),
        "refused_but_delivered": len(refused & indices),
        "recovery_s": arrived.get("max_gap_s"),
        "kill_at_s": round(killed_at - sent.get("started_at", killed_at), 2)
        if "started_at" in sent else None,
    }


def warm_up(world: FailoverWorld) -> None:
    """One message each way, so Prosody's stream to a node and the SIP user exist."""
    result = run_quiet(world, "xmpp_sip", 5)
    if result["delivered"] != 5:
        raise RuntimeError(f"failover warm-up failed: {result}\n" + "\n".join(
            n.log[-2000:] for n in world.nodes.values()))


def run_quiet(world: FailoverWorld, direction: str, n: int) -> dict[str, Any]:
    """``n`` messages with no kill (warm-up, and a check after a run)."""
    limit = 30.0
    with contextlib.ExitStack() as children:
        sink = children.enter_context(world.child(
            "bench.sip_sink", KAMAILIO[0], KAMAILIO[1], "user", "gw.example", 0, limit + 30,
            "--control"))
        sink.line(30)
        writer = children.enter_context(world.child(
            "bench.relay_xmpp", "write", IPS["a.example"], "a.example", "writer",
            "user@gw.example", n, 0, limit))
        writer.line(30)
        writer.send("go")
        sent = writer.line(limit + 10)
        sink.send(f"{sent['sent']} 3 {limit}")
        arrived = sink.line(limit + 30)
        writer.send("stop")
        writer.line(30)
    return {"sent": sent["sent"], "delivered": len(set(arrived["indices"]))}


def failover_runs(ns: Namespace, pki: Pki, runs: int, rate: int = 2000, seconds: float = 3.0,
                  kill_after: float = 1.0, resend: bool = True, quiet: float = QUIET,
                  directions: tuple[str, ...] = ("xmpp_sip", "sip_xmpp")) -> dict[str, Any]:
    """``runs`` runs each way in one world; every run's figures and the totals."""
    world = FailoverWorld(ns, pki, resend=resend)
    results: dict[str, Any] = {"rate": rate, "seconds": seconds, "resend": resend,
                               "runs": {d: [] for d in directions}}
    with world.running():
        warm_up(world)
        for index in range(runs):
            for direction in directions:
                victim = "ab"[index % 2]
                outcome = run(world, direction, rate, seconds, kill_after, victim, quiet)
                print(f"failover {direction} run {index + 1}/{runs}: {outcome}",
                      file=sys.stderr, flush=True)
                results["runs"][direction].append(outcome)
                world.revive()
    for direction, outcomes in results["runs"].items():
        recoveries = [o["recovery_s"] for o in outcomes if o["recovery_s"] is not None]
        results[direction] = {
            "runs": len(outcomes), "sent": sum(o["sent"] for o in outcomes),
            "lost": sum(o["lost"] for o in outcomes),
            "refused": sum(o["refused"] for o in outcomes),
            "duplicates": sum(o["duplicates"] for o in outcomes),
            "recovery_s_max": max(recoveries) if recoveries else None,
            "recovery_s_median": sorted(recoveries)[len(recoveries) // 2] if recoveries
            else None}
    return results


def failover_markdown(results: dict[str, Any]) -> list[str]:
    """The failover row of docs/benchmarks.md."""
    lines = ["## Failover: SIGKILL of a gateway node under load", "",
             f"Two gateway nodes on one PostgreSQL store behind one SRV name and Kamailio's "
             f"dispatcher; Prosody 0.12 with stream management (`smacks_s2s_resend = "
             f"{str(results['resend']).lower()}`); {results['rate']:,} msg/s for "
             f"{results['seconds']:g} s per run, the node holding the stream killed 1 s in, "
             "then started again (bench/failover.py). Lost = neither delivered nor answered "
             "with an error, counted by index at the receivers; recovery = the longest pause "
             "in arrivals.", "",
             "| Direction | Runs | Sent | Lost | Errors to the sender | Duplicates | "
             "Recovery (median / max) |", "|---|---|---|---|---|---|---|"]
    for direction, label in (("xmpp_sip", "XMPP → SIP"), ("sip_xmpp", "SIP → XMPP")):
        row = results.get(direction)
        if not row:
            continue
        median, top = row["recovery_s_median"], row["recovery_s_max"]
        recovery = f"{median:.2f} s / {top:.2f} s" if median is not None else "—"
        lines.append(f"| {label} | {row['runs']} | {row['sent']:,} | {row['lost']} | "
                     f"{row['refused']} | {row['duplicates']} | {recovery} |")
    return [*lines, ""]
