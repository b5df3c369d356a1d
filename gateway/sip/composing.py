"""How often "is typing" may cross, in either direction: a pure rate gate, no I/O, no clock
(time is passed in).

XEP-0085 clients send a chat state at every change (``composing`` on the first key,
``paused`` a few seconds after the last, ``active`` with the message); RFC 3994 §4 wants
an ``active`` indication sent once and refreshed only every ``refresh`` seconds, and
``idle`` only after ``active``. Each SIP indication is a MESSAGE transaction through the
proxy, so a user flipping between typing and pausing must not turn into a request per
keystroke. For each (sender, recipient) pair the gate:

* lets a state through only when it differs from the last one sent (``idle`` never
  without an ``active`` before it), or when an ``active`` is older than half its refresh;
* sends at most one indication per :data:`MIN_INTERVAL`; a change within it waits and
  the latest state is sent when the interval is over (:meth:`ComposingGate.due`), so the
  recipient never keeps a stale "typing";
* counts each sender's indications over all its recipients, at most
  :data:`SENDER_BUDGET` a second; what is over is counted in :attr:`suppressed`;
* forgets a pair when a message with a body goes through (it ends typing, RFC 3994 §3.3)
  and times an ``active`` out after its refresh (RFC 3994 §4) when asked to
  (``expire=True``: toward XMPP, whose clients do not time composing out themselves).
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_INTERVAL = 2.0  # seconds between two indications for one pair
SENDER_BUDGET = 5  # indications a second from one sender over all its recipients
MAX_PAIRS = 10_000  # pairs remembered; the oldest are forgotten beyond
Pair = tuple[str, str]


@dataclass(slots=True)
class _PairState:
    sent: bool | None = None  # last state sent: True active, False idle, None nothing yet
    sent_at: float = -1e9
    pending: bool | None = None  # state waiting for the interval to pass
    expires: float = 0.0  # an active state toward XMPP ends at this time (0: no timer)
    refresh: float = 120.0


class ComposingGate:
    def __init__(self, *, expire: bool = False, min_interval: float = MIN_INTERVAL,
                 sender_budget: int = SENDER_BUDGET) -> None:
        self.expire = expire
        self.min_interval = min_interval
        self.sender_budget = sender_budget
        self.pairs: dict[Pair, _PairState] = {}
        self._budget: dict[str, tuple[int, int]] = {}  # sender → (second, count)
        self.suppressed = 0

    def offer(self, pair: Pair, active: bool, now: float, refresh: float = 120.0) -> bool:
        """Whether an indication of ``active`` for ``pair`` goes out now (it may also be
        kept for :meth:`due`)."""
        state = self.pairs.get(pair)
        if state is None:
            if not active:
                return False  # idle with nothing said before: nothing to say
            if len(self.pairs) >= MAX_PAIRS:
                self.pairs.pop(next(iter(self.pairs)))
            state = self.pairs[pair] = _PairState()
        state.refresh = refresh
        if state.sent is active and not (active and now - state.sent_at >= refresh / 2):
            state.pending = None  # the recipient already knows
            return False
        if state.sent is None and not active:
            return False
        if now - state.sent_at < self.min_interval:
            state.pending = active
            return False
        if not self._spend(pair[0], now):
            return False
        self._record(state, active, now)
        return True

    def _spend(self, sender: str, now: float) -> bool:
        second = int(now)
        window, count = self._budget.get(sender, (second, 0))
        if window != second:
            if len(self._budget) >= MAX_PAIRS:
                self._budget.clear()
            window, count = second, 0
        if count >= self.sender_budget:
            self.suppressed += 1
            return False
        self._budget[sender] = (window, count + 1)
        return True

    def _record(self, state: _PairState, active: bool, now: float) -> None:
        state.sent, state.sent_at, state.pending = active, now, None
        state.expires = now + state.refresh if (active and self.expire) else 0.0

    def message_sent(self, pair: Pair) -> None:
        """A message with a body crossed: the recipient stops showing typing (RFC 3994
        §3.3, XEP-0085 §5.4), nothing more to send for the pair."""
        self.pairs.pop(pair, None)

    def due(self, now: float) -> list[tuple[Pair, bool]]:
        """Indications whose wait is over, and (``expire``) actives that timed out."""
        out: list[tuple[Pair, bool]] = []
        finished: list[Pair] = []
        for pair, state in self.pairs.items():
            if state.pending is not None and now - state.sent_at >= self.min_interval:
                pending = state.pending
                if pending is state.sent or not self._spend(pair[0], now):
                    state.pending = None
                    continue
                self._record(state, pending, now)
                out.append((pair, pending))
            elif state.expires and now >= state.expires:
                self._record(state, False, now)
                out.append((pair, False))
            if state.sent is False and state.pending is None:
                finished.append(pair)
        for pair in finished:
            del self.pairs[pair]
        return out
