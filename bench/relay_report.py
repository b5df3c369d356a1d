"""The relay section of docs/benchmarks.md and its targets, computed from
results.json only (``bench.run --report-only`` regenerates it); nothing typed in."""

from __future__ import annotations

PATH_LABELS = {
    "xmpp_sip": "XMPP→SIP: c2s → Prosody a → S2S → **gateway** → Kamailio → SIP UA",
    "xmpp_xmpp": "XMPP→XMPP: c2s → Prosody a → S2S → **Prosody b** → c2s",
    "sip_xmpp": "SIP→XMPP: SIP UA → Kamailio → **gateway** → S2S → Prosody a → c2s",
    "xmpp_xmpp_back": "XMPP→XMPP: c2s → **Prosody b** → S2S → Prosody a → c2s",
    "xmpp_sip_chat": "XMPP→SIP chat mix (per user-visible message: typing 1.5, the message "
                     "asking a receipt and marker, a receipt and a marker back): c2s → "
                     "Prosody a → **gateway** → Kamailio → SIP UA",
}
PROCESSES = ("gateway", "prosody_a", "prosody_b", "kamailio")
# (direction, gateway's path, Prosody's path doing the same job, the Prosody process)
COMPARED = (("XMPP→SIP", "xmpp_sip", "xmpp_xmpp", "prosody_b"),
            ("SIP→XMPP", "sip_xmpp", "xmpp_xmpp_back", "prosody_b"))
TARGET_RATE, TARGET_CPU_US, TARGET_P99_MS = 10_000, 50.0, 5.0
TARGET_DIRECT_CPU_US = 45.0  # SIP → XMPP, one datagram per message
MISSING = "n/a"


def _num(value: float | None, fmt: str = "{:,.0f}") -> str:
    return MISSING if value is None else fmt.format(value)


def _runs(path: dict, seconds: float) -> list[tuple[str, dict]]:
    return [(f"{run.get('rate', run['wanted'] / seconds):,.0f} msg/s for {seconds:g} s", run)
            for run in path["paced"]] + [(f"burst {path['burst']['wanted']:,}", path["burst"])]


def sustained(path: dict) -> float:
    """Highest delivered msg/s of a run that lost nothing and refused nothing (0 if none)."""
    return max((run["delivered_rate"] for run in [*path["paced"], path["burst"]]
                if run["sent"] == run["wanted"] == run["delivered"]), default=0.0)


