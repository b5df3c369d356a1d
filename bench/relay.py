"""The relay section of `make bench`: the gateway relaying between a real
Prosody and SIP, next to Prosody relaying to Prosody, in the same run, on the same load.

    Prosody a.example ──S2S (TLS+SASL EXTERNAL)── gateway gw.example ── Kamailio ── SIP UA
         │ c2s writer / receiver                     (sip.backend: sip, UDP)   (bench/sip_sink)
         └──S2S (TLS+SASL EXTERNAL)── Prosody b.example ── c2s writer / receiver

Paths (each: paced runs at several rates, then one free-running burst):
``xmpp_sip``  c2s writer on a → Prosody a → gateway → Kamailio → SIP UA;
``xmpp_xmpp`` c2s writer on a → Prosody a → Prosody b → c2s receiver;
``sip_xmpp``  SIP UA (bench/relay_sip.py) → Kamailio → gateway → Prosody a → c2s receiver;
``xmpp_xmpp_back`` c2s writer on b → Prosody b → Prosody a → c2s receiver;
``sip_direct`` SIP UA in the proxy's place (its address) → gateway → Prosody a → c2s
receiver, each MESSAGE its own datagram: paced at 10,000/s from one socket (what phones
behind a stateless path produce; Prosody a's cost in the same run is its S2S → c2s path),
then an open-loop flood with no retransmission (answered / 503 / unanswered, and the
kernel's drops at the gateway's socket);
``xmpp_sip_chat`` the ``xmpp_sip`` path with what a chat client sends around each message
(bench/relay_xmpp.py ``chat_turn``: typing, receipt request and marker, the receipt and
marker for the other side's message; 4.5 stanzas per user-visible message), counted and
measured per user-visible message (a shorter run: ``Sizes.chat_*``).
Then the presence storm (bench/relay_storm.py). For each run: sent, delivered, refused
(stanza errors back to the writer / SIP final answers >= 300), dropped (the rest), rates,
CPU µs per delivered message of every server process, the gateway's peak RSS, its
counters and the namespace's UDP receive-buffer drops. Every child is bounded in time.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench import procfs
from bench.relay_child import Child
from testbed.kamailio import Kamailio
from testbed.namespace import IPS, Namespace
from testbed.pki import Pki
from testbed.servers import GatewayProcess, Prosody

GW = IPS["gw.example"]
KAMAILIO_PORT, GATEWAY_SIP_PORT = 5070, 5062
QUIET = 5.0  # a receiver that saw nothing new for this long has all it will get


@dataclass(frozen=True)
class Sizes:
    rates: tuple[int, ...] = (1000, 2000, 5000, 10000)  # paced runs, msg/s offered
    seconds: float = 2.0  # length of each paced run
    burst: int = 100_000  # the free-running run
    storm: int = 5_000  # contacts in the presence storm (each side)
    sip_window: int = 2000  # SIP requests without a final answer, at most (bench/relay_sip)
    direct_rate: int = 10_000  # sip_direct: the paced run, msg/s, one datagram each
    direct_seconds: float = 5.0  # its length
    open_loop: int = 50_000  # sip_direct: the open-loop flood (0: none)
    chat_rates: tuple[int, ...] = (1000,)  # the chat mix: user-visible messages/s offered
    chat_burst: int = 20_000  # user-visible messages (4.5 stanzas each) in its burst
    # XEP-0198 on the S2S links (Prosody's mod_smacks; the gateway enables it where
    # offered): the default, as deployed; off measures the relay without acknowledgements.
    stream_management: bool = True


@dataclass(frozen=True)
class RelayPath:
    """One relay path: who writes (a c2s user, or the SIP UA), to whom, who counts."""

    writer: tuple[str, str] | None  # (Prosody host, domain) of the c2s writer; None = SIP
    recipient: str
    sink: tuple[str, str] | None  # (Prosody host, domain) of the c2s receiver; None = SIP
    sip_port: int = KAMAILIO_PORT  # where a SIP writer sends: Kamailio, or the gateway
    chat: bool = False  # the writer sends a chat client's turn per message (chat_turn)


PATHS = {  # Prosody's path first: the gateway's backlog cannot slow it down
    "xmpp_xmpp": RelayPath((IPS["a.example"], "a.example"), "user@b.example",
                       (IPS["b.example"], "b.example")),
    "xmpp_sip": RelayPath((IPS["a.example"], "a.example"), "user@gw.example", None),
    "xmpp_xmpp_back": RelayPath((IPS["b.example"], "b.example"), "user@a.example",
                            (IPS["a.example"], "a.example")),
    "sip_xmpp": RelayPath(None, "user@a.example", (IPS["a.example"], "a.example")),
    "xmpp_sip_chat": RelayPath((IPS["a.example"], "a.example"), "user@gw.example", None,
                               chat=True),
}
# The SIP UA in the proxy's place: it sends from the proxy's address (the gateway's
# trusted source) straight to the gateway's SIP port.
DIRECT = RelayPath(None, "user@a.example", (IPS["a.example"], "a.example"),
                   sip_port=GATEWAY_SIP_PORT)
SETTLE = 40.0  # longest wait for the gateway to finish a path's SIP transactions


class RelayWorld:
    """Prosody a and b, Kamailio and the gateway, started in ``ns`` and stopped by PID."""

    def __init__(self, ns: Namespace, pki: Pki, stream_management: bool = True) -> None:
        self.ns, self.pki = ns, pki
        self.logs = ns.workdir / "relay"
        self.logs.mkdir(exist_ok=True)
        # Prosody forgets the oldest of more than smacks_max_queue_size unacknowledged
        # stanzas; a burst of 100,000 outruns the default 500 (docs/delivery.md).
        smacks = {"smacks": stream_management,
                  "extra": ("smacks_max_queue_size = 20000",) if stream_management else ()}
        self.a = Prosody(ns, pki, "a.example", log_level="warn",
                         users=("writer", "user", "storm"), **smacks)
        self.b = Prosody(ns, pki, "b.example", log_level="warn", users=("writer", "user"),
                         **smacks)
        self.kamailio = Kamailio(self.logs, domain="gw.example", host=GW, port=KAMAILIO_PORT,
                                 gateway=(GW, GATEWAY_SIP_PORT), prefix=ns.exec, debug=1)
        self.gateway = GatewayProcess(
            ns, pki, [{"domain": "a.example", "type": "federated", "tls": "required",
                       "sasl": "required", "dialback": "false"}], log_level="warning",
            sip={"backend": "sip", "proxy_host": GW, "proxy_port": KAMAILIO_PORT,
                 "transport": "udp", "local_host": GW, "local_port": GATEWAY_SIP_PORT},
            extra=("metrics: {enabled: true, host: 127.0.0.1, port: 9269}",),
            drops_expected=True,  # overload runs report drops (status) instead of failing
            record_s2s=False)  # the S2S recording (a test aid) would cost CPU per write

    @contextlib.contextmanager
    def running(self) -> Iterator[RelayWorld]:
        started: list[Any] = []
        try:
            for server in (self.a, self.b, self.kamailio, self.gateway):
                server.start()
                started.append(server)
            yield self
        finally:
            for server in reversed(started):
                server.stop()

    def pids(self) -> dict[str, int]:
        return {"gateway": self.gateway.process.pid,  # type: ignore[union-attr]
                "prosody_a": self.a.process.pid,  # type: ignore[union-attr]
                "prosody_b": self.b.process.pid,  # type: ignore[union-attr]
                "kamailio": self.kamailio.process.pid}  # type: ignore[union-attr]

    def child(self, module: str, *args: Any) -> Child:
        return Child(self.ns.exec, module, list(args), self.logs / f"{module}.log")

    def counters(self) -> dict[str, Any]:
        """The gateway's own figures: `status --json` (router, backend, "sip" when the
        gateway has it) and the dropped counter of /metrics when it exists."""
        try:
            status = self.gateway.status()
        except (subprocess.SubprocessError, ValueError) as exc:
            return {"error": f"status failed: {exc}"}
        found = {key: status[key] for key in ("router", "backend", "sip", "queues")
                 if key in status}
        found["dropped_total"] = self.dropped_total()
        return found

    def settle(self, limit: float = SETTLE) -> float:
        """Wait until the gateway has no SIP transaction in flight and no S2S queue (late
        answers of one path must not land in the next); the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < limit:
            counters = self.counters()
            if not counters.get("queues") and not counters.get("backend", {}).get(
                    "transactions"):
                break
            time.sleep(0.5)
        return time.monotonic() - started

    def dropped_total(self) -> dict[str, float] | None:
        """``xmpp_gateway_dropped_total{reason}`` from /metrics (None while absent)."""
        scrape = ("import urllib.request; print(urllib.request.urlopen("
                  "'http://127.0.0.1:9269/metrics', timeout=5).read().decode())")
        out = subprocess.run([*self.ns.exec, sys.executable, "-c", scrape], capture_output=True,
                             text=True, timeout=30)
        if out.returncode != 0:
            return None
        found: dict[str, float] = {}
        for line in out.stdout.splitlines():
            if line.startswith("xmpp_gateway_dropped_total"):
                labels, _, number = line.rpartition(" ")
                reason = labels.partition('reason="')[2].partition('"')[0] or "all"
                found[reason] = float(number)
        return found if found else None


