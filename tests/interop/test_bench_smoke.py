"""A small run of the benchmark harness (`make bench` at full size is not part of
`make test`): every receiver, both authentication methods (two runs each, published as
median [min-max]), idle sessions and the XMPP→SIP latency path through Kamailio must
produce numbers, written to a temp dir; a report from before the medians still renders;
and the relay section (a real Prosody through the gateway to SIP and back) with
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
         "--runs", "2",
         "--idle-counts", "100,200", "--idle-runs", "1", "--idle-settle", "1",
         "--sip-messages", "200", "--skip-relay",
         # the failover row has its own short test (test_failover_zero_loss.py)
         "--skip-failover", "--bidi-counts", "10,20",
         "--bidi-settle", "3", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    for name in ("gateway", "prosody", "ejabberd"):
        for method, expected in (("sasl", "SASL over TLS"), ("dialback", "TLS Dialback")):
            data = results[name][method]
            assert data["messages"] == 1000 and data["messages_per_second"] > 0, (name, data)
            assert data["method"] == expected, (name, method, data)
            assert 0 < data["handshake_p50_ms"] <= data["handshake_p99_ms"], (name, data)
            assert len(data["runs"]) == 2, (name, data)
            for key, figure in data["stats"].items():
                values = [run[key] for run in data["runs"]]
                assert figure == {"median": sum(values) / 2, "min": min(values),
                                  "max": max(values)}, (name, key, data)
                assert data[key] == figure["median"], (name, key, data)
        idle = results[name]["idle"]
        assert idle["sessions"] == 200 and idle["kib_per_session"] > 0, (name, idle)
        assert [n for n, _ in idle["runs"][0]["points"]] == [0, 100, 200], (name, idle)
    sip = results["gateway"]["sip"]
    assert sip["received"] == sip["expected"] == 200, sip
    assert sip["notices"] == {"text/plain": 1}, sip  # the warm-up message
    bidi = results["bidi_memory"]
    assert bidi["counts"] == [10, 20], bidi
    assert bidi["with_bidi"]["streams_per_partner"] < bidi["without_bidi"]["streams_per_partner"]
    assert 0 < sip["latency_p50_ms"] <= sip["latency_p99_ms"] <= sip["latency_max_ms"]
    markdown = (tmp_path / "benchmarks.md").read_text()
    assert ("| Inbound throughput, msg/s (higher is better), TLS + dialback (median of 2 "
            "[min-max]) |") in markdown
    assert "| Memory per idle session at 200 sessions, KiB RSS (slope, median of 1" in markdown
    assert "## XMPP→SIP latency" in markdown
    assert sorted(p.name for p in (tmp_path / "benchmarks").iterdir()) == [
        "handshake_p50_ms.png", "handshake_p99_ms.png", "kib_per_session.png",
        "messages_per_second.png", "sip_latency.png"]


def test_report_only_renders_a_report_without_runs(tmp_path: Path) -> None:
    """A results.json from before medians of several runs (one run per figure) is rendered as
    single runs; one whose figures are missing fails with a message saying so."""
    report = json.loads((REPO / "docs" / "benchmarks" / "results.json").read_text())
    for name in ("gateway", "prosody", "ejabberd"):
        for method in ("sasl", "dialback"):
            data = report["results"][name][method]
            data.pop("runs", None)
            data.pop("stats", None)
    (tmp_path / "results.json").write_text(json.dumps(report))
    run = subprocess.run([sys.executable, "-m", "bench.run", "--report-only", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr[-4000:]
    markdown = (tmp_path / "benchmarks.md").read_text()
    assert "| Handshake p50, ms (lower is better), TLS + SASL EXTERNAL (single run) |" in markdown
    del report["results"]["prosody"]["sasl"]["messages_per_second"]
    (tmp_path / "results.json").write_text(json.dumps(report))
    run = subprocess.run([sys.executable, "-m", "bench.run", "--report-only", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode != 0 and "no messages_per_second figure" in run.stderr, run.stderr


# The process doing the relaying in each path (bench/relay.py PATHS).
RELAYING = {"xmpp_sip": "gateway", "xmpp_xmpp": "prosody_b", "sip_xmpp": "gateway",
            "xmpp_xmpp_back": "prosody_b", "xmpp_sip_chat": "gateway"}


def test_bench_relay_smoke(tmp_path: Path) -> None:
    """A few hundred messages each way and a 50-contact storm: every message arrives (so
    small a load is refused nowhere), every relaying process used CPU, and the report is
    regenerated from results.json alone."""
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--only-relay", "--relay-rates", "500",
         "--relay-seconds", "2", "--relay-burst", "300", "--relay-storm", "50",
         "--relay-chat-rates", "500", "--relay-chat-burst", "300",
         "--relay-direct-rate", "500", "--relay-direct-seconds", "0.5",
         "--relay-open-loop", "300", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=180, cwd=REPO)
    assert run.returncode == 0, run.stderr[-4000:]
    relay = json.loads((tmp_path / "results.json").read_text())["results"]["relay"]
    assert set(relay["paths"]) == set(RELAYING)
    for name, path in relay["paths"].items():
        runs = [*path["paced"], path["burst"]]
        assert [r["wanted"] for r in runs] == [1000, 300], name
        for result in runs:
            assert result["sent"] == result["wanted"] == result["delivered"], (name, result)
            assert result["refused"] == result["dropped"] == 0, (name, result)
            assert result["delivered_rate"] > 0, (name, result)
            # the benchmark's own ends report their CPU (they share the cores)
            assert set(result["bench_cpu_us_per_message"]) == {"writer", "receiver"}, name
            assert all(v is not None and v >= 0
                       for v in result["bench_cpu_us_per_message"].values()), (name, result)
        used = sum(r["cpu_us"][RELAYING[name]] for r in runs)
        assert used > 0 and sum(r["cpu_us"]["prosody_a"] for r in runs) > 0, (name, runs)
        assert path["burst"]["gateway_peak_rss_kib"] > 0
    # one datagram per message from the proxy's address: all delivered; the open-loop
    # flood's datagrams each answered or counted as unanswered
    direct = relay["direct"]
    paced, flood = direct["paced"], direct["open_loop"]
    assert paced["sent"] == paced["wanted"] == paced["delivered"] == 250, paced
    assert paced["cpu_us"]["gateway"] > 0 and paced["cpu_us"]["prosody_a"] > 0, paced
    finals = flood["writer"]["finals"]
    assert sum(finals.values()) + flood["writer"]["unanswered"] == flood["sent"] == 300, flood
    assert "udp_drops_by_socket" in flood, flood
    latency = relay["paths"]["xmpp_sip"]["paced"][0]["receiver"]
    assert 0 < latency["latency_p50_ms"] <= latency["latency_p99_ms"], latency
    # Prosody leaves Nagle's algorithm on: were our TCP ACKs delayed (Linux does so once we
    # write <a/> on the stream), each of its stanzas would wait for our next <a/>, tens of
    # milliseconds (a p99 of 40 ms and more at this rate), one or two otherwise.
    assert latency["latency_p99_ms"] < 20, latency
    storm = relay["storm"]
    xmpp, sip = storm["xmpp_side"], storm["sip_side"]
    assert xmpp["probed"] == sip["watchers"] == 50
    assert xmpp["mapped"] + xmpp["refused"] + xmpp["lost"] == 50 and xmpp["mapped"] > 0, xmpp
    assert sip["accepted"] + sip["refused"] + sip["lost"] == 50 and sip["accepted"] > 0, sip
    assert sip["notified_subscriptions"] > 0, sip
    assert 0 < sip["subscription_requests_stored_by_prosody"] <= 50, sip
    markdown = (tmp_path / "benchmarks.md").read_text()
    assert "## Relay: a real Prosody through the gateway to SIP and back" in markdown
    assert "## Relay targets, from this run" in markdown
    assert "SIP → XMPP, one datagram per message, paced 500/s" in markdown
    assert "| open-loop burst of 300 |" in markdown
    (tmp_path / "benchmarks.md").unlink()
    again = subprocess.run([sys.executable, "-m", "bench.run", "--report-only", "--out",
                            str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert again.returncode == 0, again.stderr[-4000:]
    assert (tmp_path / "benchmarks.md").read_text() == markdown


class _Reads:
    """A stream reader returning the given chunks, then end of stream."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def read(self, _n: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


