"""The S2S link itself against a real Prosody 0.12: stream management (XEP-0198, Prosody's
mod_smacks) both ways, bidirectional streams (XEP-0288, mod_s2s_bidi), direct TLS with
ALPN (XEP-0368) and the RFC 6120 §3.2 resolution order.

Each test runs the echo exchange of test_prosody.py (a message to echo@gw.example and its
answer, a presence subscription) over SASL EXTERNAL, then reads what the link was from
the gateway's ``status`` and Prosody's debug log.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator

from testbed.namespace import IPS, Namespace
from testbed.pki import Pki
from testbed.servers import GatewayProcess, Prosody
from tests.interop.xmpp_client import assert_echo_exchange, xmpp_client

SASL = {"domain": "a.example", "type": "federated", "tls": "required", "sasl": "required",
        "dialback": "false"}


def explain(server: Prosody, gateway: GatewayProcess) -> str:
    return (f"\n--- gateway log (tail) ---\n{gateway.log[-3000:]}\n--- prosody log (tail) ---\n"
            f"{server.log[-3000:]}")


def sessions(gateway: GatewayProcess, wait_for: str = "") -> list[dict]:
    """The gateway's streams (waiting up to 5 s until one has ``wait_for`` set)."""
    deadline = time.monotonic() + 5
    while True:
        rows = [s for s in gateway.status()["sessions"] if s["method"]]
        if not wait_for or all(s.get(wait_for) for s in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


@contextlib.contextmanager
def echo_exchange(ns: Namespace, pki: Pki, wait: float = 15, **prosody: object
                  ) -> Iterator[tuple[dict, Prosody, GatewayProcess, str]]:
    """Prosody (``prosody`` options) and the gateway (partner SASL, and a direct-TLS
    listener when Prosody has one), the echo exchange run once: (what the client got,
    Prosody, the gateway, the text explaining a failure). Both stopped afterwards."""
    server = Prosody(ns, pki, **prosody).start()  # type: ignore[arg-type]
    gateway = GatewayProcess(ns, pki, [SASL],
                             direct_tls_port=prosody.get("direct_tls_port"))  # type: ignore[arg-type]
    try:
        gateway.start()
        result = xmpp_client(ns, "user@a.example", IPS["a.example"], "echo@gw.example", wait)
        yield result, server, gateway, explain(server, gateway)
    finally:
        server.stop()
        gateway.stop()


def test_stream_management_both_ways(ns: Namespace, pki: Pki) -> None:
    with echo_exchange(ns, pki, smacks=True) as (result, server, gateway, why):
        assert_echo_exchange(result, "user@a.example", why)
        rows = {s["direction"]: s for s in sessions(gateway)}
        assert set(rows) == {"inbound", "outbound"}, why
        inbound, outbound = rows["inbound"]["stream_management"], rows["outbound"][
            "stream_management"]
        assert inbound is not None and outbound is not None, why
        # Prosody enabled it on its outbound stream (we answered <enabled/>) and answered
        # ours: its log says so for both of its sessions.
        assert server.log.count("Enabling stream management") >= 2, why
        # Prosody sends <enable/> after what it had queued for the new stream: a second
        # exchange crosses the stream under stream management both ways.
        again = xmpp_client(ns, "user@a.example", IPS["a.example"], "echo@gw.example")
        assert_echo_exchange(again, "user@a.example", why)
        # What crossed was counted and acknowledged both ways.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            rows = {s["direction"]: s for s in sessions(gateway)}
            inbound = rows["inbound"]["stream_management"]
            outbound = rows["outbound"]["stream_management"]
            if outbound["unacked"] == 0 and inbound["acknowledged_to_peer"] == \
                    inbound["received"]:
                break
            time.sleep(0.2)
        assert outbound["sent"] >= 2 and outbound["acknowledged_by_peer"] == outbound["sent"], \
            (rows, why)
        assert inbound["received"] >= 2 and inbound["acknowledged_to_peer"] == \
            inbound["received"], (rows, why)


def test_without_smacks_the_link_is_as_before(ns: Namespace, pki: Pki) -> None:
    with echo_exchange(ns, pki) as (result, server, gateway, why):
        assert_echo_exchange(result, "user@a.example", why)
        assert all(s["stream_management"] is None for s in sessions(gateway)), why
        assert "Enabling stream management" not in server.log


def tcp_connections(ns: Namespace, port: int) -> set[frozenset[str]]:
    """Established TCP connections with ``port`` at either end, as ``ss`` lists them
    (Prosody's outgoing connections leave from 127.0.0.1, not its own address); both ends
    are in the namespace, so each connection is listed twice: counted once."""
    out = subprocess.run([*ns.exec, "ss", "-tnH", "state", "established",
                          f"( sport = :{port} or dport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return {frozenset(line.split()[2:4]) for line in out.splitlines()}


def test_bidi_one_connection_per_pair(ns: Namespace, pki: Pki) -> None:
    with echo_exchange(ns, pki, smacks=True, bidi=True) as (result, server, gateway, why):
        assert_echo_exchange(result, "user@a.example", why)
        rows = sessions(gateway)
        assert len(rows) == 1 and rows[0]["bidi"], (rows, why)
        assert rows[0]["stanzas_in"] >= 2 and rows[0]["stanzas_out"] >= 2, (rows, why)
        # Both servers listen on 5269: every S2S connection has it at one end.
        connections = tcp_connections(ns, 5269)
        assert len(connections) == 1, (connections, why)
        assert "Requesting bidirectional stream" in server.log or \
            "Requested bidirectional stream" in server.log, why


@contextlib.contextmanager
def dns_records(ns: Namespace, srv: list[tuple[str, str, int, int, int]],
                hosts: dict[str, str] | None = None) -> Iterator[None]:
    """The namespace's dnsmasq with other SRV (and more host) records, for one test; the
    usual records (harness.Namespace.up) again afterwards."""
    from testbed.dnsmasq import DnsmasqServer

    def start(workdir: str, srv_records: list, host_records: dict) -> DnsmasqServer:
        return DnsmasqServer(ns.workdir / workdir, address="127.0.0.53", port=53,
                             prefix=tuple(ns.exec), host_records=host_records,
                             srv_records=srv_records).start()

    usual_hosts = {**{f"xmpp.{d}": ip for d, ip in IPS.items()}, **IPS}
    usual_srv = [(f"_xmpp-server._tcp.{d}", f"xmpp.{d}", 5269, 0, 5) for d in IPS]
    assert ns.dns is not None
    ns.dns.stop()
    ns.dns = start(f"dns-{len(srv)}-{time.monotonic_ns()}", srv, {**usual_hosts,
                                                                 **(hosts or {})})
    try:
        yield
    finally:
        ns.dns.stop()
        ns.dns = start(f"dns-usual-{time.monotonic_ns()}", usual_srv, usual_hosts)


def test_direct_tls_both_ways_with_alpn(ns: Namespace, pki: Pki) -> None:
    """XEP-0368: both domains publish _xmpps-server first; each side connects with TLS
    from the first byte, naming ALPN 'xmpp-server'."""
    srv = [(f"_xmpps-server._tcp.{d}", f"xmpp.{d}", 5270, 0, 5) for d in ("a.example",
                                                                         "gw.example")]
    srv += [(f"_xmpp-server._tcp.{d}", f"xmpp.{d}", 5269, 10, 5) for d in IPS]
    with dns_records(ns, srv), echo_exchange(ns, pki, direct_tls_port=5270) as (
            result, _server, gateway, why):
        assert_echo_exchange(result, "user@a.example", why)
        rows = {s["direction"]: s for s in sessions(gateway)}
        # Prosody names 'xmpp-server' and we select it; its own direct-TLS listener
        # selects no protocol (0.12 configures ALPN on its client side only), which
        # RFC 7301 §3.2 allows: our offer is checked in test_tls_alpn.py.
        assert rows["inbound"]["alpn"] == "xmpp-server", (rows, why)
        assert rows["outbound"]["peer_address"] == f"{IPS['a.example']}:5270", why
        # Both connections went to the direct-TLS ports (none to 5269).
        assert len(tcp_connections(ns, 5270)) == 2, why
        assert not tcp_connections(ns, 5269), why


def test_resolution_order(ns: Namespace, pki: Pki) -> None:
    """RFC 6120 §3.2: with SRV records, only their targets are tried — a.example's own
    address (where Prosody listens) is not a fallback after they fail; without SRV
    records the domain's own address is used."""
    dead = [("_xmpp-server._tcp.a.example", "dead.a.example", 5269, 0, 5),
            ("_xmpp-server._tcp.gw.example", "xmpp.gw.example", 5269, 0, 5)]
    with dns_records(ns, dead, {"dead.a.example": "127.0.0.9"}), echo_exchange(
            ns, pki, wait=4) as (result, _server, gateway, why):
        assert not [m for m in result["messages"] if m["type"] != "error"], why
        assert "no target could be reached: dead.a.example[127.0.0.9]:5269" in \
            gateway.log, why
        assert not [s for s in sessions(gateway) if s["direction"] == "outbound"], why
    no_srv = [("_xmpp-server._tcp.gw.example", "xmpp.gw.example", 5269, 0, 5)]
    with dns_records(ns, no_srv), echo_exchange(ns, pki) as (result, _server, gateway, why):
        assert_echo_exchange(result, "user@a.example", why)
        [outbound] = [s for s in sessions(gateway) if s["direction"] == "outbound"]
        assert outbound["peer_address"] == f"{IPS['a.example']}:5269", why
