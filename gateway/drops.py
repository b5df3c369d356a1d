"""Stanzas the gateway could neither deliver nor answer: counted, logged, never silent.

A stanza is delivered, or its sender gets an error (RFC 6120 §8.3). What remains are the
cases where the RFCs demand silence or nobody is left to tell: an error that itself
could not be delivered (never answer an error with an error, RFC 6120 §8.3.1), a bounce
toward a sender the backend no longer accepts, stanzas still unrouted when the gateway
stops, SIP requests too malformed to answer. Each one is counted here by reason, logged
at WARNING with the addresses involved, and exported as the Prometheus counter
``xmpp_gateway_dropped_total{reason}``. Policy decisions (the contact rules' silent
refusals, RFC 6121 §8.5) are not drops: they are ``contact.refused`` lines and the
``xmpp_gateway_refusals_total`` counter.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from gateway.logs import log_event

log = logging.getLogger("gateway.drops")

# Every reason a stanza is dropped for (a test checks that each ``record`` call names one):
# exported at 0 from the start so that an alert on increase() has a series to watch.
REASONS = ("unrouted-at-stop", "error-not-deliverable", "reply-not-deliverable",
           "bounce-not-deliverable")


class DropCounter:
    """Counts drops by reason; mirrors them on the metrics when those are enabled."""

    def __init__(self, metrics: Any = None) -> None:
        self.by_reason: Counter[str] = Counter()
        self.metrics = metrics

    def record(self, reason: str, **fields: Any) -> None:
        self.by_reason[reason] += 1
        log_event(log, logging.WARNING, "stanza.dropped", reason=reason, **fields)
        if self.metrics is not None:
            self.metrics.count("dropped", reason)

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def describe(self) -> dict[str, int]:
        return dict(self.by_reason)
