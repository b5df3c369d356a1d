"""How often the daemon's cyclic garbage collector runs, and why not CPython's default.

Almost everything the gateway allocates is freed by reference counting; the cyclic
collector only finds reference cycles, and the daemon makes very few: in a run of 20,000
SIP MESSAGEs relayed to Prosody the collector found 70 unreachable objects in all. What
it costs is the objects it *walks*: each collection of the young generation visits every
tracked object still alive there. CPython starts one after 700 net allocations, and the
frees of older objects count against that, so the young generation holds everything
allocated since the last collection and still alive. Under load that is the work in
flight: a SIP MESSAGE relayed toward XMPP is answered only once the peer server has
acknowledged the stanza (XEP-0198, docs/delivery.md), and until then its SIP
transaction, request and answer callback are alive, for a round trip of the peer —
tens to hundreds of milliseconds when the peer lags behind the load. With CPython's
threshold the collector walked that whole set again every ~50 messages, promoted it,
and ran full collections over the whole heap every ~5,000: at 10,000 MESSAGEs/s, 17 to
18 µs of CPU per message went to the collector, of 69 to 74 in all
(``python -m bench.tools.sip_direct_profile --stream-management --default-gc`` before the
unacknowledged stanzas were kept as bytes; docs/performance.md has the figures).

With a young-generation threshold of GEN0_THRESHOLD the same set is walked about 70 times
less often; measured the same way, the collector's share fell to 1.5 to 2 µs per message.
The price is that cyclic garbage waits longer to be freed: at most that many objects,
and the daemon makes little (opening 1,000 idle authenticated sessions left 25
unreachable objects, with either threshold: ``python -m bench.tools.idle_profile 1000``
and a collection afterwards). The older generations keep CPython's ratios.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 50_000


def tune_for_daemon() -> None:
    """Set the collector's thresholds for a long-running gateway process (not for
    libraries or tests that embed :class:`~gateway.daemon.Gateway`: it is the process's)."""
    _gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
