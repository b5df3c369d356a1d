"""Receiver throughput with the standard asyncio loop and with uvloop, same harness.

    .venv/bin/pip install uvloop   # not a dependency of the gateway
    python -m bench.tools.loop_compare [N] [ROUNDS]

Runs the receiving gateway in-process (in a thread that joined a benchmark namespace,
as bench/tools/profile_receiver.py does) under each loop in turn, ROUNDS times, while
bench/loadgen.py pushes N messages over one TLS + SASL EXTERNAL session; prints msg/s.
"""

from __future__ import annotations

import asyncio
import sys

import testbed.in_namespace as in_namespace
from bench.setup import bench_namespace
from bench.tools.in_process import push_load, receiver_config
from gateway.daemon import Gateway


def receive(loop_name: str, n: int) -> float:
    runner = asyncio.run
    if loop_name == "uvloop":
        import uvloop

        runner = uvloop.run
    with bench_namespace("loop", keep_workdir=False) as (ns, pki):
        config = receiver_config(ns, pki)

        async def scenario() -> float:
            gateway = Gateway(config)
            await gateway.start()
            try:
                return float((await push_load(ns, pki, n))["messages_per_second"])
            finally:
                await gateway.stop()

        original = in_namespace.asyncio.run
        in_namespace.asyncio.run = runner  # the namespace thread's loop
        try:
            return in_namespace.run_in_namespace(ns.name, scenario, timeout=600)
        finally:
            in_namespace.asyncio.run = original


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    for _ in range(rounds):
        for loop_name in ("asyncio", "uvloop"):
            print(f"{loop_name:8} {receive(loop_name, n):,.0f} msg/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
