"""Memory per idle S2S session of the receiving gateway, with an allocation profile.

    python -m bench.idle_profile [K] [--trace]

Builds the benchmark namespace, runs the receiving gateway (gw.example, accepting unlisted
domains) *in this process* in a thread that joined the namespace, opens K idle
authenticated sessions to it with bench/idle.py (SASL EXTERNAL, distinct domains) and
prints the RSS growth per session. With ``--trace`` it also prints tracemalloc's top
allocation sites per session (tracemalloc inflates RSS, so the RSS figure is only
meaningful without it).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import sys
import tracemalloc
from pathlib import Path

from bench.setup import bench_namespace, receiver_config
from gateway.config.model import (
    FederationSettings,
    Limits,
)
from gateway.daemon import Gateway
from tests.interop.in_namespace import run_in_namespace

ROOT = Path(__file__).resolve().parents[1]


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    k = int(args[0]) if args else 500
    trace = "--trace" in sys.argv
    with bench_namespace("idle", keep_workdir=False) as (ns, pki):
        workdir = ns.workdir
        config = receiver_config(
            ns, pki, partners=(), federation=FederationSettings(allow_unlisted=True),
            limits=Limits(max_connections_per_ip=5000, negotiation_timeout=120))

        async def scenario() -> None:
            gateway = Gateway(config)
            await gateway.start()
            try:
                await asyncio.sleep(0.5)
                gc.collect()
                if trace:
                    tracemalloc.start(10)
                    before_snapshot = tracemalloc.take_snapshot()
                before = rss_kib()
                types_before = collections.Counter(type(o).__name__ for o in gc.get_objects())
                idle = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bench.idle", "gw.example", "user@gw.example", str(k),
                    str(pki.root), str(workdir), stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE, cwd=ROOT)
                assert idle.stdout is not None and idle.stdin is not None
                opened = await asyncio.wait_for(idle.stdout.readline(), 300)
                if not opened:
                    raise RuntimeError("bench.idle failed to open the sessions")
                await asyncio.sleep(2.0)
                gc.collect()
                after = rss_kib()
                print(f"{k} idle sessions: RSS {before} -> {after} KiB, "
                      f"{(after - before) / k:.1f} KiB per session"
                      + (" (tracemalloc on: inflated)" if trace else ""))
                if trace:
                    after_snapshot = tracemalloc.take_snapshot()
                    diff = after_snapshot.compare_to(before_snapshot, "lineno")
                    total = sum(s.size_diff for s in diff)
                    print(f"Python allocations: {total / 1024 / k:.1f} KiB per session; top:")
                    for stat in diff[:15]:
                        print(f"  {stat.size_diff / k:7.0f} B  {stat.count_diff / k:5.1f} obj  "
                              f"{stat.traceback[0]}")
                    types_after = collections.Counter(type(o).__name__ for o in gc.get_objects())
                    grown = (types_after - types_before).most_common(12)
                    print("objects per session:", ", ".join(f"{name} {count / k:.1f}"
                                                            for name, count in grown))
                idle.stdin.write(b"\n")
                await idle.stdin.drain()
                await idle.wait()
            finally:
                await gateway.stop()

        run_in_namespace(ns.name, scenario, timeout=600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
