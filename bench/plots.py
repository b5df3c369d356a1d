"""PNG charts from bench/results/results.json (docs/benchmarks/*.png): one per metric,
both authentication methods side by side, and the XMPP→SIP latency percentiles. Bars are
the medians of the runs, the whiskers their min and max (none for a single run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.report import load_figure

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("gateway", "prosody", "ejabberd")
LABELS = ("gateway", "Prosody 0.12", "ejabberd 23.01")
METHODS = (("sasl", "TLS + SASL EXTERNAL"), ("dialback", "TLS + dialback"))
PER_METHOD = (
    ("messages_per_second", "Inbound S2S throughput (msg/s, higher is better)"),
    ("handshake_p50_ms", "Handshake p50 (ms, lower is better)"),
    ("handshake_p99_ms", "Handshake p99 (ms, lower is better)"),
)


def _whiskers(figures: list[dict]) -> list[list[float]]:
    """matplotlib's asymmetric error bars: distances from the median to min and max."""
    return [[f["median"] - f["min"] for f in figures], [f["max"] - f["median"] for f in figures]]


def main(results: Path = ROOT / "bench" / "results" / "results.json",
         out: Path | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = json.loads(results.read_text())["results"]
    out = out or ROOT / "docs" / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)

    def save(figure, axis, title: str, name: str) -> None:
        axis.set_title(title, fontsize=10)
        axis.spines[["top", "right"]].set_visible(False)
        figure.tight_layout()
        figure.savefig(out / f"{name}.png")
        plt.close(figure)
        print(out / f"{name}.png")

    for key, title in PER_METHOD:
        figure, axis = plt.subplots(figsize=(6, 3.4), dpi=100)
        width = 0.38
        for offset, (method, label) in enumerate(METHODS):
            figures = [load_figure(report[name][method], key) for name in NAMES]
            values = [f["median"] for f in figures]
            positions = [i + (offset - 0.5) * width for i in range(len(NAMES))]
            bars = axis.bar(positions, values, width, label=label,
                            color=("#2b7bba", "#8fbfe0")[offset], yerr=_whiskers(figures),
                            capsize=3, error_kw={"elinewidth": 0.8, "ecolor": "#444444"})
            axis.bar_label(bars, fmt="{:,.1f}" if max(values) < 1000 else "{:,.0f}",
                           fontsize=8)
        axis.set_xticks(range(len(NAMES)), LABELS)
        axis.legend(fontsize=8, frameon=False)
        save(figure, axis, title, key)

    figure, axis = plt.subplots(figsize=(5, 3.2), dpi=100)
    idle = [report[name]["idle"] for name in NAMES]
    figures = [i["at"][str(i["sessions"])] for i in idle]
    values = [f["median"] for f in figures]
    bars = axis.bar(LABELS, values, color=["#2b7bba", "#999999", "#bbbbbb"],
                    yerr=_whiskers(figures), capsize=3,
                    error_kw={"elinewidth": 0.8, "ecolor": "#444444"})
    axis.bar_label(bars, fmt="{:,.1f}")
    save(figure, axis, f"Memory per idle session at {idle[0]['sessions']:,} sessions "
         "(KiB RSS, lower is better)", "kib_per_session")

    sip = report["gateway"].get("sip")
    if sip:
        figure, axis = plt.subplots(figsize=(5, 3.2), dpi=100)
        keys = ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_max_ms")
        bars = axis.bar(["p50", "p90", "p99", "max"], [sip[k] for k in keys], color="#2b7bba")
        axis.bar_label(bars, fmt="{:.2f}")
        axis.axhline(5.0, color="#cc4444", linewidth=1, linestyle="--", label="p99 target 5 ms")
        axis.legend(fontsize=8, frameon=False)
        save(figure, axis, f"XMPP→SIP latency at {sip['offered_rate']:,.0f} msg/s (ms)",
             "sip_latency")
    return 0


if __name__ == "__main__":
    sys.exit(main())
