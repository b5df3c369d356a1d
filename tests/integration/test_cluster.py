"""Two gateway nodes sharing one PostgreSQL store (docs/deploy.md), over real sockets.

A SIP user agent stands where the proxy and presence server are (as in
test_sip_backend.py); both nodes send their SIP requests to it. The UA answers over UDP to
``ua.proxy``, so a test points it at the node whose request it is answering.

* drain: node A hands its XMPP->SIP watch over; node B subscribes again at once; A answers
  new SIP requests with 503 while draining; A's row ends ``stopped``;
* hard kill: node A runs as its own ``xmpp-gateway run`` process and gets SIGKILL; B takes
  the watch over once A's lease has run out;
* a user switch changed on one node reaches the other node's router cache within 1 s;
* ``status --cluster`` and ``check config --cluster`` read the cluster table.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.main import main as cli_main
from gateway.config.model import (
    ClusterSettings,
    DialbackSettings,
    GatewayConfig,
    ListenAddress,
    PartnerPolicy,
    PartnerType,
    SipSettings,
    StoreSettings,
)
from gateway.daemon import Gateway
from gateway.dns.resolver import DnsPythonResolver
from gateway.policy.negotiation import Support
from gateway.sip.development import presence
from gateway.sip.message import SipRequest
from testbed.dnsmasq import free_port
from testbed.sip_ua import SipUserAgent, pidf
from tests.integration.test_sip_backend import answer_subscribe, notify_for

SIP_DOMAIN = "sip.example"
WATCH = ("bob@xmpp.example", "alice@sip.example")
LEASE = 1.5
BEAT = 0.25


def node_config(tmp_path: Path, pki: Any, name: str, url: str, ua_port: int,
                secret: str = "shared-secret") -> GatewayConfig:
    return GatewayConfig(
        domains=(SIP_DOMAIN,),
        partners=(PartnerPolicy("nowhere.example", PartnerType.FEDERATED, Support.OPTIONAL,
                                Support.OPTIONAL, True),),
        listen=(ListenAddress("127.0.0.1", free_port(kind=socket.SOCK_STREAM)),),
        tls=pki.tls_settings(SIP_DOMAIN),
        dialback=DialbackSettings(secret),
        store=StoreSettings(tmp_path / f"{name}.sqlite3", url=url, timeout=3.0),
        cluster=ClusterSettings(node_id=name, heartbeat_interval=BEAT, lease=LEASE,
                                drain_timeout=5.0, drain_grace=0.5),
        admin_socket=tmp_path / f"{name}.sock",
        sip=SipSettings(backend="sip", proxy_host="127.0.0.1", proxy_port=ua_port,
                        local_host="127.0.0.1", local_port=free_port()),
    )


@pytest.fixture
async def ua() -> AsyncIterator[SipUserAgent]:
    agent = await SipUserAgent("alice", SIP_DOMAIN, ("127.0.0.1", 9)).start()
    try:
        yield agent
    finally:
        await agent.close()


@pytest.fixture
def cluster_url(postgres_server: Any) -> str:
    return str(postgres_server.create_database())


async def start_node(config: GatewayConfig, dns: str) -> Gateway:
    gateway = Gateway(config, resolver=DnsPythonResolver(nameservers=(dns,), timeout=2.0))
    await gateway.start()
    return gateway


def sip_address(config: GatewayConfig) -> tuple[str, int]:
    return (config.sip.local_host, config.sip.local_port)


async def establish_watch(ua: SipUserAgent, node_sip: tuple[str, int]) -> SipRequest:
    """The UA (presence server) accepts the node's SUBSCRIBE and sends an active NOTIFY."""
    ua.proxy = node_sip
    subscribe, tag = await answer_subscribe(ua)
    await ua.request(notify_for(ua, subscribe, tag, "active;expires=3600",
                                pidf("alice@sip.example")))
    return subscribe


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.05)


