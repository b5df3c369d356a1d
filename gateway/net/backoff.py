"""Per-partner connection backoff: how long to wait before connecting to a domain again
after every target of it failed (pure, time passed in).

Without it, each stanza toward an unreachable domain starts a new round of DNS lookups
and connection attempts (and a partner coming back up gets them all at once). After a
failed round the domain is *backing off*: the next round starts no earlier than the
delay, which doubles with each failed round from FIRST_DELAY up to MAX_DELAY, with ±20 %
jitter so that many gateways do not retry in step; a round that authenticates resets
it. Stanzas toward the domain meanwhile wait for the next round when it is at most
QUEUE_WAIT away (a partner restarting is back within a few seconds), and are answered
at once with the last failure otherwise (remote-server-not-found, with the reason and
when the next attempt is), instead of waiting behind attempts bound to fail — a SIP
sender would time out first. ``xmpp-gateway status`` shows it per partner.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

FIRST_DELAY = 1.0
MAX_DELAY = 60.0
JITTER = 0.2
QUEUE_WAIT = 5.0
# One jitter source for every partner's backoff: a ``random.Random`` is about 2.8 KiB
# (the Mersenne Twister state), and there is a Backoff per outbound session, i.e. per
# idle S2S session once the peer negotiated bidi (docs/performance.md). The jitter only
# has to differ between gateways and rounds, not be independent per partner.
SHARED_RNG = random.Random()


@dataclass(slots=True)
class Backoff:
    failures: int = 0  # consecutive failed rounds
    until: float = 0.0  # no new round before this (monotonic seconds)
    last_failure: str = ""
    rng: random.Random = field(default=SHARED_RNG, repr=False)

    def failed(self, now: float, reason: str) -> float:
        """A round failed: the delay before the next one."""
        self.failures += 1
        self.last_failure = reason
        delay = min(MAX_DELAY, FIRST_DELAY * 2 ** (self.failures - 1))
        delay *= 1 + self.rng.uniform(-JITTER, JITTER)
        self.until = now + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self.until = 0.0
        self.last_failure = ""

    def waiting(self, now: float) -> float:
        """Seconds left before a new round may start (0 when it may start now)."""
        return max(0.0, self.until - now)

    def describe(self, now: float) -> dict[str, object]:
        return {"failures": self.failures, "retry_in_seconds": round(self.waiting(now), 1),
                "last_failure": self.last_failure}
