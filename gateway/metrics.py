"""Prometheus metrics (off by default; bound to localhost by default).

Counters and a histogram the S2S service and router feed: sessions by method and
direction, stanzas in/out, refusals by reason, S2S session failures by reason, handshake
duration, DNS failures, bounces; gauges read at scrape time: queues and their bound, open
streams, the SIP side's flow control, the SIP proxy's answer to OPTIONS, the expiry of
our certificates. A private registry keeps tests and several gateways in one process
independent. The admin console reads the same numbers (:meth:`Metrics.traffic`), so the
object exists whenever the endpoint or the console is on.

The alert rules and dashboard in deploy/monitoring/ are written against these names.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gateway.drops import REASONS as DROP_REASONS

# Reasons (XMPP stream/stanza error conditions, RFC 6120 §4.9.3, §8.3.3) an S2S session most
# often fails for, exported at 0 from the start so that a dashboard or an alert on
# increase() sees the series before the first failure (Prometheus' advice for labels
# known in advance); other conditions appear when they first happen.
COMMON_S2S_FAILURES = ("remote-server-not-found", "remote-server-timeout",
                       "remote-connection-failed", "not-authorized", "policy-violation")


class Tally:
    """A counter with one label, kept as plain numbers and read by Prometheus at scrape
    time (a custom collector, exposed exactly like a ``Counter``: ``<name>_total``).

    Why not ``prometheus_client.Counter``: its ``inc`` checks the metric and takes a lock,
    about 1 µs, and these counters move once per relayed stanza. Everything that counts
    runs on the event loop's thread; the scrape thread only copies the dict (atomic under
    the GIL)."""

    def __init__(self, name: str, documentation: str, label: str,
                 registry: CollectorRegistry, known: Iterable[str] = ()) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.values: dict[str, float] = dict.fromkeys(known, 0.0)
        self.created = time.time()
        registry.register(self)

    def inc(self, label: str, amount: float = 1.0) -> None:
        values = self.values
        values[label] = values.get(label, 0.0) + amount

    def value(self, label: str) -> float:
        return self.values.get(label, 0.0)

    def total(self) -> float:
        return sum(list(self.values.values()))

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
                             "with an error (see gateway/drops.py)", "reason", r,
                             known=DROP_REASONS)
        self.s2s_failures = Tally("xmpp_gateway_s2s_failures", "S2S sessions that failed to "
                                  "connect or authenticate, by XMPP error condition",
                                  "reason", r, known=COMMON_S2S_FAILURES)
        self.dns_failures = Tally("xmpp_gateway_dns_failures", "Failed DNS lookups", "peer", r)
        self.sip_untrusted = Tally("xmpp_gateway_sip_untrusted", "SIP messages refused "
                                   "because they did not come from the trusted proxy",
                                   "reason", r, known=("source", "certificate", "response"))
        self.not_crossed = Tally("xmpp_gateway_not_crossed", "Messages or payloads that "
                                 "could not cross between XMPP and SIP (answered 415 or "
                                 "feature-not-implemented, or only counted where nobody "
                                 "waits for an answer)", "content_type", r)
        self.sip_malformed = Tally("xmpp_gateway_sip_malformed", "SIP messages refused as "
                                   "malformed (syntax, framing) or that failed unexpectedly "
                                   "while being taken in (unexpected)", "reason", r,
                                   known=("syntax", "framing", "unexpected"))
        self.handshakes = Histogram("xmpp_gateway_handshake_seconds",
                                    "Outbound connect-to-authenticated time", ["method"],
                                    registry=r)
        self.queue_depth = Gauge("xmpp_gateway_queue_depth",
                                 "Stanzas waiting for an outbound session", registry=r)
        self.open_streams = Gauge("xmpp_gateway_streams", "Open S2S streams", registry=r)
        self.queue_depth_max = Gauge("xmpp_gateway_queue_depth_max", "Stanzas waiting for "
                                     "the outbound session of the most loaded domain",
                                     registry=r)
        self.queue_limit = Gauge("xmpp_gateway_queue_limit", "limits.max_queue_per_domain: "
                                 "the bound of one domain's queue", registry=r)
        self._server: Any = None
        # The tallies by the name callers count them under (count("bounces", peer)):
        # every Tally made above, without a second list to keep in step.
        self._tallies = {value.name.removeprefix("xmpp_gateway_"): value
                         for value in vars(self).values() if isinstance(value, Tally)}

    def watch(self, queued: Callable[[], int], streams: Callable[[], int],
              largest: Callable[[], int] | None = None,
              limit: Callable[[], int] | None = None) -> None:
        """Gauges read at scrape time from the live S2S service: stanzas queued in all,
        open streams, the largest queue toward one domain and the configured bound."""
        self.queue_depth.set_function(queued)
        self.open_streams.set_function(streams)
        if largest is not None:
            self.queue_depth_max.set_function(largest)
        if limit is not None:
            self.queue_limit.set_function(limit)

    def watch_proxy(self, figures: Callable[[], dict[str, Any]]) -> None:
        """The SIP proxy's answer to the periodic OPTIONS (``gateway.sip.health``): up (1/0,
        NaN before the first answer), round trip, when it was last asked."""
        nan = float("nan")
        for key, name, text in (
                ("up", "xmpp_gateway_sip_proxy_up",
                 "1 when the SIP proxy answered the last OPTIONS, 0 when it did not"),
                ("rtt_seconds", "xmpp_gateway_sip_proxy_rtt_seconds",
                 "Round trip of the last answered OPTIONS to the SIP proxy"),
                ("checked_at", "xmpp_gateway_sip_proxy_last_check_timestamp_seconds",
                 "When the SIP proxy was last asked (Unix time)")):
            gauge = Gauge(name, text, registry=self.registry)
            gauge.set_function(
                lambda key=key: nan if (value := figures().get(key)) is None else float(value))

    def watch_certificates(self, files: Callable[[], Iterable[tuple[str, Path]]]) -> None:
        """``xmpp_gateway_certificate_expiry_timestamp_seconds{domain}``: when each
        certificate the configuration names stops being valid (read at scrape time;
        ``domain`` is "*" for the default certificate, else its ``tls.per_domain`` key —
        never the file's path: the endpoint has no authentication)."""
        self.registry.register(_CertificateExpiry(files))

    def traffic(self) -> dict[str, Any]:
        """The counters the admin console shows (since start)."""
        return {"stanzas_in": self.stanzas_in.total(), "stanzas_out": self.stanzas_out.total(),
                "bounces": self.bounces.total(), "refusals": dict(self.refusals.values),
                "s2s_failures": dict(self.s2s_failures.values)}

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


class _CertificateExpiry:
    """Collector: the notAfter of each configured certificate file (cached per file
    until its modification time changes; a missing or unreadable file has no sample)."""

    NAME = "xmpp_gateway_certificate_expiry_timestamp_seconds"

    def __init__(self, files: Callable[[], Iterable[tuple[str, Path]]]) -> None:
        self.files = files
        self._cache: dict[tuple[str, int], float] = {}

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(self.NAME, self._text(), labels=["domain"])]

    @staticmethod
    def _text() -> str:
        return "When our certificate (first in the file) expires, as Unix time"

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.NAME, self._text(), labels=["domain"])
        for domain, path in self.files():
            expiry = self._expiry(Path(path))
            if expiry is not None:
                family.add_metric([domain], expiry)
        yield family

    def _expiry(self, path: Path) -> float | None:
        from cryptography import x509

        try:
            key = (str(path), path.stat().st_mtime_ns)
            if key not in self._cache:
                leaf = x509.load_pem_x509_certificate(path.read_bytes())
                self._cache = {**{k: v for k, v in self._cache.items() if k[0] != key[0]},
                               key: leaf.not_valid_after_utc.timestamp()}
            return self._cache[key]
        except (OSError, ValueError):
            return None
