"""How often the daemon's cyclic garbage collector runs, and why not CPython's default.

Almost everything the gateway allocates is freed by reference counting; the cyclic
collector only finds reference cycles, and the daemon makes few (a handful per minute
under load). What it costs is the objects it *walks*: every collection of the young
generation visits every tracked object still alive there. CPython starts one after 700
net allocations, and frees of older objects count against it, so the young generation
holds everything allocated since the last collection that is still alive. Under load
that is the work in flight: a SIP MESSAGE relayed toward XMPP is answered only once the
peer server acknowledged the stanza (XEP-0198, docs/delivery.md), and until then its SIP
transaction, request and answer callback are alive — a round trip of the peer, hundreds
of milliseconds when the peer lags behind. With the default threshold the collector
walked that whole set again every ~50 messages, promoted it, and ran full collections
over the whole heap (the SIP transactions kept for Timer J among it) about once per
5,000 messages: measured at 10,000 MESSAGEs/s, 12 to 13 µs of CPU per message of 67 to 73 in
all (``python -m bench.sip_direct_profile --stream-management``, docs/performance.md).

A young-generation threshold of GEN0_THRESHOLD allocations walks the same set about 30
times less often. The price: cyclic garbage waits longer to be freed, at most some
GEN0_THRESHOLD objects (a few MiB) — nothing next to the daemon's resident size.
The older generations keep CPython's ratios.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 20_000


def tune_for_daemon() -> None:
    """Set the collector's thresholds for a long-running gateway process (not for
    libraries or tests that embed :class:`~gateway.daemon.Gateway`: it is the process's)."""
    _gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
