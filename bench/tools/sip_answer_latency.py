"""What answering a SIP MESSAGE only once XMPP has it costs in latency.

    python -m bench.tools.sip_answer_latency [N]     # default 2,000 MESSAGEs per mode

The relay world (bench/relay.py: Prosody a.example, Kamailio, the gateway) twice: with
stream management on the S2S link (the MESSAGE is answered once Prosody acknowledged the
stanza) and off (answered once it was written to the stream, as plain S2S allows). A SIP
UA (bench/relay_sip.py) sends N MESSAGEs to user@a.example one at a time (a window of 1),
so the time per MESSAGE is the round trip UA → Kamailio → gateway → (Prosody and back)
→ Kamailio → UA. One line of JSON: milliseconds per MESSAGE in each mode and the
difference.
"""

from __future__ import annotations

import json
import sys

from bench.relay import GW, KAMAILIO_PORT, PATHS, RelayWorld, Sizes, run_path
from bench.setup import bench_namespace


def measure(n: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    with bench_namespace("siplat") as (ns, pki):
        for mode in (False, True):
            world = RelayWorld(ns, pki, stream_management=mode)
            with world.running():
                warm = run_path(world, PATHS["sip_xmpp"], 5, 0, Sizes())
                if warm["delivered"] != 5:
                    raise RuntimeError(f"warm-up failed: {warm}")
                with world.child("bench.relay_sip", "message", GW, KAMAILIO_PORT, n, 0, 1,
                                 60 + n / 100, "user@a.example") as load:
                    sent = load.line(120 + n / 100)
            results["on" if mode else "off"] = {
                "messages": sent["sent"], "accepted": sent["accepted"],
                "ms_per_message": 1000 * sent["send_seconds"] / max(1, sent["sent"])}
    return results


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    results = measure(n)
    print(json.dumps({**results, "cost_ms": results["on"]["ms_per_message"]
                      - results["off"]["ms_per_message"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
