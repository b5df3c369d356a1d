"""One PNG bar chart per metric from bench/results/results.json (docs/benchmarks/*.png)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = (
    ("messages_per_second", "Inbound S2S throughput (msg/s, higher is better)", None),
    ("handshake_p50_ms", "Handshake p50 (ms, lower is better)", None),
    ("handshake_p99_ms", "Handshake p99 (ms, lower is better)", None),
    ("kib_per_session", "Memory per idle session (KiB RSS, lower is better)", "idle"),
)


def main(results: Path = ROOT / "bench" / "results" / "results.json") -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = json.loads(results.read_text())
    out = ROOT / "docs" / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    names = ["gateway", "prosody", "ejabberd"]
    for key, title, section in METRICS:
        values = []
        for name in names:
            data = report["results"][name]
            values.append((data[section] if section else data)[key])
        figure, axis = plt.subplots(figsize=(5, 3.2), dpi=100)
        bars = axis.bar(["gateway", "Prosody 0.12", "ejabberd 23.01"], values,
                        color=["#2b7bba", "#999999", "#bbbbbb"])
        axis.bar_label(bars, fmt="{:,.1f}" if max(values) < 1000 else "{:,.0f}")
        axis.set_title(title, fontsize=10)
        axis.spines[["top", "right"]].set_visible(False)
        figure.tight_layout()
        figure.savefig(out / f"{key}.png")
        plt.close(figure)
        print(out / f"{key}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