def relay_markdown(relay: dict) -> list[str]:
    sizes, paths = relay["sizes"], relay["paths"]
    lines = [
        "## Relay: a real Prosody through the gateway to SIP and back", "",
        f"Measured {relay.get('measured', 'with the run above')} "
        "(`python -m bench.run --only-relay` runs this section alone). "
        "Same run, same machine: Prosody 0.12 a.example sends over one S2S session (TLS + SASL "
        "EXTERNAL) to the gateway (`sip.backend: sip`, UDP) and Kamailio (2 UDP workers, "
        "`-x tlsf -m 1024`: deploy/kamailio/kamailio.cfg), and to a second "
        "Prosody b.example; a c2s writer (bench/relay_xmpp.py, raw XML after SASL PLAIN, "
        "pipelined) feeds it; the SIP UA sink (bench/sip_sink.py), the user's only registered "
        "binding, answers every MESSAGE 200; "
        "SIP→XMPP load comes from a SIP UA (bench/relay_sip.py, retransmitting on Timer E, at "
        f"most {sizes['sip_window']:,} requests without a final answer). Paced runs last "
        f"{sizes['seconds']:g} s each; the burst is free-running (the writer waits only on TCP "
        "flow control). Refused: stanza errors back to the writer, or SIP final answers "
        "≥ 300 (some for messages that arrived all the same, e.g. a timeout error after a "
        "late delivery: shown in brackets); dropped: messages neither delivered nor refused "
        "(each counted once by the index in its body). CPU: utime + stime from "
        "/proc/PID/stat over the run (Kamailio: all its processes) per delivered message; "
        "peak RSS: the gateway's VmHWM, reset at the start of each run.", "",
        "| Path | Run | Sent | Offered msg/s | Delivered | Delivered msg/s | Refused | Dropped "
        "| CPU µs/msg gateway | Prosody a | Prosody b | Kamailio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, path in paths.items():
        for label, run in _runs(path, sizes["seconds"]):
            cpu = run["cpu_us_per_message"]
            lines.append(
                f"| {PATH_LABELS[name]} | {label} | {run['sent']:,} | "
                f"{_num(run['offered_rate'])} | {run['delivered']:,} | "
                f"{_num(run['delivered_rate'])} | {refused(run)} | {run['dropped']:,} | "
                + " | ".join(_num(cpu[p], "{:.0f}") for p in PROCESSES) + " |")
    lines += ["", "CPU per relayed message, gateway against the Prosody doing the same job in "
              "the same run (XMPP→SIP: Prosody b receiving S2S and delivering to c2s; "
              "SIP→XMPP: Prosody b taking c2s and relaying over S2S):", "",
              "| Direction | Run | gateway µs/msg | Prosody µs/msg | gateway/Prosody |",
              "|---|---|---|---|---|"]
    for direction, ours, theirs, process in COMPARED:
        if ours not in paths or theirs not in paths:
            continue
        for (label, run), (_, other) in zip(_runs(paths[ours], sizes["seconds"]),
                                            _runs(paths[theirs], sizes["seconds"]), strict=True):
            g = run["cpu_us_per_message"]["gateway"]
            p = other["cpu_us_per_message"][process]
            ratio = f"{g / p:.2f}" if g is not None and p else MISSING
            lines.append(f"| {direction} | {label} | {_num(g, '{:.0f}')} | "
                         f"{_num(p, '{:.0f}')} | {ratio} |")
    lines += bench_ends_markdown(paths, sizes["seconds"])
    lines += ["", "Bursts:", "",
              "| Path | Sent | Delivered | Refused | Dropped | Gateway peak RSS MiB | "
              "UDP datagrams dropped: gateway / Kamailio / benchmark UAs | "
              "SIP retransmissions / 503 + Retry-After, sent again (UA) |",
              "|---|---|---|---|---|---|---|---|"]
    for name, path in paths.items():
        run = path["burst"]
        rss = run["gateway_peak_rss_kib"]
        lines.append(f"| {PATH_LABELS[name]} | {run['sent']:,} | {run['delivered']:,} | "
                     f"{refused(run)} | {run['dropped']:,} | "
                     f"{_num(rss / 1024 if rss else None, '{:.1f}')} | "
                     f"{udp_drops(run)} | "
                     f"{run['writer'].get('retransmissions', MISSING)}"
                     + (f" / {run['writer']['busy']:,}" if "busy" in run["writer"] else "")
                     + " |")
    if relay.get("direct"):
        lines += direct_markdown(relay["direct"], sizes)
    storm = relay.get("storm")
    if storm:
        lines += storm_markdown(storm)
    return [*lines, ""]


DIRECT_LABEL = "SIP → XMPP, one datagram per message, paced {rate:,}/s"


def direct_markdown(direct: dict, sizes: dict) -> list[str]:
    """The runs where each MESSAGE is its own datagram from the proxy's address straight
    to the gateway (no Kamailio batching them): paced from one socket, and an open-loop
    flood with nothing retransmitted."""
    paced = direct["paced"]
    cpu = paced["cpu_us_per_message"]
    g, p = cpu["gateway"], cpu["prosody_a"]
    lines = ["", "SIP → XMPP with each MESSAGE its own datagram, sent from the proxy's address "
             "straight to the gateway's SIP socket by one UA socket (bench/relay_sip.py), the "
             "gateway relaying to Prosody a over S2S and Prosody a delivering to a c2s "
             "receiver: gateway CPU per message next to Prosody a's for its S2S → c2s part of "
             "the same messages, in the same run.", "",
             "| Run | Sent | Delivered | Refused | Dropped | Gateway µs/msg | Prosody a µs/msg "
             "(S2S → c2s) | gateway/Prosody | UDP datagrams dropped at the gateway |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| {DIRECT_LABEL.format(rate=paced['rate'])} | {paced['sent']:,} | "
             f"{paced['delivered']:,} | {refused(paced)} | {paced['dropped']:,} | "
             f"{_num(g, '{:.0f}')} | {_num(p, '{:.0f}')} | "
             f"{f'{g / p:.2f}' if g is not None and p else MISSING} | "
             f"{paced.get('udp_drops_by_socket', {}).get('gateway', MISSING)} |"]
    flood = direct.get("open_loop")
    if flood:
        ua = flood["writer"]
        finals = ua.get("finals", {})
        accepted = sum(c for s, c in finals.items() if int(s) < 300)
        busy = finals.get("503", 0)
        other = sum(c for s, c in finals.items() if int(s) >= 300 and s != "503")
        drops = flood.get("udp_drops_by_socket", {}).get("gateway")
        lines += ["", f"Open-loop flood: {flood['sent']:,} MESSAGEs from the proxy's address "
                  f"as fast as one socket takes them ({_num(flood['offered_rate'])} msg/s "
                  "offered), never retransmitted: what the gateway answered (202, or 503 + "
                  "Retry-After while the XMPP side is congested), what it never answered, and "
                  "what the kernel dropped at its socket before it could read it.", "",
                  "| Run | Sent | Answered 2xx | 503 + Retry-After | Other answers | "
                  "Unanswered | Kernel drops at the gateway's socket | Delivered to c2s |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| open-loop burst of {flood['wanted']:,} | {flood['sent']:,} | "
                  f"{accepted:,} | {busy:,} | {other:,} | {ua.get('unanswered', 0):,} | "
                  f"{_num(drops)} | {flood['delivered']:,} |"]
    return lines


ENDS = {  # (writer, receiver) of each path: the benchmark's own processes
    "xmpp_sip": ("c2s writer", "SIP UA sink"),
    "xmpp_xmpp": ("c2s writer", "c2s receiver"),
    "sip_xmpp": ("SIP UA", "c2s receiver"),
    "xmpp_xmpp_back": ("c2s writer", "c2s receiver"),
    "xmpp_sip_chat": ("c2s writer", "SIP UA sink"),
}


def bench_ends_markdown(paths: dict, seconds: float) -> list[str]:
    """CPU of the load generators and receivers: they share the cores with the servers, so
    a wasteful one would lower every msg/s figure (absent from results of older runs)."""
    if not any("bench_cpu_us_per_message" in run for path in paths.values()
               for _, run in _runs(path, seconds)):
        return []
    lines = ["", "CPU µs per delivered message of the benchmark's own ends (each takes its own "
             "process_time over the run; they run on the same cores as the servers):", "",
             "| Path | Run | Writer | µs/msg | Receiver | µs/msg |", "|---|---|---|---|---|---|"]
    for name, path in paths.items():
        writer, receiver = ENDS[name]
        for label, run in _runs(path, seconds):
            cpu = run.get("bench_cpu_us_per_message", {})
            lines.append(f"| {PATH_LABELS[name]} | {label} | {writer} | "
                         f"{_num(cpu.get('writer'), '{:.1f}')} | {receiver} | "
                         f"{_num(cpu.get('receiver'), '{:.1f}')} |")
    return lines


def refused(run: dict) -> str:
    late = run.get("refused_but_delivered", 0)
    return f"{run['refused']:,}" + (f" ({late:,} delivered anyway)" if late else "")


def udp_drops(run: dict) -> str:
    by_socket = run.get("udp_drops_by_socket")
    if not by_socket:
        return f"{run['udp_receive_buffer_drops']:,} (all sockets)"
    return " / ".join(f"{by_socket[k]:,}" for k in ("gateway", "kamailio", "benchmark_uas"))


def stored(sip_side: dict) -> str:
    count = sip_side.get("subscription_requests_stored_by_prosody")
    return MISSING if count is None else f"{count:,}"


def storm_markdown(storm: dict) -> list[str]:
    x, s = storm["xmpp_side"], storm["sip_side"]
    rss = storm["gateway_peak_rss_kib"]
    return [
        "", f"Presence storm, {storm['contacts']:,} contacts each side at once: Prosody user "
        f"storm@a.example logs in with {storm['contacts']:,} SIP users in its roster "
        "(subscription both: Prosody sends a presence and a probe for each over S2S; the "
        "gateway subscribes to each at Kamailio and maps the NOTIFY back), while "
        f"{storm['contacts']:,} SIP watchers each SUBSCRIBE to an XMPP user of their own "
        "(u00000@a.example …) through Kamailio; stored: the subscription requests Prosody "
        "keeps as pending in those users' rosters.",
        "",
        "| Side | Subscriptions | Mapped | NOTIFYs seen | Refused | Lost |",
        "|---|---|---|---|---|---|",
        f"| XMPP contacts → SIP users (probes) | {x['probed']:,} | {x['mapped']:,} | n/a | "
        f"{x['refused']:,} | {x['lost']:,} |",
        f"| SIP watchers → XMPP users (SUBSCRIBE) | {s['watchers']:,} | {s['accepted']:,} "
        f"({stored(s)} stored) | "
        f"{s['notifies']:,} ({s['notified_subscriptions']:,} subscriptions) | "
        f"{s['refused']:,} | {s['lost']:,} |",
        "",
        f"Gateway during the storm: peak RSS "
        f"{_num(rss / 1024 if rss else None, '{:.1f}')} MiB, CPU "
        f"{_num(storm['cpu_us']['gateway'] / 1000, '{:,.0f}')} ms; UDP datagrams dropped (gateway "
        f"/ Kamailio / benchmark UAs): {udp_drops(storm)}; SUBSCRIBE retransmissions by "
        f"the watchers: {s['retransmissions']:,}"
        + (f"; answered 503 + Retry-After and sent again later: {s['busy']:,}"
           if "busy" in s else "") + "."]


def relay_target_rows(report: dict) -> list[str]:
    """The relay targets (docs/performance.md), each computed from this run's figures."""
    relay = report["results"].get("relay")
    if not relay:
        return []
    paths, rows = relay["paths"], []

    def row(target: str, measured: str, met: bool) -> None:
        rows.append(f"| {target} | {measured} | {'yes' if met else 'no'} |")

    for direction, ours, theirs, process in COMPARED:
        if ours not in paths or theirs not in paths:
            continue
        best = sustained(paths[ours])
        row(f"{direction} ≥ {TARGET_RATE:,} msg/s sustained (best run with nothing lost)",
            f"{best:,.0f} msg/s", best >= TARGET_RATE)
        burst, other = paths[ours]["burst"], paths[theirs]["burst"]
        g = burst["cpu_us_per_message"]["gateway"]
        p = other["cpu_us_per_message"][process]
        row(f"{direction} CPU per relayed message ≤ {TARGET_CPU_US:g} µs in the gateway "
            f"(burst; Prosody's in the same run)",
            f"{_num(g, '{:.0f}')} µs (Prosody {_num(p, '{:.0f}')} µs, ratio "
            f"{f'{g / p:.2f}' if g is not None and p else MISSING})",
            g is not None and g <= TARGET_CPU_US)
        ok = (burst["refused"] == burst["dropped"] == 0
              and burst["delivered"] == burst["sent"] == burst["wanted"])
        row(f"{direction} burst of {burst['wanted']:,}: all delivered, 0 refused, 0 dropped",
            f"{burst['sent']:,} sent, {burst['delivered']:,} delivered, "
            f"{burst['refused']:,} refused, "
            f"{burst['dropped']:,} dropped, peak RSS "
            f"{_num((burst['gateway_peak_rss_kib'] or 0) / 1024, '{:.1f}')} MiB", ok)
    direct = relay.get("direct")
    if direct:
        paced = direct["paced"]
        g = paced["cpu_us_per_message"]["gateway"]
        p = paced["cpu_us_per_message"]["prosody_a"]
        row(f"{DIRECT_LABEL.format(rate=paced['rate'])}: ≤ {TARGET_DIRECT_CPU_US:g} µs CPU per "
            "message in the gateway, and no more than Prosody's S2S → c2s in the same run",
            f"{_num(g, '{:.0f}')} µs (Prosody {_num(p, '{:.0f}')} µs), "
            f"{paced['delivered']:,} of {paced['sent']:,} delivered",
            g is not None and p is not None and g <= TARGET_DIRECT_CPU_US and g <= p
            and paced["delivered"] == paced["sent"])
    storm = relay.get("storm")
    if storm:
        x, s = storm["xmpp_side"], storm["sip_side"]
        ok = (x["mapped"] == x["probed"] and s["accepted"] == s["watchers"]
              and s["notified_subscriptions"] == s["watchers"]
              and s.get("subscription_requests_stored_by_prosody") == s["watchers"])
        row(f"presence storm of {storm['contacts']:,}: every subscription mapped, none "
            "refused or lost",
            f"XMPP side {x['mapped']:,} mapped / {x['refused']:,} refused / {x['lost']:,} "
            f"lost; SIP side {s['accepted']:,} accepted, {s['notified_subscriptions']:,} "
            f"notified, {stored(s)} stored / {s['refused']:,} refused / {s['lost']:,} lost",
            ok)
    sip = report["results"].get("gateway", {}).get("sip")
    if sip:
        row(f"XMPP→SIP p99 < {TARGET_P99_MS:g} ms at {sip['offered_rate']:,.0f} msg/s "
            "(bench/sip_load.py: S2S straight into the gateway)",
            f"{sip['latency_p99_ms']:.2f} ms",
            sip["latency_p99_ms"] < TARGET_P99_MS and sip["received"] == sip["expected"])
    latency = paths["xmpp_sip"]["paced"][0] if "xmpp_sip" in paths else {"receiver": {}}
    p99 = latency["receiver"].get("latency_p99_ms")
    if p99 is not None:
        rate = latency.get("rate", latency["wanted"] / relay["sizes"]["seconds"])
        row(f"XMPP→SIP p99 < {TARGET_P99_MS:g} ms at {rate:,.0f} msg/s, through Prosody "
            "(c2s writer's clock to the UA's)",
            f"{p99:.2f} ms", p99 < TARGET_P99_MS and latency["dropped"] == 0)
    return rows