class Meter:
    """CPU of every server process, the gateway's peak RSS and counters, UDP drops: read
    at the start of a run (``begin``) and at its end (``end``)."""

    def __init__(self, world: RelayWorld) -> None:
        self.world = world
        self.pids = world.pids()

    def begin(self) -> None:
        self.cpu = {name: procfs.cpu_us(pid) for name, pid in self.pids.items()}
        self.rss_reset = procfs.reset_peak_rss(self.pids["gateway"])
        self.drops = procfs.udp_receive_drops(self.world.ns.exec)
        self.socket_drops = procfs.udp_socket_drops(self.world.ns.exec)
        self.before = self.world.counters()

    def end(self, delivered: int) -> dict[str, Any]:
        cpu = {name: procfs.cpu_us(pid) - self.cpu[name] for name, pid in self.pids.items()}
        per_message = {name: (used / delivered if delivered else None)
                       for name, used in cpu.items()}
        return {"cpu_us": cpu, "cpu_us_per_message": per_message,
                "gateway_peak_rss_kib": procfs.peak_rss_kib(self.pids["gateway"]),
                "gateway_peak_rss_since": "run start" if self.rss_reset else "gateway start",
                "udp_receive_buffer_drops":
                    procfs.udp_receive_drops(self.world.ns.exec) - self.drops,
                "udp_drops_by_socket": self.socket_drops_since(),
                "gateway_counters_before": self.before,
                "gateway_counters_after": self.world.counters()}

    def socket_drops_since(self) -> dict[str, int]:
        """UDP drops during the run at the gateway's SIP socket, Kamailio's, and the
        benchmark's own UAs (any other port)."""
        now = procfs.udp_socket_drops(self.world.ns.exec)
        found = {"gateway": 0, "kamailio": 0, "benchmark_uas": 0}
        for port, count in now.items():
            role = {GATEWAY_SIP_PORT: "gateway", KAMAILIO_PORT: "kamailio"}.get(
                port, "benchmark_uas")
            found[role] += count - self.socket_drops.get(port, 0)
        return found


