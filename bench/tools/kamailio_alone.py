"""Kamailio alone in the relay benchmark's two shapes, without Prosody or the gateway: what
one relayed MESSAGE costs the proxy, and what changes that (docs/sip.md, Sizing Kamailio).

    python -m bench.tools.kamailio_alone to-sip|from-sip [-n N] [--rate R] [--window W]
        [--stale K] [--memory-manager qm|fm|tlsf] [--children C] [--debug D]

``to-sip`` is the XMPP→SIP shape: a SIP UA playing the gateway (bench/relay_sip.py, From a
gw.example user, at most W requests without a final answer like ``sip.max_in_flight``)
sends N MESSAGEs to Kamailio for user@gw.example, which Kamailio looks up and relays to
the registered bench/sip_sink.py. ``--stale K`` first leaves K bindings of that user
behind (registered from ports nobody listens on), as earlier sinks did: Kamailio forks
each MESSAGE to them too. ``from-sip`` is the SIP→XMPP shape: the same UA sends to
user@a.example, which Kamailio relays to the gateway's address, where ``answer`` (below)
answers every request 202 at once.

Kamailio runs with deploy/kamailio/kamailio.cfg (the one the interop tests
and the relay benchmark use) in a network namespace of its own; ``--memory-manager``,
``--children`` and ``--debug`` change only that. Printed (one JSON object): CPU µs per
MESSAGE from /proc (utime + stime; Kamailio: every process, and each worker), the
benchmark UAs' own CPU, UDP datagrams per MESSAGE in the namespace (4 = request in and out,
answer in and out: no retransmission, no extra branch) and those sent to closed ports
(dead branches), retransmissions, Kamailio's log lines during the run, and its shared
memory at the end (``kamcmd core.shmmem``, through the configuration's ctl.so).
Everything is bounded in time; every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import procfs, sipwire
from bench.relay_child import Child
from bench.setup import bench_namespace
from testbed.kamailio import Kamailio
from testbed.namespace import IPS, Namespace

HOST = IPS["gw.example"]
KAMAILIO_PORT, GATEWAY_PORT = 5070, 5062
LIMIT = 120.0  # seconds, every child


class MeasuredKamailio(Kamailio):
    """testbed/kamailio.py's Kamailio (the shipped configuration, whose ctl.so
    ``kamcmd`` reaches through the run's socket)."""

    def __init__(self, workdir: Path, ns: Namespace, *, children: int, debug: int,
                 memory_manager: str) -> None:
        super().__init__(workdir, domain="gw.example", host=HOST, port=KAMAILIO_PORT,
                         gateway=(HOST, GATEWAY_PORT), prefix=ns.exec, debug=debug,
                         children=children, memory_manager=memory_manager)
        self.ctl = self.ctl_socket

    def shm(self) -> str:
        """``kamcmd core.shmmem m``: total, free, used, max_used … in MB."""
        out = subprocess.run([*self.prefix, "kamcmd", "-s", f"unix:{self.ctl}",
                              "core.shmmem", "m"], capture_output=True, text=True, timeout=10)
        return " ".join(out.stdout.split())


def answer(host: str, port: int, limit: float) -> None:
    """The gateway's place in the from-sip shape: 202 to every request at once."""
    sock = sipwire.udp_socket(host, port=port)
    sock.settimeout(0.2)
    print(json.dumps({"ready": True}), flush=True)
    cpu_started, answered = time.process_time(), 0
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            data, peer = sock.recvfrom(65535)
        except TimeoutError:
            if select.select([sys.stdin], [], [], 0)[0]:
                break  # the driver is done
            continue
        if data.startswith(b"SIP/2.0 "):
            continue
        _, headers, _ = sipwire.split(data)
        sock.sendto(sipwire.response(headers, 202, "Accepted", b"gw"), peer)
        answered += 1
    print(json.dumps({"answered": answered, "cpu_s": time.process_time() - cpu_started}),
          flush=True)


def leave_stale_bindings(ns: Namespace, count: int) -> None:
    """``count`` bindings of user@gw.example whose UA is gone (registered, socket closed)."""
    if not count:
        return
    code = ("from bench import sipwire\n"
            f"for _ in range({count}):\n"
            f"    s = sipwire.udp_socket({HOST!r})\n"
            f"    assert sipwire.register(s, ({HOST!r}, {KAMAILIO_PORT}), 'user', "
            "'gw.example')[0] == 200\n"
            "    s.close()\n")
    subprocess.run([*ns.exec, sys.executable, "-c", code], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parents[2])


