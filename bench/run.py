"""`make bench`: the gateway vs Prosody 0.12 and ejabberd 23.01 as the receiving server,
and the relay section (bench/relay.py): a real Prosody sending through the
gateway to SIP and back, next to Prosody relaying to Prosody.

Same machine, same run, same load generator (bench/loadgen.py, our own S2S client
serving load.example), same authentication (TLS + SASL EXTERNAL), all on loopback inside a
network namespace made for the run. Results: bench/results/results.json and
docs/benchmarks.md with the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench.bidi_memory import bidi_memory
from bench.failover import failover_runs
from bench.receivers import (
    IDLE_COUNTS,
    IDLE_MAX_SESSIONS,
    IDLE_RUNS,
    IDLE_SETTLE,
    LOAD_RUNS,
    RECEIVERS,
    measure_receiver,
    sip_latency,
)
from bench.relay import Sizes, run_relay
from bench.report import plot, write_markdown
from bench.setup import ROOT, bench_namespace

# This module is the command line and the order of the sections; what each section
# measures lives in its own module (bench/receivers.py, relay.py, failover.py,
# bidi_memory.py), what /proc says in bench/procfs.py, and the report in bench/report.py.


def versions() -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"
    return {
        "prosody": first_line(["dpkg-query", "-W", "-f=${Version}", "prosody"]),
        "ejabberd": first_line(["dpkg-query", "-W", "-f=${Version}", "ejabberd"]),
        "kamailio": first_line(["dpkg-query", "-W", "-f=${Version}", "kamailio"]),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--handshakes", type=int, default=50)
    parser.add_argument("--runs", type=int, default=LOAD_RUNS,
                        help="throughput/handshake runs per receiver and method; figures are "
                             f"their median with min-max (default {LOAD_RUNS})")
    parser.add_argument("--idle-counts", type=lambda v: tuple(int(c) for c in v.split(",")),
                        default=IDLE_COUNTS, help="idle session totals of each ramp "
                        f"(default {','.join(map(str, IDLE_COUNTS))})")
    parser.add_argument("--idle-runs", type=int, default=IDLE_RUNS,
                        help="idle ramps per receiver; figures are their median")
    parser.add_argument("--idle-settle", type=float, default=IDLE_SETTLE,
                        help="seconds each idle point settles before its RSS is read")
    parser.add_argument("--only-idle", action="store_true",
                        help="only the idle-session memory runs; prints them, writes no report")
    parser.add_argument("--sip-messages", type=int, default=10_000)
    parser.add_argument("--sip-rate", type=float, default=1000.0, help="msg/s offered")
    parser.add_argument("--skip-sip", action="store_true", help="no XMPP->SIP latency run")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite benchmarks.md and the plots from results.json, no runs")
    parser.add_argument("--only-sip", action="store_true",
                        help="only the XMPP->SIP latency run; prints it, writes no report")
    parser.add_argument("--skip-relay", action="store_true", help="no relay section")
    parser.add_argument("--only-relay", action="store_true",
                        help="only the relay section; prints it (and with --out writes "
                             "results.json and benchmarks.md there)")
    parser.add_argument("--relay-rates", default="1000,2000,5000,10000",
                        help="paced relay runs, msg/s offered, comma-separated")
    parser.add_argument("--relay-seconds", type=float, default=2.0,
                        help="length of each paced relay run")
    parser.add_argument("--relay-burst", type=int, default=100_000,
                        help="messages in the free-running relay burst, each path")
    parser.add_argument("--relay-chat-rates", default="1000",
                        help="paced runs of the chat mix, user-visible msg/s, comma-separated")
    parser.add_argument("--relay-chat-burst", type=int, default=20_000,
                        help="user-visible messages in the chat mix's burst")
    parser.add_argument("--relay-storm", type=int, default=5_000,
                        help="contacts in the presence storm, each side")
    parser.add_argument("--relay-stream-management", choices=("on", "off"), default="on",
                        help="XEP-0198 on the relay's S2S links (Prosody's mod_smacks)")
    parser.add_argument("--skip-failover", action="store_true", help="no failover row")
    parser.add_argument("--only-failover", action="store_true",
                        help="only the failover row (bench/failover.py); prints it")
    parser.add_argument("--failover-runs", type=int, default=10,
                        help="SIGKILL runs per direction")
    parser.add_argument("--failover-rate", type=int, default=2000, help="msg/s offered")
    parser.add_argument("--failover-resend", choices=("on", "off"), default="on",
                        help="Prosody's smacks_s2s_resend: on re-sends what a dead node left "
                             "unacknowledged, off bounces it (then only XMPP -> SIP is run: "
                             "the SIP side's retransmissions do not depend on it)")
    parser.add_argument("--skip-bidi-memory", action="store_true",
                        help="no memory-per-partner row (with and without XEP-0288 bidi)")
    parser.add_argument("--only-bidi-memory", action="store_true",
                        help="only the memory per partner with and without bidi; prints it")
    parser.add_argument("--bidi-counts", type=lambda v: tuple(int(c) for c in v.split(",")),
                        default=(250, 500, 1000),
                        help="partners at which the bidi memory row samples RSS")
    parser.add_argument("--bidi-settle", type=float, default=5.0,
                        help="seconds the bidi memory row lets RSS settle at each sample")
    parser.add_argument("--relay-paths", default=None,
                        help="only these relay paths, comma-separated (xmpp_xmpp, xmpp_sip, "
                             "xmpp_xmpp_back, sip_xmpp, sip_direct); with --relay-storm 0 no "
                             "storm either")
    parser.add_argument("--relay-direct-rate", type=int, default=10_000,
                        help="sip_direct: paced msg/s, one datagram per message")
    parser.add_argument("--relay-direct-seconds", type=float, default=5.0,
                        help="sip_direct: length of the paced run")
    parser.add_argument("--relay-open-loop", type=int, default=50_000,
                        help="sip_direct: MESSAGEs in the open-loop flood (0: none)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write results.json, benchmarks.md and the plots here instead of "
                             "bench/results and docs/ (smoke runs)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs: at least 1")
    if max(args.idle_counts) > IDLE_MAX_SESSIONS or list(args.idle_counts) != sorted(
            set(args.idle_counts)):
        parser.error(f"--idle-counts: increasing totals up to {IDLE_MAX_SESSIONS}")
    if args.report_only:
        out = args.out or ROOT / "bench" / "results"
        report = json.loads((out / "results.json").read_text())
        write_markdown(report, args)
        return plot(report, out, args)
    results: dict[str, dict] = {}
    sizes = Sizes(rates=tuple(int(r) for r in args.relay_rates.split(",") if r),
                  seconds=args.relay_seconds, burst=args.relay_burst, storm=args.relay_storm,
                  stream_management=args.relay_stream_management == "on",
                  direct_rate=args.relay_direct_rate,
                  direct_seconds=args.relay_direct_seconds, open_loop=args.relay_open_loop,
                  chat_rates=tuple(int(r) for r in args.relay_chat_rates.split(",") if r),
                  chat_burst=args.relay_chat_burst)
    relay_paths = tuple(args.relay_paths.split(",")) if args.relay_paths else None
    partial = any((args.only_relay, args.only_sip, args.only_idle, args.only_failover,
                   args.only_bidi_memory))
    if args.only_failover or not (args.skip_failover or partial):
        # Its own namespace: the failover world changes DNS and adds a second node address.
        with bench_namespace("failover") as (ns, pki):
            resend = args.failover_resend == "on"
            results["failover"] = failover_runs(
                ns, pki, args.failover_runs, rate=args.failover_rate, resend=resend,
                directions=("xmpp_sip", "sip_xmpp") if resend else ("xmpp_sip",))
        if args.only_failover:
            print(json.dumps(results, indent=2))
            return 0
    if args.only_bidi_memory or not (args.skip_bidi_memory or partial):
        with bench_namespace("bidi") as (ns, pki):
            results["bidi_memory"] = bidi_memory(ns, pki, tuple(args.bidi_counts),
                                                 settle=args.bidi_settle)
        if args.only_bidi_memory:
            print(json.dumps(results, indent=2))
            return 0
    with bench_namespace("bench") as (ns, pki):
        if args.only_sip:
            results["gateway"] = {"sip": sip_latency(ns, pki, args.sip_messages, args.sip_rate)}
            print(json.dumps(results, indent=2))
            return 0
        if not args.only_relay:
            for name, receiver in RECEIVERS.items():
                results[name] = measure_receiver(ns, pki, receiver, args)
            if args.only_idle:
                print(json.dumps(results, indent=2))
                return 0
            if not args.skip_sip:
                results["gateway"]["sip"] = sip_latency(ns, pki, args.sip_messages,
                                                        args.sip_rate)
        if not args.skip_relay:
            results["relay"] = run_relay(ns, pki, sizes, relay_paths)
    report = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "versions": versions(), "results": results}
    print(json.dumps(report, indent=2))
    if args.only_relay and args.out is None:
        return 0  # like --only-sip: a partial run never replaces the published report
    out = args.out or ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    if args.out is None:  # the published copy, next to the report and plots
        (ROOT / "docs" / "benchmarks" / "results.json").write_text(json.dumps(report, indent=2))
    write_markdown(report, args)
    return plot(report, out, args)



if __name__ == "__main__":
    sys.exit(main())