def run_path(world: RelayWorld, path: RelayPath, n: int, rate: float, sizes: Sizes, *,
             open_loop: bool = False) -> dict:
    """One run on one path: ``n`` messages at ``rate`` msg/s (0: as fast as accepted);
    ``open_loop``: a SIP flood with no retransmission and no window (bench/relay_sip)."""
    limit = 20 + n / 2000  # 70 s for a burst of 100,000: bounded even at 1,500 msg/s
    meter = Meter(world)
    with contextlib.ExitStack() as children:  # every child ends with the run, also on error
        sink = children.enter_context(
            world.child("bench.relay_xmpp", "sink", *path.sink, "user", limit + 30)
            if path.sink else world.child("bench.sip_sink", GW, KAMAILIO_PORT, "user",
                                          "gw.example", 0, limit + 30, "--control"))
        ready = sink.line(30)
        if path.sink is None and ready.get("bindings") != 1:
            # Kamailio forks every MESSAGE to each binding of the user: a binding left by
            # an earlier sink would add a dead branch per message to what is measured.
            raise RuntimeError(f"SIP sink: {ready.get('bindings')} bindings for "
                               "user@gw.example, 1 expected (a stale registration)")
        if path.writer is not None:
            writer = children.enter_context(world.child(
                "bench.relay_xmpp", "write", *path.writer, "writer", path.recipient, n, rate,
                limit, *(["chat"] if path.chat else [])))
            writer.line(30)
            meter.begin()
            writer.send("go")
            sent = writer.line(limit + 10)
        else:
            meter.begin()
            load = children.enter_context(world.child(
                "bench.relay_sip", "message", GW, path.sip_port, n, rate,
                0 if open_loop else sizes.sip_window, limit, path.recipient,
                *(["--open-loop"] if open_loop else [])))
            sent = load.line(limit + 20)
        sink.send(f"{sent['sent']} {QUIET} {limit}")
        arrived = sink.line(limit + 20)
        indices = set(arrived.pop("indices"))
        measured = meter.end(len(indices))
        if path.writer is not None:
            writer.send("stop")
            answers = writer.line(20)
            refused, errors = set(answers.pop("refused_indices")), answers["errors"]
            stray = answers["stray_errors"]
        else:
            refused, errors = set(sent.pop("refused_indices")), sent["refused"]
            stray = 0
    # Each message is counted once by its index: delivered = distinct indices that
    # arrived; refused = errors returned (some for messages that still arrived, e.g. a
    # timeout error after a late delivery); dropped = neither delivered nor refused.
    delivered = len(indices)
    span = (arrived["last_at"] - sent["started_at"]) if arrived.get("last_at") else None
    return {
        "sent": sent["sent"], "wanted": n, "rate": rate, "offered_rate": sent["offered_rate"],
        "delivered": delivered, "refused": errors,
        "refused_but_delivered": len(refused & indices),
        "stray_errors": stray,  # late errors for an earlier run's messages
        "dropped": sent["sent"] - len(indices | refused),
        "delivered_rate": delivered / span if span and delivered else 0.0,
        # the benchmark's own ends share the cores with the servers: their CPU (each
        # measures its own, process_time over the run) per delivered message
        "bench_cpu_us_per_message": {
            role: (line["cpu_s"] * 1e6 / delivered if delivered and "cpu_s" in line else None)
            for role, line in (("writer", sent), ("receiver", arrived))},
        **measured, "writer": sent, "receiver": {k: v for k, v in arrived.items()
                                                 if k not in ("first_at", "last_at")},
    }


