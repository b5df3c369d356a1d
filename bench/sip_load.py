"""The XMPP end of the XMPP→SIP latency benchmark: one authenticated S2S session from
load.example to the gateway, N chat messages to a SIP user at a fixed rate, each body
starting with ``time.monotonic_ns()`` taken just before the stanza is handed to S2S.

    python -m bench.sip_load RECEIVER RECIPIENT N RATE PKI_DIR WORKDIR ADMIN_SOCKET

Pacing: every ~0.5 ms the sender sends the messages that are due, so the offered load is
RATE msg/s without bursts larger than one or two messages. Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from bench.loadgen import admin_counter, load_gateway, warm_up
from gateway.sip.development import message

TIMEOUT = 120.0


async def main() -> None:
    receiver, recipient, total, rate_text, pki, workdir, admin = sys.argv[1:8]
    n, rate = int(total), float(rate_text)
    gateway = load_gateway(receiver, Path(pki), Path(workdir))
    await gateway.start()
    assert gateway.s2s is not None
    delivered = admin_counter(admin)
    sender = "load@load.example/bench"
    try:
        await warm_up(gateway, sender, recipient, delivered)
        await asyncio.sleep(0.5)
        started = time.monotonic()
        sent = 0
        while sent < n:
            if time.monotonic() - started > TIMEOUT:
                raise TimeoutError(f"sent only {sent} of {n}")
            due = min(n, int((time.monotonic() - started) * rate) + 1)
            while sent < due:
                gateway.s2s.send(message(sender, recipient, f"{time.monotonic_ns()} {sent}"))
                sent += 1
            await asyncio.sleep(0.0005)
        elapsed = time.monotonic() - started
        await asyncio.sleep(1.0)  # let the last ones drain before closing the session
        print(json.dumps({"sent": n, "seconds": elapsed, "offered_rate": n / elapsed}))
    finally:
        await gateway.stop()


if __name__ == "__main__":
    asyncio.run(main())
