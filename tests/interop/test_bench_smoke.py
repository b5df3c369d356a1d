"""A small run of the benchmark harness (`make bench` at full size is not part of
`make test`): every receiver, both authentication methods, idle sessions and the
XMPP→SIP latency path through Kamailio must produce numbers, written to a temp dir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_harness_smoke(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--messages", "1000", "--handshakes", "2",
         "--idle-counts", "100,200", "--idle-runs", "1", "--idle-settle", "1",
         "--sip-messages", "200", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    for name in ("gateway", "prosody", "ejabberd"):
        for method, expected in (("sasl", "SASL over TLS"), ("dialback", "TLS Dialback")):
            data = results[name][method]
            assert data["messages"] == 1000 and data["messages_per_second"] > 0, (name, data)
            assert data["method"] == expected, (name, method, data)
            assert 0 < data["handshake_p50_ms"] <= data["handshake_p99_ms"], (name, data)
        idle = results[name]["idle"]
        assert idle["sessions"] == 200 and idle["kib_per_session"] > 0, (name, idle)
        assert [n for n, _ in idle["runs"][0]["points"]] == [0, 100, 200], (name, idle)
    sip = results["gateway"]["sip"]
    assert sip["received"] == sip["expected"] == 200, sip
    assert 0 < sip["latency_p50_ms"] <= sip["latency_p99_ms"] <= sip["latency_max_ms"]
    markdown = (tmp_path / "benchmarks.md").read_text()
    assert "| Inbound throughput, msg/s (higher is better), TLS + dialback |" in markdown
    assert "| Memory per idle session at 200 sessions, KiB RSS (slope, median of 1" in markdown
    assert "## XMPP→SIP latency" in markdown
    assert sorted(p.name for p in (tmp_path / "benchmarks").iterdir()) == [
        "handshake_p50_ms.png", "handshake_p99_ms.png", "kib_per_session.png",
        "messages_per_second.png", "sip_latency.png"]
