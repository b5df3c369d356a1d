"""When a queue is full enough that its producers must wait, and when they may go on.

Overload slows senders down instead of refusing their stanzas: the router's queues are
unbounded because their producers stop at :data:`HIGH_WATER` (the S2S service stops
reading inbound streams; the SIP side stops reading its stream connections, and over
UDP, which cannot be paused, answers 503 + Retry-After only far past the mark:
:data:`gateway.router.outbound.SATURATED_LANE`) and start again at :data:`LOW_WATER`.
The gap between the two keeps a queue hovering at the mark from switching its producers
on and off per stanza.
"""

from __future__ import annotations

HIGH_WATER = 2_000
LOW_WATER = 200


class Watermarks:
    """Hysteresis between a high and a low mark: :attr:`full` turns on at ``high``
    queued items and off again at ``low``."""

    __slots__ = ("full", "high", "low")

    def __init__(self, high: int = HIGH_WATER, low: int = LOW_WATER) -> None:
        self.high, self.low = high, low
        self.full = False

    def update(self, queued: int) -> bool:
        """Whether :attr:`full` changed with ``queued`` items now waiting."""
        if self.full:
            if queued > self.low:
                return False
        elif queued < self.high:
            return False
        self.full = not self.full
        return True
