"""Receiver throughput with the standard asyncio loop and with uvloop, same harness.

    .venv/bin/pip install uvloop   # not a dependency of the gateway
    python -m bench.loop_compare [N] [ROUNDS]

Runs the receiving gateway in-process (in a thread that joined a benchmark namespace,
as bench/profile_receiver.py does) under each loop in turn, ROUNDS times, while
bench/loadgen.py pushes N messages over one TLS + SASL EXTERNAL session; prints msg/s.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import tests.interop.in_namespace as in_namespace
from bench.setup import bench_namespace
from gateway.config.model import (
    DialbackSettings,
    DnsSettings,
    GatewayConfig,
    ListenAddress,
    LoggingSettings,
    PartnerPolicy,
    PartnerType,
    StoreSettings,
)
from gateway.daemon import Gateway
from gateway.policy.negotiation import Support

ROOT = Path(__file__).resolve().parents[1]


def receive(loop_name: str, n: int) -> float:
    runner = asyncio.run
    if loop_name == "uvloop":
        import uvloop

        runner = uvloop.run
    with bench_namespace("loop", keep_workdir=False) as (ns, pki):
        work = ns.workdir
        config = GatewayConfig(
            domains=("gw.example",),
            partners=(PartnerPolicy("load.example", PartnerType.FEDERATED, Support.REQUIRED,
                                    Support.REQUIRED, False),),
            listen=(ListenAddress("127.0.0.4", 5269),), tls=pki.tls_settings("gw.example"),
            dialback=DialbackSettings("bench"), dns=DnsSettings(("127.0.0.53",), 3.0),
            store=StoreSettings(work / "gw.sqlite3"), admin_socket=work / "gw.sock",
            logging=LoggingSettings(level="warning"))

        async def scenario() -> float:
            gateway = Gateway(config)
            await gateway.start()
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bench.loadgen", "gw.example", "user@gw.example",
                    str(n), "0", str(pki.root), str(work), f"admin:{work / 'gw.sock'}",
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
                out, err = await process.communicate()
                if process.returncode != 0:
                    raise RuntimeError(err.decode()[-3000:])
                return float(json.loads(out.decode().splitlines()[-1])["messages_per_second"])
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
