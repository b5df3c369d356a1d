"""The last hour of stanza rates each way, kept in memory, and its chart's geometry.

The console samples the cumulative S2S stanza counters every :data:`INTERVAL` seconds
(360 samples: one hour, a few kilobytes) so that the overview can draw a small chart
without any external service. The drawing is an inline SVG the page template writes from
the numbers computed here (no JavaScript, no image library).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

INTERVAL = 10.0
SPAN = 3600.0
SERIES = (("xmpp_to_sip", "XMPP → SIP (received from partners)"),
          ("sip_to_xmpp", "SIP → XMPP (sent to partners)"))


class RateHistory:
    """Cumulative counts sampled over time → per-second rates between samples."""

    def __init__(self, interval: float = INTERVAL, span: float = SPAN) -> None:
        self.interval = interval
        self.samples: deque[tuple[float, dict[str, float]]] = deque(
            maxlen=int(span / interval) + 1)

    def sample(self, now: float, counts: dict[str, float]) -> None:
        self.samples.append((now, dict(counts)))

    def rates(self) -> list[tuple[float, dict[str, float]]]:
        """(time, {series: stanzas per second}) for each interval between samples; a
        counter that went down (a restart of the counting object) counts from zero."""
        result = []
        previous = None
        for when, counts in self.samples:
            if previous is not None and when > previous[0]:
                elapsed = when - previous[0]
                result.append((when, {
                    name: max(0.0, value - previous[1].get(name, 0.0)
                              if value >= previous[1].get(name, 0.0) else value) / elapsed
                    for name, value in counts.items()}))
            previous = (when, counts)
        return result


@dataclass(frozen=True, slots=True)
class Line:
    key: str
    label: str
    points: str  # SVG polyline "x,y x,y …"
    last: float  # the latest rate, per second


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    top: float  # the rate the chart's top edge stands for (per second)
    lines: tuple[Line, ...]
    minutes: int  # how far back the left edge is


def chart(rates: list[tuple[float, dict[str, float]]], now: float, *, width: int = 600,
          height: int = 140, span: float = SPAN) -> Chart:
    """Polylines for each series, right edge = ``now``, left edge = ``span`` seconds ago
    or, on a node up for less than that, its oldest sample (at least a minute), so that a
    young node's few minutes fill the chart instead of its right-hand pixel."""
    oldest = max((now - when for when, _ in rates), default=0.0)
    span = min(span, max(oldest, 60.0))
    peak = max((value for _, values in rates for value in values.values()), default=0.0)
    top = _nice(peak)
    lines = []
    for key, label in SERIES:
        points = []
        for when, values in rates:
            age = now - when
            if age > span:
                continue
            x = width * (1 - age / span)
            y = height * (1 - values.get(key, 0.0) / top)
            points.append(f"{x:.1f},{y:.1f}")
        last = rates[-1][1].get(key, 0.0) if rates else 0.0
        lines.append(Line(key, label, " ".join(points), last))
    return Chart(width, height, top, tuple(lines), max(1, round(span / 60)))


def _nice(peak: float) -> float:
    """The smallest of 1, 2 or 5 times a power of ten at or above ``peak`` (0.1 at least:
    an idle gateway draws flat lines at the bottom, not a chart scaled to nothing)."""
    scale = 0.1
    while True:
        for step in (1.0, 2.0, 5.0):
            if step * scale >= peak:
                return step * scale
        scale *= 10