def run_relay(ns: Namespace, pki: Pki, sizes: Sizes,
              paths: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Every path (paced runs, then the burst), the one-datagram SIP runs and the presence
    storm, one world; ``paths`` (names of PATHS and ``sip_direct``) runs only those (and
    the storm only when ``sizes.storm``)."""
    from bench.relay_storm import presence_storm

    results: dict[str, Any] = {
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "sizes": sizes.__dict__, "paths": {}}
    world = RelayWorld(ns, pki, sizes.stream_management)
    with world.running():
        for name, path in PATHS.items():
            if paths is not None and name not in paths:
                continue
            warm = run_path(world, path, 5, 0, sizes)  # S2S sessions up before measuring
            if warm["delivered"] != 5:
                raise RuntimeError(f"relay warm-up on {name} failed: {warm}\n"
                                   f"{world.gateway.log[-3000:]}")
            runs: dict[str, Any] = {"paced": []}
            for rate in sizes.chat_rates if path.chat else sizes.rates:
                n = max(1, int(rate * sizes.seconds))
                runs["paced"].append(run_path(world, path, n, rate, sizes))
            runs["burst"] = run_path(world, path, sizes.chat_burst if path.chat
                                     else sizes.burst, 0, sizes)
            runs["settle_seconds"] = world.settle()
            results["paths"][name] = runs
        if paths is None or "sip_direct" in paths:
            results["direct"] = direct_runs(world, sizes)
        if sizes.storm:
            results["storm"] = presence_storm(world, Meter(world), sizes.storm)
    return results


def direct_runs(world: RelayWorld, sizes: Sizes) -> dict[str, Any]:
    """SIP → XMPP with each MESSAGE its own datagram from the proxy's address: paced from
    one socket, then (``sizes.open_loop``) an open-loop flood."""
    warm = run_path(world, DIRECT, 5, 0, sizes)
    if warm["delivered"] != 5:
        raise RuntimeError(f"relay warm-up on sip_direct failed: {warm}\n"
                           f"{world.gateway.log[-3000:]}")
    found: dict[str, Any] = {"paced": run_path(
        world, DIRECT, int(sizes.direct_rate * sizes.direct_seconds), sizes.direct_rate,
        sizes)}
    found["settle_seconds"] = world.settle()
    if sizes.open_loop:
        found["open_loop"] = run_path(world, DIRECT, sizes.open_loop, 0, sizes,
                                      open_loop=True)
        found["open_loop_settle_seconds"] = world.settle()
    return found
