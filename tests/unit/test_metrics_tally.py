"""Tally (gateway/metrics.py) is exposed exactly as prometheus_client's Counter would be."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest

from gateway.metrics import Metrics, Tally


def _samples(registry: CollectorRegistry) -> list[str]:
    """Every exposition line (HELP and TYPE included), ``_created`` values cut off (the
    timestamps differ)."""
    return [line.rpartition(" ")[0] if line.startswith("x_stanzas_in_created") else line
            for line in generate_latest(registry).decode().splitlines()]


def test_a_tally_reads_like_a_counter() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    tally = Tally("x_stanzas_in", "Stanzas", "peer", ours)
    counter = Counter("x_stanzas_in", "Stanzas", ["peer"], registry=theirs)
    for peer, times in (("a.example", 3), ('b"q\\uote', 1)):
        for _ in range(times):
            tally.inc(peer)
            counter.labels(peer).inc()
    tally.inc("a.example", 2.5)
    counter.labels("a.example").inc(2.5)
    assert _samples(ours) == _samples(theirs)
    assert 'x_stanzas_in_total{peer="a.example"} 5.5' in _samples(ours)
    assert tally.value("a.example") == 5.5 and tally.value("nobody") == 0.0
    assert "# TYPE x_stanzas_in_total counter" in _samples(ours)


def test_metrics_count_goes_to_its_tally_and_ignores_unknown_names() -> None:
    metrics = Metrics()
    metrics.count("stanzas_out", "b.example")
    metrics.count("stanzas_out", "b.example")
    metrics.count("no_such_counter", "x")  # a name that is not a tally: nothing happens
    metrics.count("handshakes", "x")  # a histogram: not counted this way
    assert metrics.stanzas_out.value("b.example") == 2.0
    text = generate_latest(metrics.registry).decode()
    assert 'xmpp_gateway_stanzas_out_total{peer="b.example"} 2.0' in text
