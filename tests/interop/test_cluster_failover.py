"""Two gateway nodes for one domain (docs/deploy.md), end to end in a network namespace.

    Prosody a.example (127.0.0.2) ──S2S── _xmpp-server._tcp.gw.example:
                                            node a  xmpp1.gw.example 127.0.0.4:5269
                                            node b  xmpp2.gw.example 127.0.0.6:5269
                                          both: store.url → PostgreSQL (in the namespace)
    Kamailio 5.6 (127.0.0.4:5070), dispatcher set 1 = 127.0.0.4:5062, 127.0.0.6:5062
    SIP UA sipuser@gw.example (registered at Kamailio)

Steps: messages and presence flow; node a is drained while messages flow both ways →
none lost, traffic continues on b, the SIP user's presence still reaches the XMPP
watcher; node a is started again and node b is killed with SIGKILL while messages flow →
Prosody reconnects to a via SRV, a takes over the XMPP→SIP presence subscription and the
phone's subscription to the XMPP user (its next change reaches the phone within the lease
+ 5 s, in the phone's dialog), and the test reports how many stanzas the hard kill lost.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from gateway.sip.pidf import parse_pidf
from testbed.cluster_node import KAMAILIO, NODE_IPS, SIP_PORT, ClusterNode
from testbed.dnsmasq import DnsmasqServer
from testbed.in_namespace import XmppUser, run_in_namespace
from testbed.kamailio import Kamailio
from testbed.namespace import IPS, Namespace
from testbed.pki import Pki
from testbed.postgres import PostgresServer, postgres_bindir
from testbed.servers import Prosody
from testbed.sip_ua import SipUserAgent

LEASE = 3.0
BEAT = 0.5


@pytest.fixture(scope="module")
def cluster_ns(ns: Namespace) -> Iterator[Namespace]:
    """The interop namespace with gw.example's SRV name pointing at two targets."""
    assert ns.dns is not None
    ns.dns.stop()
    records = {**{f"xmpp.{d}": ip for d, ip in IPS.items()}, **IPS,
               "xmpp1.gw.example": NODE_IPS["a"], "xmpp2.gw.example": NODE_IPS["b"]}
    srv = [(f"_xmpp-server._tcp.{d}", f"xmpp.{d}", 5269, 0, 5) for d in IPS if d != "gw.example"]
    srv += [("_xmpp-server._tcp.gw.example", "xmpp1.gw.example", 5269, 10, 50),
            ("_xmpp-server._tcp.gw.example", "xmpp2.gw.example", 5269, 10, 50)]
    ns.dns = DnsmasqServer(ns.workdir / "dns-cluster", address="127.0.0.53", port=53,
                           prefix=tuple(ns.exec), host_records=records,
                           srv_records=srv).start()
    subprocess.run([*ns.exec, "ip", "addr", "add", f"{NODE_IPS['b']}/8", "dev", "lo"],
                   capture_output=True, check=False)
    yield ns


@pytest.fixture(scope="module")
def database(cluster_ns: Namespace) -> Iterator[PostgresServer]:
    bindir = postgres_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL is not installed: run `make debs` (make test does)")
    server = PostgresServer(bindir, prefix=cluster_ns.exec)
    try:
        server.initdb()
        server.start()
        yield server
    finally:
        server.cleanup()


Node = ClusterNode


XMPP_URI = "sip:user@a.example"


def _active_and_available(notify: object) -> bool:
    state = (notify.get("subscription-state") or "").split(";")[0]  # type: ignore[attr-defined]
    return state == "active" and bool(notify.body) and \
        parse_pidf(notify.body).available  # type: ignore[attr-defined]


def notifier_holder(*nodes: Node) -> Node | None:
    """The live node whose SIP backend holds the SIP user's subscription to XMPP."""
    for node in nodes:
        if node.process is None or node.process.poll() is not None:
            continue
        answer = node.cli("status", "--json")
        if answer.returncode == 0 and json.loads(answer.stdout)["backend"].get("notifiers"):
            return node
    return None


def wait_answering(node: Node) -> None:
    """Wait until ``node`` answers on its admin socket (it was just started)."""
    deadline = time.monotonic() + 10
    while node.cli("status", "--json").returncode != 0:
        assert time.monotonic() < deadline, f"node {node.name} not answering"
        time.sleep(0.1)


def log_time(log: str, *words: str) -> float:
    """Epoch seconds of the first log line containing all ``words``."""
    from datetime import datetime

    for line in log.splitlines():
        if all(word in line for word in words):
            return datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
    raise AssertionError(f"no log line with {words}")