def test_c2s_sink_counts_whatever_the_read_boundaries() -> None:
    """Every split of a stream into two reads gives the same counts: attributes in any
    order (Prosody's come in Lua hash order), a self-closing stanza last, error ids and
    body indices (bench/relay_xmpp.py's delivered / refused accounting)."""
    import asyncio

    from bench.c2s_sink import C2SSink

    stream = (b"<presence from='x@gw.example/sip' type='unavailable' to='s@a.example'/>"
              b"<message type='error' id='r7' from='u@gw.example'><body>1 7 x</body></message>"
              b"<message from='u@a.example' type='chat'><body>123 42 text</body></message>"
              b"<presence type='subscribe' from='w@gw.example'/>")
    for cut in range(1, len(stream)):
        sink = C2SSink("127.0.0.1", 5222, "a.example", "user", "pw")
        sink._reader = _Reads([stream[:cut], stream[cut:]])  # type: ignore[assignment]
        asyncio.run(sink._count())
        sink.flush()
        assert sink.count == 2, cut
        assert sink.counts == {("presence", "unavailable"): 1, ("message", "error"): 1,
                               ("message", "chat"): 1, ("presence", "subscribe"): 1}, cut
        assert sink.presence_from == {"unavailable": {"x@gw.example"},
                                      "subscribe": {"w@gw.example"}}, cut
        assert sink.error_ids == {"r7"} and sink.indices == {7, 42}, cut


