"""The presence storm of the relay benchmark: at the same moment

* XMPP side: Prosody user storm@a.example, whose roster holds N SIP users of the gateway
  (sip00000@gw.example …, subscription "both"), logs in; its initial presence makes
  Prosody send N presences and N probes over the one S2S session (RFC 6121 §4.2.2, §4.3).
  Each probe makes the gateway SUBSCRIBE to that SIP user at Kamailio; each NOTIFY comes
  back to storm@a.example as presence. Mapped = distinct SIP users whose presence
  arrived; refused = distinct ones that answered with a presence error; lost = the rest.
* SIP side: N SIP watchers (w00000@gw.example …) each SUBSCRIBE to their own XMPP user
  (u00000@a.example …) through Kamailio (bench/relay_sip.py, retransmitting like a phone).
  Mapped = SUBSCRIBEs answered 2xx; stored = XMPP subscription requests Prosody keeps as
  pending in those users' rosters; NOTIFYs seen by the watchers; refused = final answers
  >= 300; lost = never answered.

One XMPP user per watcher: Prosody rewrites a user's whole roster file for every pending
subscription, so N requests to one user would measure Prosody's storage, not the relay.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from bench.relay import GW, KAMAILIO_PORT, Meter, RelayWorld
from testbed.namespace import IPS

# Nothing new for this long ends the storm. 2 s was too short on a loaded machine: in one
# run the gateway was still working through 9,560 queued SIP requests when it was called.
STORM_QUIET = 10.0
_PENDING_WATCHER = re.compile(r'\["w\d{5}@gw\.example"\]')


def storage(world: RelayWorld, store: str) -> Path:
    """A store of Prosody's internal storage for a.example (host with "." as %2e)."""
    path = world.a.dir / "data" / "a%2eexample" / store
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare(world: RelayWorld, n: int) -> None:
    """storm@a.example's roster and the accounts u00000 … the watchers subscribe to, in
    Prosody's internal storage, read by Prosody when they are used."""
    items = "".join(f'["sip{i:05d}@gw.example"] = {{ ["subscription"] = "both"; '
                    '["groups"] = {}; };\n' for i in range(n))
    (storage(world, "roster") / "storm.dat").write_text(
        f'return {{\n[false] = {{ ["version"] = 1; }};\n{items}}};\n')
    accounts = storage(world, "accounts")
    for i in range(n):
        (accounts / f"u{i:05d}.dat").write_text('return { ["password"] = "pw"; };\n')


def stored_requests(world: RelayWorld, n: int, limit: float) -> int:
    """Pending subscription requests from the watchers in u*'s rosters, once their number
    has stopped growing (Prosody may still be working through its S2S input)."""
    rosters = storage(world, "roster")
    deadline = time.monotonic() + limit
    count, stable_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = sum(len(_PENDING_WATCHER.findall(path.read_text(errors="replace")))
                  for path in rosters.glob("u*.dat"))
        if now != count:
            count, stable_since = now, time.monotonic()
        elif now >= n or time.monotonic() - stable_since > STORM_QUIET:
            break
        time.sleep(0.5)
    return max(count, 0)


def notify_quiet(n: int) -> float:
    """How long the watchers wait for NOTIFYs after the last one. Each subscription gets a
    second NOTIFY (Prosody's answer to the gateway's probe), which comes once Prosody and
    the S2S queue have worked off the storm, up to 6 s after the first ones for 5,000
    watchers; a watcher gone by then leaves it to time out at Kamailio (32 s holding a
    slot of the gateway's SIP window). 2 s is ample for a few hundred."""
    return max(2.0, min(STORM_QUIET, n / 500))


def presence_storm(world: RelayWorld, meter: Meter, n: int) -> dict[str, Any]:
    prepare(world, n)
    limit = 60 + n / 100
    meter.begin()
    with world.child("bench.relay_xmpp", "sink", IPS["a.example"], "a.example",
                     "storm", limit + 30) as sink, \
            world.child("bench.relay_sip", "subscribe", GW, KAMAILIO_PORT, n, 0, 0, limit,
                        "u{:05d}@a.example", "--notify-quiet", notify_quiet(n)) as watchers:
        sink.line(30)
        sip = watchers.line(limit + 20)
        # No count to wait for: the storm is over when nothing new came for STORM_QUIET s.
        sink.send(f"{10 ** 9} {STORM_QUIET} {limit}")
        xmpp = sink.line(limit + 20)
    stored = stored_requests(world, n, limit)
    senders = xmpp["presence_senders"]
    mapped = xmpp["presence_contacts"]
    refused = senders.get("error", 0)
    measured = meter.end(2 * n)
    return {
        "contacts": n,
        "xmpp_side": {"probed": n, "mapped": mapped, "refused": refused,
                      "lost": max(0, n - mapped - refused)},
        "sip_side": {"watchers": n, "accepted": sip["accepted"], "refused": sip["refused"],
                     "lost": sip["unanswered"], "notifies": sip["notifies"],
                     "notified_subscriptions": sip["notified_subscriptions"],
                     "notify_states": sip["notify_states"],
                     "retransmissions": sip["retransmissions"],
                     "busy": sip.get("busy", 0),
                     "subscription_requests_stored_by_prosody": stored},
        "presence_counts": xmpp["counts"],
        **{k: v for k, v in measured.items() if k != "cpu_us_per_message"},
        "cpu_us_per_subscription": measured["cpu_us_per_message"],
    }
