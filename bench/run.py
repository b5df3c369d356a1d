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
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.bidi_memory import bidi_markdown, bidi_memory
from bench.failover import failover_markdown, failover_runs
from bench.relay import Sizes, run_relay
from bench.relay_report import relay_markdown, relay_target_rows
from bench.setup import bench_namespace
from tests.interop.harness import Ejabberd, GatewayProcess, Namespace, Prosody
from tests.support.kamailio import Kamailio
from tests.unit.s2s_world import Pki

ROOT = Path(__file__).resolve().parents[1]


def loadgen(ns: Namespace, pki: Pki, receiver: str, recipient: str, n: int, k: int,
            counter: str, method: str = "sasl") -> dict:
    result = subprocess.run(
        [*ns.exec, sys.executable, "-m", "bench.loadgen", receiver, recipient, str(n), str(k),
         str(pki.root), str(ns.workdir), counter, method],
        capture_output=True, text=True, timeout=900, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"loadgen ({method}) against {receiver} failed:\n"
                           f"{result.stderr[-3000:]}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    p50, p99 = data.get("handshake_p50_ms"), data.get("handshake_p99_ms")
    if (data.get("messages") != n or not data.get("messages_per_second", 0) > 0
            or data.get("handshakes") != k
            or (k and not (p50 is not None and p99 is not None and 0 < p50 <= p99))):
        raise RuntimeError(f"loadgen ({method}) against {receiver}: impossible result, not "
                           f"published: {data}")
    return data  # type: ignore[no-any-return]


# Throughput and handshakes: runs per receiver and method, each on a freshly
# started receiver; the figures published are their median, with min and max beside it.
LOAD_RUNS = 3
LOAD_METRICS = ("messages_per_second", "handshake_p50_ms", "handshake_p99_ms")


def load_summary(runs: list[dict]) -> dict:
    """One receiver and method over several loadgen runs: the first run's description,
    each metric as the median of the runs (so readers of a single figure get the median),
    ``stats`` with median, min and max per metric, and the runs themselves."""
    summary = {key: runs[0][key] for key in ("receiver", "messages", "handshakes", "method")}
    stats = {}
    for key in LOAD_METRICS:
        values = [run[key] for run in runs]
        stats[key] = {"median": statistics.median(values), "min": min(values),
                      "max": max(values)}
        summary[key] = stats[key]["median"]
    return {**summary, "stats": stats, "runs": runs}


def load_figure(data: dict, key: str) -> dict:
    """Median, min, max and run count of one metric; an older results.json holds a
    single run per metric, shown as such (min = max = the run)."""
    if "stats" in data:
        return {**data["stats"][key], "runs": len(data["runs"])}
    if not isinstance(data.get(key), int | float):
        raise ValueError(f"results.json: no {key} figure in {sorted(data)}: not a report "
                         "bench/run.py can render")
    return {"median": data[key], "min": data[key], "max": data[key], "runs": 1}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def tree_rss_kib(root: int) -> int:
    """RSS of ``root`` and all its descendants: a server is one process (gateway, Prosody)
    or several (ejabberd: the Erlang VM beam.smp, its erl_child_setup and port programs,
    under the ejabberdctl shell), and what the runtime spreads over them all counts."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(proc.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        with contextlib.suppress(OSError, RuntimeError):  # exited meanwhile, kernel thread
            total += rss_kib(pid)
        todo += children.get(pid, [])
    return total


# Idle memory: session totals of each ramp, ramps per receiver, and how long a
# point is left to settle (more than the gateway's RELEASE_IDLE_AFTER; lets a garbage-
# collected runtime such as ejabberd's VM give back or take what it will).
IDLE_COUNTS = (1000, 5000, 10000)
IDLE_RUNS = 3
IDLE_SETTLE = 10.0
IDLE_MAX_SESSIONS = 15000  # the receiving gateway's limits.max_connections for the ramp


def settled_rss(root: int, settle: float) -> int:
    """The process tree's RSS once it stops moving: after ``settle`` seconds, sampled each
    second until two samples agree within 0.2 % (at most 30 s more)."""
    time.sleep(settle)
    previous = tree_rss_kib(root)
    for _ in range(30):
        time.sleep(1.0)
        current = tree_rss_kib(root)
        if abs(current - previous) <= previous * 0.002:
            return current
        previous = current
    return previous


def slope(points: list[tuple[int, int]]) -> float:
    """Least-squares KiB per session through (sessions, RSS KiB) points."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx


def idle_ramp(ns: Namespace, pki: Pki, receiver: str, recipient: str, counts: tuple[int, ...],
              root: int, settle: float) -> dict:
    """One ramp: the receiver's settled RSS (process tree ``root``) with 0 sessions, then
    with each total of ``counts`` idle authenticated sessions open. Stops at the first
    total the receiver cannot hold, with bench/idle.py's error."""
    points = [(0, settled_rss(root, settle))]
    seconds: list[float] = []
    error = None
    # Its log goes to a file: a pipe nobody reads while the sessions are open would fill
    # up (a line per closed session at the end) and block it.
    log_path = ns.workdir / f"idle-{receiver}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*ns.exec, sys.executable, "-m", "bench.idle", receiver, recipient,
             ",".join(map(str, counts)), str(pki.root), str(ns.workdir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
    assert process.stdin is not None and process.stdout is not None
    try:
        for wanted in counts:
            line = process.stdout.readline()
            if not line:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(30)
                error = (f"bench.idle ended before {wanted} sessions: "
                         f"{log_path.read_text(errors='replace')[-1500:]}")
                break
            opened = json.loads(line)
            if "error" in opened or opened["sessions"] != wanted:
                error = opened.get("error", f"{opened['sessions']} of {wanted} sessions open")
                break
            seconds.append(opened["seconds_to_open"])
            points.append((wanted, settled_rss(root, settle)))
            process.stdin.write("next\n" if wanted != counts[-1] else "\n")
            process.stdin.flush()
    finally:
        with contextlib.suppress(BrokenPipeError, OSError):
            process.stdin.write("\n")
            process.stdin.flush()
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return {"points": points, "seconds_to_open": seconds, "error": error}


def idle_memory(ns: Namespace, pki: Pki, receiver: Receiver, counts: tuple[int, ...],
                runs: int, settle: float) -> dict:
    """Memory per idle session: ``runs`` ramps, each on a freshly started server; per
    ramp the slope from 0 to each total; the median over ramps with its min and max.

    A receiver that cannot hold a total gets no figure there and the error is kept for the
    report; an impossible figure (not positive) or a ramp that could not even reach the
    first total fails the benchmark instead of being published."""
    recipient = f"user@{receiver.domain}"
    ramps = []
    for run in range(runs):
        server = receiver.start(ns, pki, "idle")
        try:
            ramp = idle_ramp(ns, pki, receiver.domain, recipient, counts,
                             receiver.pid(server, ns), settle)
        finally:
            server.stop()
        held = [n for n, _ in ramp["points"][1:]]
        print(f"idle {receiver.domain} run {run + 1}/{runs}: {ramp['points']}"
              + (f" — {ramp['error']}" if ramp["error"] else ""), file=sys.stderr, flush=True)
        if not held:
            raise RuntimeError(f"idle sessions to {receiver.domain}: not even {counts[0]} "
                               f"could be opened: {ramp['error']}")
        ramps.append(ramp)
    result: dict[str, Any] = {"counts": list(counts), "runs": ramps, "at": {}}
    for total in counts:
        figures = [slope([p for p in r["points"] if p[0] <= total]) for r in ramps
                   if any(p[0] == total for p in r["points"])]
        if len(figures) < len(ramps):  # not held in every run: no figure at this total
            errors = sorted({r["error"] for r in ramps if r["error"]})
            result["note"] = (f"could not hold {total:,} idle sessions in "
                              f"{len(ramps) - len(figures)} of {len(ramps)} runs: "
                              f"{errors[0][:300] if errors else 'unknown error'}")
            break
        bad = [f for f in figures if not f > 0]
        if bad:
            raise RuntimeError(
                f"impossible idle memory for {receiver.domain} at {total} sessions: "
                f"{bad[0]:.1f} KiB per session (points {[r['points'] for r in ramps]}); "
                "not published")
        result["at"][str(total)] = {"median": statistics.median(figures),
                                    "min": min(figures), "max": max(figures)}
    largest = max(result["at"], key=int)
    result["sessions"] = int(largest)
    result["kib_per_session"] = result["at"][largest]["median"]
    return result


@dataclass(frozen=True)
class Receiver:
    """How to run and observe one receiving server for the same load."""

    domain: str
    start: Callable[[Namespace, Pki, str], Any]  # method -> a started server
    counter: Callable[[Any], str]  # how the loadgen knows a message was processed
    pid: Callable[[Any, Namespace], int]  # the process whose RSS is measured


def _gateway(ns: Namespace, pki: Pki, method: str) -> GatewayProcess:
    if method == "idle":  # distinct unlisted peer domains for the idle-session run
        return GatewayProcess(ns, pki, [], log_level="warning", allow_unlisted=True,
                              drops_expected=True, record_s2s=False, limits={
                                  "max_connections": IDLE_MAX_SESSIONS,
                                  "max_connections_per_ip": IDLE_MAX_SESSIONS}).start()
    rules = ({"tls": "required", "sasl": "required", "dialback": "false"} if method == "sasl"
             else {"tls": "required", "sasl": "optional", "dialback": "true"})
    return GatewayProcess(ns, pki, [{"domain": "load.example", "type": "federated", **rules}],
                          log_level="warning", drops_expected=True, record_s2s=False).start()


RECEIVERS = {
    "gateway": Receiver("gw.example", _gateway,
                        lambda gw: f"admin:{gw.dir / 'admin.sock'}",
                        lambda gw, _ns: gw.process.pid),
    # secure_auth false: dialback is accepted (SASL EXTERNAL still offered and preferred).
    "prosody": Receiver("a.example",
                        lambda ns, pki, _m: Prosody(ns, pki, log_level="warn",
                                                    secure_auth=False).start(),
                        lambda _p: "c2s:127.0.0.2", lambda p, _ns: p.process.pid),
    "ejabberd": Receiver("b.example",
                         lambda ns, pki, _m: Ejabberd(ns, pki, log_level="warning").start(),
                         lambda _e: "c2s:127.0.0.3",
                         lambda e, _ns: e.process.pid),  # ejabberdctl: beam.smp below
}


def measure_receiver(ns: Namespace, pki: Pki, receiver: Receiver,
                     args: argparse.Namespace) -> dict:
    """Throughput and handshakes for each method (``args.runs`` runs each, alternating the
    methods, each on a freshly started receiver), then idle memory, for one receiver."""
    result: dict[str, Any] = {}
    recipient = f"user@{receiver.domain}"
    runs: dict[str, list[dict]] = {}
    for run in range(0 if args.only_idle else args.runs):
        for method in ("sasl", "dialback"):
            server = receiver.start(ns, pki, method)
            try:
                data = loadgen(ns, pki, receiver.domain, recipient, args.messages,
                               args.handshakes, receiver.counter(server), method)
            finally:
                server.stop()
            runs.setdefault(method, []).append(data)
            print(f"load {receiver.domain} {method} run {run + 1}/{args.runs}: "
                  f"{data['messages_per_second']:,.0f} msg/s, handshake p50 "
                  f"{data['handshake_p50_ms']:.1f} ms", file=sys.stderr, flush=True)
    for method, method_runs in runs.items():
        result[method] = load_summary(method_runs)
    result["idle"] = idle_memory(ns, pki, receiver, args.idle_counts, args.idle_runs,
                                 args.idle_settle)
    return result


def sip_latency(ns: Namespace, pki: Pki, n: int, rate: float) -> dict:
    """XMPP→SIP: S2S into the gateway, SIP through Kamailio to a registered UA."""
    gw_ip, kamailio_port, gateway_sip_port = "127.0.0.4", 5070, 5062
    workdir = ns.workdir / "kamailio"
    workdir.mkdir(exist_ok=True)
    kamailio = Kamailio(workdir, domain="gw.example", host=gw_ip, port=kamailio_port,
                        gateway=(gw_ip, gateway_sip_port), prefix=ns.exec, debug=1).start()
    gateway = GatewayProcess(
        ns, pki, [{"domain": "load.example", "type": "federated", "tls": "required",
                   "sasl": "required", "dialback": "false"}], log_level="warning",
        sip={"backend": "sip", "proxy_host": gw_ip, "proxy_port": kamailio_port,
             "transport": "udp", "local_host": gw_ip, "local_port": gateway_sip_port},
        drops_expected=True,  # a benchmark reports what it measured instead of failing
        record_s2s=False)  # the S2S recording (a test aid) would cost CPU per write
    sink = None
    try:
        gateway.start()
        sink = subprocess.Popen(
            [*ns.exec, sys.executable, "-m", "bench.sip_sink", gw_ip, str(kamailio_port),
             "user", "gw.example", str(n), str(60 + n / rate)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        assert sink.stdout is not None
        ready = sink.stdout.readline()
        if '"ready"' not in ready:
            raise RuntimeError(f"SIP sink did not register: {sink.stderr.read()[-2000:]}")
        load = subprocess.run(
            [*ns.exec, sys.executable, "-m", "bench.sip_load", "gw.example", "user@gw.example",
             str(n), str(rate), str(pki.root), str(ns.workdir),
             str(gateway.dir / "admin.sock")],
            capture_output=True, text=True, timeout=120 + n / rate, cwd=ROOT)
        if load.returncode != 0:
            raise RuntimeError(f"SIP load failed: {load.stderr[-3000:]}")
        stats = json.loads(sink.stdout.readline())
        sink.wait(30)
        return {**stats, **json.loads(load.stdout.strip().splitlines()[-1]),
                "udp_receive_buffer_drops": udp_drops(ns),
                "transport": "udp", "path": "S2S (TLS+SASL) -> gateway -> Kamailio -> UA"}
    finally:
        if sink is not None and sink.poll() is None:
            sink.kill()
            sink.wait(10)
        gateway.stop()
        kamailio.stop()


def udp_drops(ns: Namespace) -> int:
    """UDP datagrams the kernel dropped for lack of receive buffer in the namespace (a lost
    SIP request costs a retransmission: 500 ms and more of latency)."""
    snmp = subprocess.run([*ns.exec, "cat", "/proc/net/snmp"], capture_output=True, text=True,
                          timeout=10).stdout.splitlines()
    names, values = (line.split()[1:] for line in snmp if line.startswith("Udp:"))
    return int(dict(zip(names, values, strict=True))["RcvbufErrors"])


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
            results["bidi_memory"] = bidi_memory(ns, pki)
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


def plot(report: dict, out: Path, args: argparse.Namespace) -> int:
    """The PNG charts of the receiver comparison (none for a relay-only run)."""
    if not all(name in report["results"] for name in RECEIVERS):
        return 0
    from bench.plots import main as plots

    return plots(out / "results.json", (args.out / "benchmarks") if args.out else None)


METHODS = {"sasl": "TLS + SASL EXTERNAL", "dialback": "TLS + dialback"}
SERVER_METRICS = (
    ("Inbound throughput, msg/s (higher is better)", "messages_per_second", "{:,.0f}"),
    ("Handshake p50, ms (lower is better)", "handshake_p50_ms", "{:.1f}"),
    ("Handshake p99, ms (lower is better)", "handshake_p99_ms", "{:.1f}"),
)


def comparison_rows(report: dict) -> list[tuple[str, str, dict, dict, dict]]:
    """(label, format, gateway, Prosody, ejabberd) for every compared metric, each figure
    a :func:`load_figure` (median, min, max, runs)."""
    r = report["results"]
    rows = []
    for method, method_label in METHODS.items():
        for label, key, fmt in SERVER_METRICS:
            rows.append((f"{label}, {method_label}", fmt, *(
                load_figure(r[name][method], key) for name in ("gateway", "prosody",
                                                               "ejabberd"))))
    return rows


def figure_cell(fmt: str, figure: dict) -> str:
    """``median [min-max]``, or the value alone for a single run."""
    if figure["runs"] == 1:
        return fmt.format(figure["median"])
    return (f"{fmt.format(figure['median'])} [{fmt.format(figure['min'])}-"
            f"{fmt.format(figure['max'])}]")


def runs_label(figures: tuple[dict, ...]) -> str:
    counts = sorted({f["runs"] for f in figures})
    if counts == [1]:
        return "single run"
    return f"median of {'/'.join(map(str, counts))} [min-max]"


def idle_totals(report: dict) -> list[str]:
    """The idle totals reported: the ramp's first and last (e.g. 1,000 and 10,000)."""
    counts = report["results"]["gateway"]["idle"]["counts"]
    return [str(c) for c in dict.fromkeys((counts[0], counts[-1]))]


def idle_rows(report: dict) -> list[str]:
    """Markdown rows: memory per idle session at each reported total, median [min-max],
    or why a receiver has no figure there."""
    r = report["results"]
    names = ("gateway", "prosody", "ejabberd")
    rows = []
    for total in idle_totals(report):
        figures = [r[name]["idle"]["at"].get(total) for name in names]
        cells = [f"{f['median']:.1f} [{f['min']:.1f}-{f['max']:.1f}]" if f else
                 "not held (see below)" for f in figures]
        g = figures[0]
        ratios = [f"{g['median'] / f['median']:.2f}" if g and f else "—" for f in figures[1:]]
        runs = len(r["gateway"]["idle"]["runs"])
        rows.append(f"| Memory per idle session at {int(total):,} sessions, KiB RSS (slope, "
                    f"median of {runs} [min-max]; lower is better) | " + " | ".join(cells)
                    + " | " + " | ".join(ratios) + " |")
    return rows


def write_markdown(report: dict, args: argparse.Namespace) -> None:
    v = report["versions"]
    lines = [
        "# Benchmarks", "",
        f"Measured {report['when']} by `make bench` (bench/run.py) on {v['machine']}; "
        f"Prosody {v['prosody']}, ejabberd {v['ejabberd']}, Kamailio {v.get('kamailio', '?')}, "
        f"Python {v['python']}. Raw numbers: "
        "[benchmarks/results.json](benchmarks/results.json).", ""]
    if all(name in report["results"] for name in RECEIVERS):
        lines += receiver_markdown(report, args)
    relay = report["results"].get("relay")
    if relay:
        lines += relay_markdown(relay)
        lines += ["## Relay targets, from this run", "", "| Target | Measured | Met |",
                  "|---|---|---|", *relay_target_rows(report), ""]
    failover = report["results"].get("failover")
    if failover:
        lines += failover_markdown(failover)
    if report["results"].get("bidi_memory"):
        lines += bidi_markdown(report["results"]["bidi_memory"])
    target = args.out / "benchmarks.md" if args.out else ROOT / "docs" / "benchmarks.md"
    target.write_text("\n".join(lines))


def receiver_markdown(report: dict, args: argparse.Namespace) -> list[str]:
    """The receiver comparison (gateway, Prosody, ejabberd), the XMPP→SIP latency and the
    targets for throughput, handshakes and idle memory."""
    sasl = report["results"]["gateway"]["sasl"]
    runs = load_figure(sasl, "messages_per_second")["runs"]
    lines = [
        f"Load: one S2S session from bench/loadgen.py to the receiver, authenticated either by "
        f"TLS + SASL EXTERNAL or by TLS + dialback (XEP-0220, the receiver verifying our key "
        f"over a second connection), then {sasl['messages']:,} chat messages; the receiver "
        "delivers each to an online local user (Prosody/ejabberd: a logged-in c2s client that "
        "counts them; the gateway: its development backend, counted by its router). "
        f"Handshake: {sasl['handshakes']} sequential new sessions (DNS, TCP, STARTTLS, then "
        "SASL EXTERNAL or dialback), time to authenticated. "
        + (f"Each figure is the median of {runs} runs, each on a freshly started receiver "
           "with the two methods alternating, with the lowest and highest run in brackets; a "
           "run with fewer messages or handshakes than asked, a zero rate or an impossible "
           "percentile fails the benchmark instead of being published." if runs > 1 else
           "One run per figure (a report from before medians of several runs).")
        + " "
        "Caveat: the gateway's local delivery is an in-process "
        "call to its backend, while Prosody and ejabberd write every message to a c2s socket, "
        "so the throughput comparison favours the gateway on the delivery step; the S2S "
        "parsing, TLS and routing work is the same kind on all three.", "",
        "| Metric | gateway | Prosody | ejabberd | gateway/Prosody | gateway/ejabberd |",
        "|---|---|---|---|---|---|",
    ]
    for label, fmt, g, p, e in comparison_rows(report):
        lines.append(f"| {label} ({runs_label((g, p, e))}) | {figure_cell(fmt, g)} | "
                     f"{figure_cell(fmt, p)} | {figure_cell(fmt, e)} | "
                     f"{g['median'] / p['median']:.2f} | {g['median'] / e['median']:.2f} |")
    lines += idle_rows(report)
    idle = report["results"]["gateway"]["idle"]
    notes = [f"{name}: {report['results'][name]['idle']['note']}"
             for name in ("gateway", "prosody", "ejabberd")
             if report["results"][name]["idle"].get("note")]
    lines += ["", "Idle sessions: distinct peer domains d00000.load.example … with one "
              "wildcard certificate, SASL EXTERNAL, kept open with keepalives off, opened in "
              f"steps of {' → '.join(f'{c:,}' for c in idle['counts'])} sessions on a freshly "
              f"started receiver, {len(idle['runs'])} times. At each step the RSS of the "
              "receiver's whole process tree (ejabberd: the Erlang VM and its helpers) is read "
              f"once it has settled ({args.idle_settle:g} s, then until two samples a second "
              "apart agree within 0.2 %); the figure at N sessions is the least-squares slope "
              "of RSS over the steps from 0 to N, so memory a runtime gives back while "
              "sessions open cannot make it negative, and a figure that is not positive fails "
              "the run."
              + "".join(f" {note}." for note in notes), "",
              "Where the time and memory go, with profiles: [performance.md](performance.md).",
              ""]
    sip = report["results"]["gateway"].get("sip")
    if sip:
        lines += [
            "## XMPP→SIP latency", "",
            f"{sip['sent']:,} chat messages offered at {sip['offered_rate']:,.0f} msg/s over "
            "one S2S session (TLS + SASL EXTERNAL) to the gateway (`sip.backend: sip`, UDP), "
            "relayed by Kamailio to a registered SIP UA (bench/sip_sink.py) that answers 200. "
            "Latency: the sender's CLOCK_MONOTONIC in the body to the UA's at arrival (same "
            "machine), so it covers S2S, the gateway's routing and SIP mapping, and Kamailio.", "",
            "| Received | p50 ms | p90 ms | p99 ms | max ms |", "|---|---|---|---|---|",
            f"| {sip['received']:,} of {sip['expected']:,} | {sip['latency_p50_ms']:.2f} | "
            f"{sip['latency_p90_ms']:.2f} | {sip['latency_p99_ms']:.2f} | "
            f"{sip['latency_max_ms']:.2f} |", ""]
    lines += ["## Targets, from this run", "", "| Target | Measured | Met |",
              "|---|---|---|", *target_rows(report), ""]
    return lines + [f"![{k}](benchmarks/{k}.png)" for k in PLOTS] + [""]


def target_rows(report: dict) -> list[str]:
    r = report["results"]
    g, p = r["gateway"], r["prosody"]
    rows = []
    for method, label in METHODS.items():
        ratio = g[method]["messages_per_second"] / p[method]["messages_per_second"]
        rows.append(f"| throughput ≥ 1.5x Prosody ({label}) | {ratio:.2f}x | "
                    f"{'yes' if ratio >= 1.5 else 'no'} |")
        ours, theirs = g[method]["handshake_p50_ms"], p[method]["handshake_p50_ms"]
        rows.append(f"| handshake p50 ≤ Prosody's ({label}) | {ours:.1f} vs {theirs:.1f} ms | "
                    f"{'yes' if ours <= theirs else 'no'} |")
    for total in idle_totals(report):
        ours = g["idle"]["at"].get(total)
        theirs = [r[name]["idle"]["at"][total]["median"] for name in ("prosody", "ejabberd")
                  if total in r[name]["idle"]["at"]]
        label = f"memory per idle session at {int(total):,} ≤ 0.8x the lower of Prosody/ejabberd"
        if ours is None or not theirs:
            rows.append(f"| {label} | not measured (a receiver could not hold {int(total):,}) "
                        "| — |")
            continue
        ratio = ours["median"] / min(theirs)
        rows.append(f"| {label} | {ratio:.2f}x ({ours['median']:.1f} vs {min(theirs):.1f} KiB) "
                    f"| {'yes' if ratio <= 0.8 else 'no — see performance.md'} |")
    sip = g.get("sip")
    if sip:
        ok = sip["latency_p99_ms"] < 5 and sip["received"] == sip["expected"]
        rows.append(f"| XMPP→SIP p99 < 5 ms at {sip['offered_rate']:,.0f} msg/s | "
                    f"{sip['latency_p99_ms']:.2f} ms | {'yes' if ok else 'no'} |")
    return rows


PLOTS = ("messages_per_second", "handshake_p50_ms", "handshake_p99_ms", "kib_per_session",
         "sip_latency")


if __name__ == "__main__":
    sys.exit(main())
