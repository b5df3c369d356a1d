"""docs/benchmarks.md and the plots, from results.json only (``bench.run --report-only``
renders them again without a run): the receiver comparison with its ratios and targets,
then the sections bench/relay_report.py, bench/failover.py and bench/bidi_memory.py
write."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.bidi_memory import bidi_markdown
from bench.failover import failover_markdown
from bench.relay_report import relay_markdown, relay_target_rows
from bench.setup import ROOT

RECEIVERS = ("gateway", "prosody", "ejabberd")  # the receiver comparison's, in its order


def load_figure(data: dict, key: str) -> dict:
    """Median, min, max and run count of one metric; an older results.json holds a
    single run per metric, shown as such (min = max = the run)."""
    if "stats" in data:
        return {**data["stats"][key], "runs": len(data["runs"])}
    if not isinstance(data.get(key), int | float):
        raise ValueError(f"results.json: no {key} figure in {sorted(data)}: not a report "
                         "bench/run.py can render")
    return {"median": data[key], "min": data[key], "max": data[key], "runs": 1}


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


