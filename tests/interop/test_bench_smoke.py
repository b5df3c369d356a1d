"""A small run of the benchmark harness (`make bench` at full size is not part of
`make test`): every receiver, both authentication methods, idle sessions and the
XMPP→SIP latency path through Kamailio must produce numbers, written to a temp dir; and
the relay section (a real Prosody through the gateway to SIP and back, issue 17) with
tiny counts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_harness_smoke(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--messages", "1000", "--handshakes", "2",
         "--idle-sessions", "10", "--sip-messages", "200", "--skip-relay",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    for name in ("gateway", "prosody", "ejabberd"):
        for method, expected in (("sasl", "SASL over TLS"), ("dialback", "TLS Dialback")):
            data = results[name][method]
            assert data["messages"] == 1000 and data["messages_per_second"] > 0, (name, data)
            assert data["method"] == expected, (name, method, data)
            assert 0 < data["handshake_p50_ms"] <= data["handshake_p99_ms"], (name, data)
        assert results[name]["idle"]["sessions"] == 10
    sip = results["gateway"]["sip"]
    assert sip["received"] == sip["expected"] == 200, sip
    assert 0 < sip["latency_p50_ms"] <= sip["latency_p99_ms"] <= sip["latency_max_ms"]
    markdown = (tmp_path / "benchmarks.md").read_text()
    assert "| Inbound throughput, msg/s (higher is better), TLS + dialback |" in markdown
    assert "## XMPP→SIP latency" in markdown
    assert sorted(p.name for p in (tmp_path / "benchmarks").iterdir()) == [
        "handshake_p50_ms.png", "handshake_p99_ms.png", "kib_per_session.png",
        "messages_per_second.png", "sip_latency.png"]


# The process doing the relaying in each path (bench/relay.py PATHS).
RELAYING = {"xmpp_sip": "gateway", "xmpp_xmpp": "prosody_b", "sip_xmpp": "gateway",
            "xmpp_xmpp_back": "prosody_b"}


def test_bench_relay_smoke(tmp_path: Path) -> None:
    """A few hundred messages each way and a 50-contact storm: every message arrives (so
    small a load is refused nowhere), every relaying process used CPU, and the report is
    regenerated from results.json alone."""
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--only-relay", "--relay-rates", "500",
         "--relay-seconds", "0.5", "--relay-burst", "300", "--relay-storm", "50",
         "--out", str(tmp_path)], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert run.returncode == 0, run.stderr[-4000:]
    relay = json.loads((tmp_path / "results.json").read_text())["results"]["relay"]
    assert set(relay["paths"]) == set(RELAYING)
    for name, path in relay["paths"].items():
        runs = [*path["paced"], path["burst"]]
        assert [r["wanted"] for r in runs] == [250, 300], name
        for result in runs:
            assert result["sent"] == result["wanted"] == result["delivered"], (name, result)
            assert result["refused"] == result["dropped"] == 0, (name, result)
            assert result["delivered_rate"] > 0, (name, result)
        used = sum(r["cpu_us"][RELAYING[name]] for r in runs)
        assert used > 0 and sum(r["cpu_us"]["prosody_a"] for r in runs) > 0, (name, runs)
        assert path["burst"]["gateway_peak_rss_kib"] > 0
    latency = relay["paths"]["xmpp_sip"]["paced"][0]["receiver"]
    assert 0 < latency["latency_p50_ms"] <= latency["latency_p99_ms"], latency
    storm = relay["storm"]
    xmpp, sip = storm["xmpp_side"], storm["sip_side"]
    assert xmpp["probed"] == sip["watchers"] == 50
    assert xmpp["mapped"] + xmpp["refused"] + xmpp["lost"] == 50 and xmpp["mapped"] > 0, xmpp
    assert sip["accepted"] + sip["refused"] + sip["lost"] == 50 and sip["accepted"] > 0, sip
    assert sip["notified_subscriptions"] > 0, sip
    markdown = (tmp_path / "benchmarks.md").read_text()
    assert "## Relay: a real Prosody through the gateway to SIP and back" in markdown
    assert "## Targets (issue 17), from this run" in markdown
    (tmp_path / "benchmarks.md").unlink()
    again = subprocess.run([sys.executable, "-m", "bench.run", "--report-only", "--out",
                            str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert again.returncode == 0, again.stderr[-4000:]
    assert (tmp_path / "benchmarks.md").read_text() == markdown