async def test_drain_hands_the_watch_to_the_survivor(tmp_path: Path, pki: Any, dns_for_pair,
                                                     cluster_url: str, ua: SipUserAgent) -> None:
    dns, _ = dns_for_pair
    config_a = node_config(tmp_path, pki, "a", cluster_url, ua.port)
    config_b = node_config(tmp_path, pki, "b", cluster_url, ua.port)
    # Node a serves as `xmpp-gateway run` does, signal handlers included.
    a = Gateway(config_a, resolver=DnsPythonResolver(nameservers=(dns,), timeout=2.0))
    serving = asyncio.ensure_future(a.serve_forever())
    await asyncio.wait_for(a.started.wait(), 20)
    b = await start_node(config_b, dns)
    try:
        await a.backend.deliver(presence(*WATCH, "subscribe"))
        first = await establish_watch(ua, sip_address(config_a))
        await wait_for(lambda: _owns(a, WATCH), 5, "node a to record the watch")
        nodes = {n.report.node_id: n for n in await b.store.list_nodes()}
        assert {nodes["a"].status(LEASE), nodes["b"].status(LEASE)} == {"running"}
        assert nodes["a"].report.watches == 1 or await _eventually_reports_watch(b)

        started = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)  # a node of a cluster drains, then stops
        ending = await asyncio.wait_for(ua.requests.get(), 5)
        assert (ending.method, ending.get("expires"), ending.call_id) == (
            "SUBSCRIBE", "0", first.call_id)
        ua.reply(ending, 200)
        ua.proxy = sip_address(config_b)
        fresh = await asyncio.wait_for(ua.requests.get(), 5)
        took = time.monotonic() - started
        assert (fresh.method, fresh.uri, fresh.from_.uri, fresh.to.tag) == (
            "SUBSCRIBE", "sip:alice@sip.example", "sip:bob@xmpp.example", "")
        assert fresh.call_id != first.call_id
        print(f"drain: survivor re-subscribed {took:.2f} s after the drain began")
        assert took < 3 * BEAT + 1.0, f"takeover after drain took {took:.2f} s"
        await establish_watch_reply(ua, fresh)
        await wait_for(lambda: _owns(b, WATCH), 5, "node b to own the watch")

        # while draining, a new SIP request to A is turned away for the dispatcher
        assert a.status()["state"] == "draining"
        ua.proxy = sip_address(config_a)
        turned_away = await ua.send_message("sip:bob@nowhere.example", "to a draining node")
        assert turned_away.status == 503
        await asyncio.wait_for(serving, 10)  # drained: it stopped by itself
        assert a.stopped.is_set()
        assert a.start_drain()["state"] == "draining"  # `xmpp-gateway drain` again: no-op
    finally:
        if not serving.done():
            a.request_stop()
            await serving
    try:
        states = {n.report.node_id: n.status(LEASE) for n in await b.store.list_nodes()}
        assert states == {"a": "stopped", "b": "running"}
        assert await b.store.list_watches() == [WATCH]
    finally:
        ua.proxy = sip_address(config_b)
        stopping = asyncio.ensure_future(b.stop())
        with contextlib.suppress(TimeoutError):
            ending = await asyncio.wait_for(ua.requests.get(), 3)
            ua.reply(ending, 200)
        await stopping


async def establish_watch_reply(ua: SipUserAgent, subscribe: SipRequest) -> None:
    """Accept an already received SUBSCRIBE and activate it with a NOTIFY."""
    import secrets

    from gateway.sip.message import make_response

    tag = secrets.token_hex(4)
    response = make_response(subscribe, 202, to_tag=tag)
    response.add("Expires", "3600")
    response.add("Contact", f"<sip:presence@127.0.0.1:{ua.port}>")
    ua._write(response.serialize())
    await ua.request(notify_for(ua, subscribe, tag, "active;expires=3600",
                                pidf("alice@sip.example")))


async def _owns(node: Gateway, watch: tuple[str, str]) -> bool:
    return watch in await node.store.list_watches()


async def _eventually_reports_watch(node: Gateway) -> bool:
    for _ in range(40):
        rows = {n.report.node_id: n.report for n in await node.store.list_nodes()}
        if rows["a"].watches == 1:
            return True
        await asyncio.sleep(BEAT / 2)
    return False


