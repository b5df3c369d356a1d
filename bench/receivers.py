"""The receiver comparison of `make bench`: the gateway, Prosody 0.12 and ejabberd 23.01 each
as the receiving server of the same load (bench/loadgen.py: one S2S session from
load.example, TLS + SASL EXTERNAL or TLS + dialback, then N messages; K handshakes), their
memory per idle session (bench/idle.py ramps, the process tree's settled RSS), and the
XMPP→SIP latency through Kamailio (bench/sip_load.py to bench/sip_sink.py). Every figure
that cannot be true fails the run instead of being published."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import procfs
from bench.relay_child import Child
from bench.setup import ROOT
from testbed.kamailio import Kamailio
from testbed.namespace import Namespace
from testbed.pki import Pki
from testbed.servers import Ejabberd, GatewayProcess, Prosody


def slope(points: list[tuple[int, int]]) -> float:
    """Least-squares KiB per session (or partner) through (count, RSS KiB) points."""
    return statistics.linear_regression([x for x, _ in points], [y for _, y in points]).slope


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


# Idle memory: session totals of each ramp, ramps per receiver, and how long a
# point is left to settle (more than the gateway's RELEASE_IDLE_AFTER; lets a garbage-
# collected runtime such as ejabberd's VM give back or take what it will).
IDLE_COUNTS = (1000, 5000, 10000)
IDLE_RUNS = 3
IDLE_SETTLE = 10.0
IDLE_MAX_SESSIONS = 15000  # the receiving gateway's limits.max_connections for the ramp
# A ramp's child (bench/idle.py, bench/bidi_load.py) gets this long to open the sessions of
# one step, and to close them all at the end, before it counts as failed and is killed.
STEP_LIMIT = 900.0
CLOSE_LIMIT = 120.0


def idle_ramp(ns: Namespace, pki: Pki, receiver: str, recipient: str, counts: tuple[int, ...],
              root: int, settle: float) -> dict:
    """One ramp: the receiver's settled RSS (process tree ``root``) with 0 sessions, then
    with each total of ``counts`` idle authenticated sessions open. Stops at the first
    total the receiver cannot hold, with bench/idle.py's error."""
    points = [(0, procfs.settled_rss(root, settle))]
    seconds: list[float] = []
    error = None
    idle = Child(ns.exec, "bench.idle", [receiver, recipient, ",".join(map(str, counts)),
                                          pki.root, ns.workdir],
                 ns.workdir / f"idle-{receiver}.log")
    try:
        for wanted in counts:
            try:
                opened = idle.line(STEP_LIMIT)
            except RuntimeError as exc:  # ended or silent: the ramp stops here, with why
                error = f"bench.idle ended before {wanted} sessions: {exc}"
                break
            if "error" in opened or opened["sessions"] != wanted:
                error = opened.get("error", f"{opened['sessions']} of {wanted} sessions open")
                break
            seconds.append(opened["seconds_to_open"])
            points.append((wanted, procfs.settled_rss(root, settle)))
            idle.send("next" if wanted != counts[-1] else "")
    finally:
        idle.send("")
        idle.close(wait=CLOSE_LIMIT)
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
                "udp_receive_buffer_drops": procfs.udp_receive_drops(ns.exec),
                "transport": "udp", "path": "S2S (TLS+SASL) -> gateway -> Kamailio -> UA"}
    finally:
        if sink is not None and sink.poll() is None:
            sink.kill()
            sink.wait(10)
        gateway.stop()
        kamailio.stop()


