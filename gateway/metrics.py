"""Prometheus metrics (off by default; bound to localhost by default).

Counters and a histogram the S2S service and router feed: sessions by method and
direction, stanzas in/out, refusals by reason, handshake duration, DNS failures, bounces.
A private registry keeps tests and several gateways in one process independent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily


class Tally:
    """A counter with one label, kept as plain numbers and read by Prometheus at scrape
    time (a custom collector, exposed exactly like a ``Counter``: ``<name>_total``).

    Why not ``prometheus_client.Counter``: its ``inc`` checks the metric and takes a lock,
    about 1 µs, and these counters move once per relayed stanza. Everything that counts
    runs on the event loop's thread; the scrape thread only copies the dict (atomic under
    the GIL)."""

    def __init__(self, name: str, documentation: str, label: str,
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.values: dict[str, float] = {}
        self.created = time.time()
        registry.register(self)

    def inc(self, label: str, amount: float = 1.0) -> None:
        values = self.values
        values[label] = values.get(label, 0.0) + amount

    def value(self, label: str) -> float:
        return self.values.get(label, 0.0)

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily(self.name, self.documentation, labels=[self.label])]

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for label, value in list(self.values.items()):
            family.add_metric([label], value, created=self.created)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Counter("xmpp_gateway_sessions_authenticated", "Authenticated S2S "
                                "domain pairs", ["direction", "method"], registry=r)
        self.stanzas_in = Tally("xmpp_gateway_stanzas_in", "Stanzas received over S2S",
                                "peer", r)
        self.stanzas_out = Tally("xmpp_gateway_stanzas_out", "Stanzas sent over S2S", "peer", r)
        self.refusals = Tally("xmpp_gateway_refusals", "Refused partners or stanzas", "reason",
                              r)
        self.bounces = Tally("xmpp_gateway_bounces", "Stanzas bounced to their sender", "peer",
                             r)
        self.dropped = Tally("xmpp_gateway_dropped", "Stanzas neither delivered nor answered "
                             "with an error (see gateway/drops.py)", "reason", r)
        self.dns_failures = Tally("xmpp_gateway_dns_failures", "Failed DNS lookups", "peer", r)
        self.sip_untrusted = Tally("xmpp_gateway_sip_untrusted", "SIP messages refused "
                                   "because they did not come from the trusted proxy",
                                   "reason", r)
        self.not_crossed = Tally("xmpp_gateway_not_crossed", "Messages or payloads that "
                                 "could not cross between XMPP and SIP (answered 415 or "
                                 "feature-not-implemented, or only counted where nobody "
                                 "waits for an answer)", "content_type", r)
        self.sip_malformed = Tally("xmpp_gateway_sip_malformed", "SIP messages refused as "
                                   "malformed (syntax, framing) or that failed unexpectedly "
                                   "while being taken in (unexpected)", "reason", r)
        self.handshakes = Histogram("xmpp_gateway_handshake_seconds",
                                    "Outbound connect-to-authenticated time", ["method"],
                                    registry=r)
        self.queue_depth = Gauge("xmpp_gateway_queue_depth",
                                 "Stanzas waiting for an outbound session", registry=r)
        self.open_streams = Gauge("xmpp_gateway_streams", "Open S2S streams", registry=r)
        self._server: Any = None
        # The tallies by the name callers count them under (count("bounces", peer)):
        # every Tally made above, without a second list to keep in step.
        self._tallies = {value.name.removeprefix("xmpp_gateway_"): value
                         for value in vars(self).values() if isinstance(value, Tally)}

    def watch(self, queued: Callable[[], int], streams: Callable[[], int]) -> None:
        """Gauges read at scrape time from the live S2S service."""
        self.queue_depth.set_function(queued)
        self.open_streams.set_function(streams)

    def watch_sip(self, figures: Callable[[], dict[str, Any]]) -> None:
        """Gauges of the SIP side read at scrape time from ``figures()`` (the backend's
        ``describe``): requests outstanding and waiting, 503s sent while the XMPP side
        was congested, datagrams the kernel dropped at our UDP socket."""
        for key, name, text in (
                ("in_flight", "xmpp_gateway_sip_in_flight", "SIP requests awaiting an answer"),
                ("backlog", "xmpp_gateway_sip_backlog", "SIP requests waiting for the window"),
                ("busy_answers", "xmpp_gateway_sip_busy_answers",
                 "503 + Retry-After answers while the XMPP side was congested"),
                ("udp_drops", "xmpp_gateway_sip_udp_drops",
                 "Datagrams the kernel dropped at the SIP socket (buffer full)")):
            gauge = Gauge(name, text, registry=self.registry)
            gauge.set_function(lambda key=key: float(figures().get(key) or 0))

    def count(self, what: str, label: str) -> None:
        """Add one to the tally ``what`` (an unknown name counts nothing)."""
        tally = self._tallies.get(what)
        if tally is not None:
            tally.inc(label)

    def session_authenticated(self, direction: str, method: str) -> None:
        self.sessions.labels(direction, method).inc()

    def handshake(self, seconds: float, method: str) -> None:
        self.handshakes.labels(method).observe(seconds)

    def serve(self, host: str, port: int) -> None:
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