def write_yaml(config: GatewayConfig, path: Path) -> Path:
    tls = config.tls
    path.write_text(
        f"domains: [{SIP_DOMAIN}]\n"
        f"listen: [{{host: 127.0.0.1, port: {config.listen[0].port}}}]\n"
        f"tls: {{certificate: '{tls.certificate}', key: '{tls.key}', ca_file: '{tls.ca_file}',"
        f" use_system_cas: false}}\n"
        f"dialback: {{secret: {config.dialback.secret}}}\n"
        f"store: {{url: '{config.store.url}', timeout: 3}}\n"
        f"cluster: {{node_id: {config.cluster.node_id}, heartbeat_interval: {BEAT}, "
        f"lease: {LEASE}}}\n"
        f"admin_socket: '{config.admin_socket}'\n"
        f"sip: {{backend: sip, proxy_host: 127.0.0.1, proxy_port: {config.sip.proxy_port}, "
        f"local_host: 127.0.0.1, local_port: {config.sip.local_port}}}\n"
        "partners:\n  - {domain: nowhere.example, type: federated}\n")
    return path


async def test_hard_killed_node_s_watch_is_taken_over(tmp_path: Path, pki: Any, dns_for_pair,
                                                      cluster_url: str,
                                                      ua: SipUserAgent) -> None:
    """Node A is a real process killed with SIGKILL: no goodbye, its row just stops being
    refreshed; B claims the watch once A's lease has run out and subscribes again."""
    import psycopg

    from gateway.store.postgresql import PostgresAuthorizationStore

    dns, _ = dns_for_pair
    config_a = node_config(tmp_path, pki, "a", cluster_url, ua.port)
    config_b = node_config(tmp_path, pki, "b", cluster_url, ua.port)
    # A watch node A made before (it restores the watches it owns when it starts).
    PostgresAuthorizationStore(cluster_url).close()  # schema
    with psycopg.connect(cluster_url, autocommit=True) as conn:
        conn.execute("INSERT INTO presence_watches (watcher, sip_user, since, owner)"
                     " VALUES (%s, %s, '2026-12-01T00:00:00+00:00', 'a')", WATCH)
    config_path = write_yaml(config_a, tmp_path / "a.yaml")
    log_path = tmp_path / "a.log"
    log = log_path.open("wb")
    ua.proxy = sip_address(config_a)
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli.main", "-c",
                                str(config_path), "run"], stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    b = None
    try:
        try:
            await asyncio.wait_for(establish_watch(ua, sip_address(config_a)), 20)
        except TimeoutError:
            pytest.fail(f"node a did not restore its watch: {log_path.read_text()[-3000:]}")
        b = await start_node(config_b, dns)
        states = {n.report.node_id: n.status(LEASE) for n in await b.store.list_nodes()}
        assert states == {"a": "running", "b": "running"}
        assert await b.store.list_watches() == []  # a live node's watch is not taken
        os.kill(process.pid, signal.SIGKILL)
        killed = time.monotonic()
        process.wait(10)
        ua.proxy = sip_address(config_b)
        fresh = await asyncio.wait_for(ua.requests.get(), LEASE + 10)
        took = time.monotonic() - killed
        assert (fresh.method, fresh.uri, fresh.to.tag) == (
            "SUBSCRIBE", "sip:alice@sip.example", "")
        print(f"SIGKILL: survivor re-subscribed {took:.2f} s after the kill (lease {LEASE} s,"
              f" heartbeat {BEAT} s)")
        # A's last heartbeat was at most one interval before the kill.
        assert LEASE - BEAT - 0.1 <= took <= LEASE + 2 * BEAT + 1.0, f"took {took:.2f} s"
        await establish_watch_reply(ua, fresh)
        await wait_for(lambda: _owns(b, WATCH), 5, "node b to own the watch")
        states = {n.report.node_id: n.status(LEASE) for n in await b.store.list_nodes()}
        assert states == {"a": "dead", "b": "running"}
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
        log.close()
        if b is not None:
            ua.proxy = sip_address(config_b)
            stopping = asyncio.ensure_future(b.stop())
            with contextlib.suppress(TimeoutError):
                ending = await asyncio.wait_for(ua.requests.get(), 3)
                ua.reply(ending, 200)
            await stopping


