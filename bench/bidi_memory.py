"""Memory per partner with and without XEP-0288 bidi: COUNT partner domains each exchange
a message with the gateway (bench/bidi_load.py sends, the development backend's echo user
answers), then stay idle; the gateway's settled RSS against the number of partners. With
bidi each partner costs one S2S connection (the partner's, carrying both directions),
without it two (the partner's and the gateway's own back to it)."""

from __future__ import annotations

from typing import Any

from bench import procfs
from bench.receivers import CLOSE_LIMIT, STEP_LIMIT, slope
from bench.relay_child import Child
from testbed.dnsmasq import DnsmasqServer
from testbed.namespace import IPS, Namespace
from testbed.pki import Pki
from testbed.servers import GatewayProcess

COUNTS = (250, 500, 1000)


def wildcard_dns(ns: Namespace) -> None:
    """Every *.load.example at 127.0.0.5 (where bench/bidi_load.py listens), the rest as
    the namespace had it."""
    if ns.dns is not None:
        ns.dns.stop()
    ns.dns = DnsmasqServer(
        ns.workdir / "dns-bidi", address="127.0.0.53", port=53, prefix=tuple(ns.exec),
        host_records={**{f"xmpp.{d}": ip for d, ip in IPS.items()}, **IPS},
        srv_records=[(f"_xmpp-server._tcp.{d}", f"xmpp.{d}", 5269, 0, 5) for d in IPS
                     if d != "load.example"],
        extra_args=("--address=/load.example/127.0.0.5",)).start()


def measure(ns: Namespace, pki: Pki, bidi: bool, counts: tuple[int, ...],
            settle: float) -> dict[str, Any]:
    partners = [{"domain": f"d{i:05d}.load.example", "type": "federated", "tls": "required",
                 "sasl": "required", "dialback": "false"} for i in range(counts[-1])]
    gateway = GatewayProcess(ns, pki, partners, log_level="warning", bidi=bidi,
                             limits={"max_connections": 4 * counts[-1],
                                     "max_connections_per_ip": 4 * counts[-1]}).start()
    assert gateway.process is not None
    root = gateway.process.pid
    points = [(0, procfs.settled_rss(root, settle))]
    connections: list[int] = []
    loader = Child(ns.exec, "bench.bidi_load", [",".join(map(str, counts)),
                                                 "on" if bidi else "off", pki.root, ns.workdir],
                   ns.workdir / f"bidi-load-{bidi}.log")
    try:
        for wanted in counts:
            reached = loader.line(STEP_LIMIT)  # its end or silence fails the row, with why
            connections.append(len(gateway.status()["sessions"]))
            points.append((reached["partners"], procfs.settled_rss(root, settle)))
            loader.send("next" if wanted != counts[-1] else "")
    finally:
        loader.send("")
        loader.close(wait=CLOSE_LIMIT)
        gateway.stop()
    return {"points": points, "streams": connections,
            "kib_per_partner": round(slope(points), 2),
            "streams_per_partner": round(connections[-1] / counts[-1], 2)}


def bidi_memory(ns: Namespace, pki: Pki, counts: tuple[int, ...] = COUNTS,
                settle: float = 5.0) -> dict[str, Any]:
    wildcard_dns(ns)
    return {"counts": list(counts), "with_bidi": measure(ns, pki, True, counts, settle),
            "without_bidi": measure(ns, pki, False, counts, settle)}


def bidi_markdown(result: dict[str, Any]) -> list[str]:
    rows = [("with bidi (XEP-0288)", result["with_bidi"]),
            ("without bidi", result["without_bidi"])]
    return ["## Memory per partner, with and without bidi", "",
            f"Partners each exchanging a message with the gateway and then idle "
            f"(bench/bidi_memory.py), up to {result['counts'][-1]:,}; the gateway's "
            "settled RSS against the number of partners (least squares).", "",
            "| | S2S streams per partner | KiB per partner |", "|---|---|---|",
            *(f"| {label} | {r['streams_per_partner']:g} | {r['kib_per_partner']:.1f} |"
              for label, r in rows), ""]