def test_sip_wire_response_copies_the_transaction_headers() -> None:
    """RFC 3261 §8.2.6.2: Via (all, in order), From, To with a tag added, Call-ID, CSeq."""
    from bench import sipwire

    request = (b"MESSAGE sip:user@gw.example SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.4:5070;"
               b"branch=z9hG4bKa\r\nv: SIP/2.0/UDP 127.0.0.4:5062;branch=z9hG4bKb\r\n"
               b"f: <sip:x@a.example>;tag=1\r\nTo: <sip:user@gw.example>\r\ni: c1\r\n"
               b"CSeq: 1 MESSAGE\r\nContent-Length: 5\r\n\r\n1 2 x")
    start, headers, body = sipwire.split(request)
    assert (start, body) == (b"MESSAGE sip:user@gw.example SIP/2.0", b"1 2 x")
    assert sipwire.branch_of(headers) == b"z9hG4bKa"
    assert sipwire.response(headers, 200, "OK", b"t9").split(b"\r\n") == [
        b"SIP/2.0 200 OK", b"Via: SIP/2.0/UDP 127.0.0.4:5070;branch=z9hG4bKa",
        b"v: SIP/2.0/UDP 127.0.0.4:5062;branch=z9hG4bKb", b"f: <sip:x@a.example>;tag=1",
        b"To: <sip:user@gw.example>;tag=t9", b"i: c1", b"CSeq: 1 MESSAGE",
        b"Content-Length: 0", b"", b""]
    assert sipwire.status_of(b"SIP/2.0 503 Service Unavailable") == 503
    assert sipwire.status_of(start) == 0


def test_sip_wire_response_key_reads_the_top_via_branch() -> None:
    """The SIP load matches a response by the branch of the *top* Via only (RFC 3261
    §17.1.3; compact ``v``, several values in one line), and reads Retry-After of a 503
    (§21.5.4) but of no other status."""
    from bench import sipwire

    busy = (b"SIP/2.0 503 Service Unavailable\r\nCall-ID: a\r\nv: SIP/2.0/UDP 1.2.3.4:5;"
            b"rport=5;branch=z9hG4bKtop1r2, SIP/2.0/UDP 6.7.8.9;branch=z9hG4bKsecond\r\n"
            b"Via: SIP/2.0/UDP 6.7.8.9;branch=z9hG4bKthird\r\nRetry-After: 3 (busy)\r\n"
            b"Content-Length: 0\r\n\r\n")
    assert sipwire.response_key(busy) == (503, b"z9hG4bKtop1r2", 3)
    accepted = (b"SIP/2.0 202 Accepted\r\nVIA : SIP/2.0/UDP 127.0.0.4:4000;branch = z9hG4bKx;"
                b"received=127.0.0.4\r\nRetry-After: 9\r\nContent-Length: 18\r\n\r\n"
                b"Via: x;branch=body")
    assert sipwire.response_key(accepted) == (202, b"z9hG4bKx", None)
    request = b"MESSAGE sip:u@a.example SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bKr\r\n\r\n"
    assert sipwire.response_key(request) == (0, b"", None)
