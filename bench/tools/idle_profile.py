"""Memory per idle S2S session of the receiving gateway, with an allocation profile.

    python -m bench.tools.idle_profile [K[,K2,...]] [--trace]

Builds the benchmark namespace, runs the receiving gateway (gw.example, accepting unlisted
domains) *in this process* in a thread that joined the namespace, opens K idle
authenticated sessions to it with bench/idle.py (SASL EXTERNAL, distinct domains) and
prints the RSS growth per session. With several totals (``1000,3000``) the sessions are
opened in steps and each step's growth per added session is printed too: the marginal
cost, once memory freed by earlier idle sessions is reused by later ones. With ``--trace``
it also prints tracemalloc's top allocation sites per session (tracemalloc inflates RSS,
so the RSS figure is only meaningful without it).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import os
import sys
import tracemalloc
from pathlib import Path

from bench import procfs
from bench.setup import bench_namespace
from bench.tools.in_process import receiver_config
from gateway.config.model import (
    FederationSettings,
    Limits,
)
from gateway.daemon import Gateway
from gateway.net import heap
from gateway.xmpp.stream import RELEASE_IDLE_AFTER
from testbed.in_namespace import run_in_namespace

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    counts = [int(c) for c in args[0].split(",")] if args else [500]
    k = counts[-1]
    trace = "--trace" in sys.argv
    with bench_namespace("idle", keep_workdir=False) as (ns, pki):
        workdir = ns.workdir
        config = receiver_config(
            ns, pki, partners=(), federation=FederationSettings(allow_unlisted=True),
            limits=Limits(max_connections_per_ip=k + 100, max_connections=k + 100,
                          negotiation_timeout=120))

        async def scenario() -> None:
            gateway = Gateway(config)
            await gateway.start()
            try:
                await asyncio.sleep(0.5)
                gc.collect()
                if trace:
                    tracemalloc.start(10)
                    before_snapshot = tracemalloc.take_snapshot()
                before = procfs.rss_kib(os.getpid())
                types_before = collections.Counter(type(o).__name__ for o in gc.get_objects())
                idle = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bench.idle", "gw.example", "user@gw.example",
                    ",".join(map(str, counts)), str(pki.root), str(workdir),
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT)
                assert idle.stdout is not None and idle.stdin is not None
                previous = (0, before)
                for step in counts:
                    opened = await asyncio.wait_for(idle.stdout.readline(), 600)
                    if not opened or "error" in json.loads(opened):
                        raise RuntimeError(f"bench.idle failed to open the sessions: {opened!r}")
                    # Idle streams free their parser and TLS buffers after RELEASE_IDLE_AFTER.
                    await asyncio.sleep(RELEASE_IDLE_AFTER + 3.0)
                    gc.collect()
                    after = procfs.rss_kib(os.getpid())
                    print(f"{step} idle sessions: RSS {before} -> {after} KiB, "
                          f"{(after - before) / step:.1f} KiB per session; "
                          f"{(after - previous[1]) / (step - previous[0]):.1f} KiB per session "
                          f"added in this step"
                          + (" (tracemalloc on: inflated)" if trace else ""), flush=True)
                    previous = (step, after)
                    if step != k:
                        idle.stdin.write(b"next\n")
                        await idle.stdin.drain()
                print(f"malloc_trim after idle releases: {heap.TRIMMER.stats()}", flush=True)
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
