"""The presence storm of the relay benchmark (issue 17): at the same moment

* XMPP side: Prosody user storm@a.example, whose roster holds N SIP users of the gateway
  (sip00000@gw.example …, subscription "both"), logs in; its initial presence makes
  Prosody send N presences and N probes over the one S2S session (RFC 6121 §4.2.2, §4.3).
  Each probe makes the gateway SUBSCRIBE to that SIP user at Kamailio; each NOTIFY comes
  back to storm@a.example as presence. Mapped = distinct SIP users whose presence
  arrived; refused = distinct ones that answered with a presence error; lost = the rest.
* SIP side: N SIP watchers (w00000@gw.example …) SUBSCRIBE to storm@a.example through
  Kamailio (bench/relay_sip.py, retransmitting like a phone). Mapped = SUBSCRIBEs answered
  2xx and turned into XMPP subscription requests seen by storm@a.example; NOTIFYs seen by
  the watchers; refused = final answers >= 300; lost = never answered.
"""

from __future__ import annotations

from typing import Any

from bench.relay import GW, KAMAILIO_PORT, Meter, RelayWorld
from tests.interop.harness import IPS

STORM_QUIET = 2.0


def write_roster(world: RelayWorld, n: int) -> None:
    """storm@a.example's roster in Prosody's internal storage (data/<host>/roster/<user>.dat,
    host with "." escaped as %2e), read by Prosody when the user logs in."""
    roster = world.a.dir / "data" / "a%2eexample" / "roster"
    roster.mkdir(parents=True, exist_ok=True)
    items = "".join(f'["sip{i:05d}@gw.example"] = {{ ["subscription"] = "both"; '
                    '["groups"] = {}; };\n' for i in range(n))
    (roster / "storm.dat").write_text(
        f'return {{\n[false] = {{ ["version"] = 1; }};\n{items}}};\n')


def presence_storm(world: RelayWorld, meter: Meter, n: int) -> dict[str, Any]:
    write_roster(world, n)
    limit = 60 + n / 100
    meter.begin()
    with world.child("bench.relay_xmpp", "sink", IPS["a.example"], "a.example",
                     "storm", limit + 30) as sink, \
            world.child("bench.relay_sip", "subscribe", GW, KAMAILIO_PORT, n, 0, 0, limit,
                        "storm@a.example") as watchers:
        sink.line(30)
        sip = watchers.line(limit + 20)
        # No count to wait for: the storm is over when nothing new came for STORM_QUIET s.
        sink.send(f"{10 ** 9} {STORM_QUIET} {limit}")
        xmpp = sink.line(limit + 20)
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
                     "subscriptions_seen_by_xmpp_user": senders.get("subscribe", 0)},
        "presence_counts": xmpp["counts"],
        **{k: v for k, v in measured.items() if k != "cpu_us_per_message"},
        "cpu_us_per_subscription": measured["cpu_us_per_message"],
    }
