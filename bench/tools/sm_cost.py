"""What XEP-0198 stream management costs per relayed message, in CPU.

    python -m bench.tools.sm_cost [N] [RUNS]      # defaults: 50,000 messages, 3 runs per mode

Two gateways in this process, in the benchmark namespace: load.example sends N chat
messages over one TLS + SASL EXTERNAL session to gw.example, whose development backend
delivers them. The process's CPU (``time.process_time``: both gateways, the sending and
the receiving side of every message, TLS and XML included) per delivered message, with
stream management on (the default: the sender asks ``<r/>`` at the end of each burst,
the receiver acknowledges every 32 settled stanzas or 50 ms after one settled) and off
(plain S2S), alternating, RUNS times each; medians and their ratio. One line of JSON.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import statistics
import sys
import time

from bench.loadgen import load_gateway
from bench.setup import bench_namespace
from bench.tools.in_process import receiver_config
from gateway.config.model import FederationSettings
from gateway.daemon import Gateway
from gateway.sip.development import message
from testbed.in_namespace import run_in_namespace
from testbed.namespace import Namespace
from testbed.pki import Pki

BATCH = 500


async def one_run(ns: Namespace, pki: Pki, n: int, stream_management: bool) -> dict:
    federation = FederationSettings(stream_management=stream_management)
    receiver = Gateway(receiver_config(ns, pki, federation=federation))
    loader = load_gateway("gw.example", pki.root, ns.workdir)
    sender = Gateway(dataclasses.replace(loader.config, federation=federation))
    await receiver.start()
    await sender.start()
    try:
        assert sender.s2s is not None
        sender.s2s.send(message("w@load.example/r", "user@gw.example", "warm-up"))
        while _delivered(receiver) < 1:
            await asyncio.sleep(0.01)
        streams = [row for row in receiver.status()["sessions"] if row["method"]]
        cpu, started = time.process_time(), time.perf_counter()
        for first in range(0, n, BATCH):
            for index in range(first, min(n, first + BATCH)):
                sender.s2s.send(message("w@load.example/r", "user@gw.example", f"{index}"))
            await asyncio.sleep(0)
            while _delivered(receiver) < first - 4 * BATCH:  # a bounded lead
                await asyncio.sleep(0.001)
        while _delivered(receiver) < n + 1:
            await asyncio.sleep(0.001)
        cpu, elapsed = time.process_time() - cpu, time.perf_counter() - started
        return {"stream_management": bool(streams and streams[0]["stream_management"]),
                "cpu_us_per_message": cpu * 1e6 / n, "messages_per_second": n / elapsed}
    finally:
        await sender.stop()
        await receiver.stop()


def _delivered(gateway: Gateway) -> int:
    return int(gateway.status()["router"]["delivered"])


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    results: dict[str, list[dict]] = {"on": [], "off": []}
    with bench_namespace("smcost", keep_workdir=False) as (ns, pki):
        for _ in range(runs):
            for mode in ("off", "on"):
                outcome = run_in_namespace(ns.name, lambda m=mode: one_run(ns, pki, n, m == "on"),
                                           timeout=600)
                results[mode].append(outcome)
                print(f"{mode}: {outcome}", file=sys.stderr, flush=True)
    medians = {mode: statistics.median(r["cpu_us_per_message"] for r in rows)
               for mode, rows in results.items()}
    print(json.dumps({"messages": n, "runs": runs, "cpu_us_per_message": medians,
                      "ratio_on_to_off": medians["on"] / medians["off"],
                      "enabled": {m: [r["stream_management"] for r in rows]
                                  for m, rows in results.items()},
                      "all": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