def measure(ns: Namespace, args: argparse.Namespace) -> dict[str, Any]:
    workdir = ns.workdir / "kamailio-alone"
    workdir.mkdir()
    kamailio = MeasuredKamailio(workdir, ns, children=args.children, debug=args.debug,
                                memory_manager=args.memory_manager).start()
    try:
        leave_stale_bindings(ns, args.stale)
        with contextlib.ExitStack() as children:
            if args.shape == "to-sip":
                far = children.enter_context(Child(
                    ns.exec, "bench.sip_sink", [HOST, KAMAILIO_PORT, "user", "gw.example", 0,
                                                LIMIT, "--control"], workdir / "sink.log"))
                recipient = "user@gw.example"
            else:
                far = children.enter_context(Child(
                    ns.exec, "bench.tools.kamailio_alone", ["answer", HOST, GATEWAY_PORT, LIMIT],
                    workdir / "answer.log"))
                recipient = "user@a.example"
            ready = far.line(30)
            pid = kamailio.process.pid  # type: ignore[union-attr]
            workers = procfs.descendants(pid)
            cpu_before = {member: procfs.process_cpu_us(member) for member in workers}
            udp_before = procfs.udp_counters(ns.exec)
            log_before = len(kamailio.log().splitlines())
            load = children.enter_context(Child(
                ns.exec, "bench.relay_sip", ["message", HOST, KAMAILIO_PORT, args.n, args.rate,
                                             args.window, LIMIT, recipient],
                workdir / "load.log"))
            sent = load.line(LIMIT + 20)
            if args.shape == "to-sip":
                far.send(f"{sent['sent']} 2 30")
                arrived = far.line(60)
            else:
                time.sleep(0.5)  # the last answers relayed
                far.send("stop")
                arrived = far.line(30)
            cpu = {member: procfs.process_cpu_us(member) - cpu_before.get(member, 0.0)
                   for member in procfs.descendants(pid)}
            udp_after = procfs.udp_counters(ns.exec)
            log_lines = len(kamailio.log().splitlines()) - log_before
        n = sent["accepted"] or 1
        return {
            "shape": args.shape, "messages": args.n, "rate": args.rate, "window": args.window,
            "memory_manager": args.memory_manager, "children": args.children,
            "debug": args.debug, "stale_bindings": args.stale,
            "bindings_at_sink_registration": ready.get("bindings"),
            "accepted": sent["accepted"], "refused": sent["refused"],
            "send_seconds": round(sent["send_seconds"], 2),
            "kamailio_us_per_message": round(sum(cpu.values()) / n, 1),
            "kamailio_busy_processes_us": sorted(
                (round(used / n, 1) for used in cpu.values() if used), reverse=True),
            "load_ua_us_per_message": round(sent["cpu_s"] * 1e6 / n, 1),
            "far_end_us_per_message": round(arrived["cpu_s"] * 1e6 / n, 1),
            "udp_datagrams_per_message": round(
                (udp_after["InDatagrams"] - udp_before["InDatagrams"]) / n, 2),
            "udp_to_closed_ports_per_message": round(
                (udp_after["NoPorts"] - udp_before["NoPorts"]) / n, 2),
            "udp_receive_buffer_drops": udp_after["RcvbufErrors"] - udp_before["RcvbufErrors"],
            "retransmissions_by_load_ua": sent["retransmissions"],
            "retransmissions_seen_by_sink": arrived.get("retransmissions_seen"),
            "kamailio_log_lines": log_lines,  # written during the run: none per message
            "kamailio_shm_mb": kamailio.shm(),
        }
    finally:
        kamailio.stop()


def main() -> None:
    if sys.argv[1:2] == ["answer"]:
        host, port, limit = sys.argv[2:5]
        return answer(host, int(port), float(limit))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shape", choices=("to-sip", "from-sip"))
    parser.add_argument("-n", type=int, default=50_000, help="MESSAGEs")
    parser.add_argument("--rate", type=float, default=0, help="msg/s offered, 0 = burst")
    parser.add_argument("--window", type=int, default=256,
                        help="requests without a final answer, at most (sip.max_in_flight)")
    parser.add_argument("--stale", type=int, default=0, help="dead bindings of the user")
    parser.add_argument("--memory-manager", default="tlsf", choices=("tlsf", "qm", "fm"))
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--debug", type=int, default=1)
    args = parser.parse_args()
    if args.n > 200_000:
        parser.error("-n: at most 200,000 (bounded load)")
    with bench_namespace("kamalone", keep_workdir=False) as (ns, _pki):
        print(json.dumps(measure(ns, args)), flush=True)


if __name__ == "__main__":
    main()