async def test_user_switch_changed_on_one_node_reaches_the_other_within_a_second(
        tmp_path: Path, pki: Any, dns_for_pair, cluster_url: str, ua: SipUserAgent) -> None:
    """The router caches the per-user switch for 5 s; NOTIFY drops it on every node."""
    dns, _ = dns_for_pair
    a = await start_node(node_config(tmp_path, pki, "a", cluster_url, ua.port), dns)
    b = await start_node(node_config(tmp_path, pki, "b", cluster_url, ua.port), dns)
    try:
        assert b.router is not None
        assert await b.router.switches.enabled("carol@sip.example") is True  # now cached
        started = time.monotonic()
        await a.store.set_user_enabled("carol@sip.example", False)

        async def b_sees_it() -> bool:
            return await b.router.switches.enabled("carol@sip.example") is False

        await wait_for(b_sees_it, 1.0, "node b's router to see the switch")
        assert time.monotonic() - started < 1.0
    finally:
        await a.stop()
        await b.stop()


async def test_status_and_check_config_cluster(tmp_path: Path, pki: Any, dns_for_pair,
                                               cluster_url: str, ua: SipUserAgent,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    dns, _ = dns_for_pair
    config_a = node_config(tmp_path, pki, "a", cluster_url, ua.port)
    odd = dataclasses.replace(node_config(tmp_path, pki, "odd", cluster_url, ua.port,
                                          secret="another-secret"), partners=())
    a = await start_node(config_a, dns)
    b: Gateway | None = await start_node(odd, dns)
    try:
        path = write_yaml(config_a, tmp_path / "a.yaml")
        code = await asyncio.to_thread(cli_main, ["status", "--cluster", "-c", str(path)])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "cluster: 2 node(s), 2 alive" in out
        lines = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
        assert lines["a"][1] == "running" and lines["odd"][1] == "running"

        code = await asyncio.to_thread(cli_main, ["check", "config", "--cluster", "-c",
                                                  str(path)])
        out = capsys.readouterr().out
        assert code == 1, out
        assert "cluster: node a (running) agrees (domains, 1 partners, dialback secret)" in out
        assert "node odd (running) has different partner entries (0 partners" in out
        assert "node odd (running) uses a different dialback.secret" in out
        assert "another-secret" not in out and "shared-secret" not in out
        assert "cluster: 2 problem(s)" in out

        code = await asyncio.to_thread(cli_main, ["forget-node", "odd", "-c", str(path)])
        assert code == 1 and "node odd is running" in capsys.readouterr().err
        stopping, b = b, None
        await stopping.stop()
        code = await asyncio.to_thread(cli_main, ["forget-node", "odd", "-c", str(path)])
        assert code == 0, capsys.readouterr()
        assert "node odd (stopped) removed" in capsys.readouterr().out
        assert [n.report.node_id for n in await a.store.list_nodes()] == ["a"]
    finally:
        await a.stop()
        if b is not None:
            await b.stop()


async def test_unsubscribe_through_another_node_ends_the_holder_s_dialog(
        tmp_path: Path, pki: Any, dns_for_pair, cluster_url: str, ua: SipUserAgent) -> None:
    """The XMPP user's unsubscribe reaches node b (the partner's stream went there), which
    deletes the watch row; node a, holding the SIP dialog, notices at its next
    reconciliations and ends the subscription on the SIP side."""
    from gateway.cluster import RECONCILE_EVERY

    dns, _ = dns_for_pair
    config_a = node_config(tmp_path, pki, "a", cluster_url, ua.port)
    a = await start_node(config_a, dns)
    b = await start_node(node_config(tmp_path, pki, "b", cluster_url, ua.port), dns)
    try:
        await a.backend.deliver(presence(*WATCH, "subscribe"))
        first = await establish_watch(ua, sip_address(config_a))
        await wait_for(lambda: _owns(a, WATCH), 5, "node a to record the watch")
        started = time.monotonic()
        await b.backend.deliver(presence(*WATCH, "unsubscribe"))
        ending = await asyncio.wait_for(ua.requests.get(), 2 * RECONCILE_EVERY * BEAT + 3)
        assert (ending.method, ending.get("expires"), ending.call_id) == (
            "SUBSCRIBE", "0", first.call_id)
        ua.reply(ending, 200)
        print(f"dialog ended {time.monotonic() - started:.2f} s after the unsubscribe")
        assert a.backend.watches == {}
        assert await a.store.list_watches() == [] and await b.store.list_watches() == []
    finally:
        await a.stop()
        await b.stop()