def holder_of_the_watch(*nodes: Node) -> Node:
    """The node whose SIP backend holds the XMPP->SIP subscription (``status --json``)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for node in nodes:
            answer = node.cli("status", "--json")
            if answer.returncode == 0 and json.loads(answer.stdout)["backend"].get("watches"):
                return node
        time.sleep(0.2)
    raise AssertionError("no node reports the SIP subscription")


def explain(nodes: list[Node], sip: Kamailio, prosody: Prosody) -> str:
    parts = [f"\n--- node {n.name} log (tail) ---\n{n.log[-3500:]}" for n in nodes]
    parts.append(f"\n--- kamailio log (tail) ---\n{sip.log()[-2000:]}")
    parts.append(f"\n--- prosody log (tail) ---\n{prosody.log[-2500:]}")
    return "".join(parts)


async def exchange(xmpp: XmppUser, ua: SipUserAgent, tag: str, count: int,
                   during: asyncio.Future[object] | None = None,
                   spacing: float = 0.05) -> tuple[set[str], set[str], list[int]]:
    """Send ``count`` messages each way, one pair every ``spacing`` s; return the bodies
    that were sent (XMPP→SIP, SIP→XMPP) and the SIP final statuses of the SIP sends."""
    to_sip, to_xmpp, statuses = set(), set(), []
    for index in range(count):
        body = f"{tag}-x2s-{index}"
        xmpp.client.send_message(mto="sipuser@gw.example", mbody=body, mtype="chat")
        to_sip.add(body)
        body = f"{tag}-s2x-{index}"
        response = await ua.send_message("sip:user@a.example", body)
        statuses.append(response.status)
        to_xmpp.add(body)
        await asyncio.sleep(spacing)
    return to_sip, to_xmpp, statuses


async def collect(xmpp: XmppUser, ua: SipUserAgent, tag: str, to_sip: set[str],
                  to_xmpp: set[str], wait: float) -> tuple[set[str], set[str]]:
    """The bodies with ``tag`` that arrived on each side within ``wait`` seconds."""
    got_sip: set[str] = set()
    got_xmpp: set[str] = set()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and (got_sip != to_sip or got_xmpp != to_xmpp):
        while not ua.messages.empty():
            body = ua.messages.get_nowait().body.decode()
            if body.startswith(tag):
                got_sip.add(body)
        while not xmpp.messages.empty():
            message = xmpp.messages.get_nowait()
            if message["body"].startswith(tag) and message["type"] != "error":
                got_xmpp.add(message["body"])
        await asyncio.sleep(0.1)
    return got_sip, got_xmpp


def test_drain_then_hard_kill(cluster_ns: Namespace, pki: Pki,
                              database: PostgresServer) -> None:
    ns = cluster_ns
    prosody = Prosody(ns, pki, secure_auth=False, users=("user",)).start()
    workdir = ns.workdir / "kamailio-cluster"
    workdir.mkdir(exist_ok=True)
    sip = Kamailio(workdir, domain="gw.example", host=KAMAILIO[0], port=KAMAILIO[1],
                   gateway=(NODE_IPS["a"], SIP_PORT), prefix=ns.exec,
                   gateways=[(NODE_IPS["a"], SIP_PORT), (NODE_IPS["b"], SIP_PORT)])
    url = database.url("postgres")
    a = Node(ns, pki, "a", url)
    b = Node(ns, pki, "b", url)
    nodes = [a, b]
    report: dict[str, object] = {}
    roles: dict[str, str] = {}
    try:
        sip.start()
        a.start()
        b.start()

        async def scenario() -> None:
            ua = await SipUserAgent("sipuser", "gw.example", KAMAILIO, host=IPS["gw.example"]
                                    ).start()
            assert (await ua.register()).status == 200
            assert (await ua.publish("open", note="at my desk")).status == 200
            xmpp = await XmppUser("user@a.example", IPS["a.example"]).start()
            try:
                # -- messages and presence flow through the cluster
                sent = await exchange(xmpp, ua, "warmup", 4, spacing=0.2)
                got = await collect(xmpp, ua, "warmup", sent[0], sent[1], 20)
                assert got == (sent[0], sent[1]), f"warm-up lost {sent} vs {got}"
                xmpp.client.send_presence(pto="sipuser@gw.example", ptype="subscribe")
                await xmpp.presence_where(lambda p: p["from"] == "sipuser@gw.example/sip"
                                          and p["status"] == "at my desk", timeout=15)

                # -- drain the node holding Prosody's stream and the SIP subscription
                loop = asyncio.get_running_loop()
                first = await loop.run_in_executor(None, holder_of_the_watch, a, b)
                second = b if first is a else a
                roles["drained"], roles["killed"] = first.name, second.name
                drained = loop.run_in_executor(None, first.cli, "drain")
                traffic = asyncio.ensure_future(exchange(xmpp, ua, "drain", 40))
                to_sip, to_xmpp, statuses = await traffic
                result = await drained
                assert result.returncode == 0, result.stdout + result.stderr
                got_sip, got_xmpp = await collect(xmpp, ua, "drain", to_sip, to_xmpp, 20)
                report["drain_lost_xmpp_to_sip"] = len(to_sip - got_sip)
                report["drain_lost_sip_to_xmpp"] = len(to_xmpp - got_xmpp)
                report["drain_sip_statuses"] = sorted(set(statuses))
                assert to_sip == got_sip and to_xmpp == got_xmpp, report
                assert first.process is not None
                assert await loop.run_in_executor(None, first.process.wait, 20) == 0
                assert "watches_handed_over=1" in first.log and "inbound_closed=1" in first.log
                # the SIP user's presence still reaches the XMPP watcher (via the survivor)
                assert (await ua.publish("open", note="after drain")).status == 200
                await xmpp.presence_where(lambda p: p["from"] == "sipuser@gw.example/sip"
                                          and p["status"] == "after drain", timeout=15)

                # -- the drained node is back; the other is hard-killed while messages flow
                log_before = len(first.log)
                await loop.run_in_executor(None, first.start)
                status = await loop.run_in_executor(None, first.cli, "status", "--cluster")
                assert status.returncode == 0, status.stdout + status.stderr
                await asyncio.sleep(2 * BEAT)
                # The SIP user's own subscription to the XMPP user. Prosody's stream now
                # goes to `second` (`first` was drained), so a SUBSCRIBE the dispatcher
                # gives to `first` only becomes active if `second` forwards Prosody's
                # presence to it; the last one must land on `second`, the node to kill.
                await loop.run_in_executor(None, wait_answering, second)
                holders: list[str] = []
                for _attempt in range(8):
                    answer = await ua.subscribe(XMPP_URI)
                    assert answer.status in (200, 202), answer
                    await ua.notify_where(_active_and_available, timeout=15)
                    holder = await loop.run_in_executor(None, notifier_holder, a, b)
                    assert holder is not None
                    holders.append(holder.name)
                    if holder is second and first.name in holders:
                        break
                    await ua.subscribe(XMPP_URI, expires=0)
                    await asyncio.sleep(0.3)
                else:
                    raise AssertionError(f"SIP subscriptions landed on {holders}")
                report["sip_subscription_holders"] = holders
                traffic = asyncio.ensure_future(exchange(xmpp, ua, "kill", 40))
                await asyncio.sleep(0.5)
                killed_at = time.time()
                await loop.run_in_executor(None, second.kill)
                # The XMPP user's next change reaches the phone, whose subscription was
                # held by the killed node, without the phone doing anything: the
                # survivor claims the stored dialog after the lease, probes the user,
                # and NOTIFYs the phone in the same dialog.
                changed_at = time.time()
                xmpp.client.send_presence(pstatus="changed after the kill")
                seen = await ua.notify_where(
                    lambda n: bool(n.body) and parse_pidf(n.body).note ==
                    "changed after the kill", timeout=LEASE + 5)
                report["phone_saw_the_change_after_kill_s"] = round(
                    time.time() - changed_at, 2)
                assert seen.call_id == ua.dialogs[XMPP_URI].call_id  # the same dialog
                to_sip, to_xmpp, statuses = await traffic
                got_sip, got_xmpp = await collect(xmpp, ua, "kill", to_sip, to_xmpp, 30)
                report["kill_lost_xmpp_to_sip"] = sorted(to_sip - got_sip)
                report["kill_lost_sip_to_xmpp"] = sorted(to_xmpp - got_xmpp)
                report["kill_sip_statuses"] = sorted(set(statuses))
                # the phone's refresh fails (dead node: 408 from the proxy, or 481) and it
                # subscribes afresh through the proxy, landing on the survivor
                refresh = await ua.subscribe(XMPP_URI)
                report["sip_refresh_after_kill"] = refresh.status
                assert refresh.status in (408, 481), refresh
                ua.dialogs.pop(XMPP_URI, None)
                fresh = await ua.subscribe(XMPP_URI)
                assert fresh.status in (200, 202), fresh
                await ua.notify_where(_active_and_available, timeout=15)
                assert await loop.run_in_executor(None, notifier_holder, a, b) is first
                # after the takeover everything flows through the survivor
                sent = await exchange(xmpp, ua, "after", 5, spacing=0.2)
                got = await collect(xmpp, ua, "after", sent[0], sent[1], 20)
                assert got == (sent[0], sent[1]), f"after the kill: {sent} vs {got}"
                assert (await ua.publish("open", note="after kill")).status == 200
                await xmpp.presence_where(lambda p: p["from"] == "sipuser@gw.example/sip"
                                          and p["status"] == "after kill",
                                          timeout=LEASE + 15)
                after_restart = first.log[log_before:]
                claimed = log_time(after_restart, "cluster.watches_claimed")
                report["watch_taken_over_after_kill_s"] = round(claimed - killed_at, 2)
                assert claimed - killed_at <= LEASE + 2 * BEAT + 1.0, report
                inbound = log_time(after_restart, "s2s.authenticated", "direction=inbound")
                report["prosody_reconnected_after_kill_s"] = round(inbound - killed_at, 2)
                # Prosody found the survivor through the other SRV target
                assert "direction=inbound" in after_restart and "peer=a.example" in \
                    after_restart, after_restart[-2000:]
                assert "cluster.watches_claimed" in after_restart
            finally:
                await xmpp.stop()
                await ua.close()

        try:
            run_in_namespace(ns.name, scenario, timeout=240)
        except BaseException as exc:
            raise AssertionError(f"{exc!r}\nreport: {report}{explain(nodes, sip, prosody)}"
                                 ) from exc
        print(f"cluster interop report: {roles} {report}")
    finally:
        for node in nodes:
            node.stop()
        sip.stop()
        prosody.stop()
