"""The SIP end of the XMPP→SIP latency benchmark: a UA registered at Kamailio that
answers each MESSAGE with 200 and records when it arrived.

Each body carries the sender's ``time.monotonic_ns()`` (CLOCK_MONOTONIC, shared by all
processes of the machine), so latency = arrival - send, measured across the whole path:
S2S (TLS) → gateway → SIP → Kamailio → UA. Run inside the benchmark namespace:

    python -m bench.sip_sink PROXY_HOST PROXY_PORT USER DOMAIN COUNT TIMEOUT

Prints ``{"ready": true}`` once registered, then one JSON line with the statistics when
COUNT timed messages arrived or TIMEOUT seconds passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import sys
import time

from gateway.sip.message import SipRequest, SipResponse
from tests.support.sip_ua import SipUserAgent


class TimingUserAgent(SipUserAgent):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.latencies_ns: list[int] = []
        self.done = asyncio.Event()
        self.wanted = 0

    def _handle(self, message: SipRequest | SipResponse, connection=None) -> None:
        arrived = time.monotonic_ns()
        super()._handle(message, connection)
        if isinstance(message, SipRequest) and message.method == "MESSAGE":
            self.messages.get_nowait()  # answered already; keep only the timing
            stamp, _, _index = message.body.decode().partition(" ")
            if stamp.isdigit():
                self.latencies_ns.append(arrived - int(stamp))
                if len(self.latencies_ns) >= self.wanted:
                    self.done.set()


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


async def main() -> None:
    host, port, user, domain, count, timeout = sys.argv[1:7]
    ua = TimingUserAgent(user, domain, (host, int(port)), host=host)
    ua.wanted = int(count)
    await ua.start()
    response = await ua.register(expires=600)
    if response.status != 200:
        raise SystemExit(f"REGISTER failed: {response.status} {response.reason}")
    print(json.dumps({"ready": True}), flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ua.done.wait(), float(timeout))
    await ua.close()
    values = sorted(v / 1e6 for v in ua.latencies_ns)
    print(json.dumps({
        "received": len(values), "expected": ua.wanted,
        "latency_p50_ms": statistics.median(values) if values else None,
        "latency_p90_ms": percentile(values, 0.90) if values else None,
        "latency_p99_ms": percentile(values, 0.99) if values else None,
        "latency_max_ms": values[-1] if values else None,
    }), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
