"""Where the receiving gateway spends its CPU: cProfile over the inbound hot path.

    python -m bench.tools.profile_receiver [N]        # default N = 50,000 messages

Builds the benchmark namespace, runs the receiving gateway *in this process* (in a thread
that joined the namespace, see testbed/in_namespace.py) under cProfile, and lets
bench/loadgen.py push N messages over one TLS + SASL EXTERNAL session into it. Prints the
functions with the most own time, and the share of the big groups (TLS, XML parsing,
stream state machine, router, asyncio) in the total.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time

from bench.setup import bench_namespace
from bench.tools.in_process import hottest, push_load, receiver_config
from gateway.daemon import Gateway
from testbed.in_namespace import run_in_namespace

# Entry points of the inbound path; their cumulative time (own time + callees, C included)
# says where a message's cost goes. They nest only where noted.
ENTRY_POINTS = (
    ("waiting for data (epoll)", "~", "<method 'poll' of 'select.epoll' objects>"),
    ("TLS decryption (TlsEngine.receive)", "gateway/xmpp/tls.py", "receive"),
    ("XML parsing (StreamParser.feed)", "gateway/xmpp/parser.py", "feed"),
    ("S2S stream checks per stanza (InboundStream._on_stanza)", "gateway/xmpp/inbound.py",
     "_on_stanza"),
    ("router incl. contact rules + backend (InboundRouting._route)",
     "gateway/router/inbound.py", "_route"),
    ("  of which the development backend (deliver)", "gateway/sip/development.py", "deliver"),
)


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    with bench_namespace("profile", keep_workdir=False) as (ns, pki):
        config = receiver_config(ns, pki)
        profiler = cProfile.Profile()

        async def scenario() -> float:
            gateway = Gateway(config)
            await gateway.start()
            try:
                profiler.enable()
                started = time.perf_counter()
                try:
                    await push_load(ns, pki, n)
                finally:
                    profiler.disable()
                return time.perf_counter() - started
            finally:
                await gateway.stop()

        elapsed = run_in_namespace(ns.name, scenario, timeout=700)
    stats = pstats.Stats(profiler)
    total = max(row[3] for row in stats.stats.values())  # the outermost cumulative time
    print(f"{n:,} messages received in {elapsed:.1f} s under the profiler "
          f"(profiling slows Python code ~2x); share of the profiled time:")
    for label, filename, function in ENTRY_POINTS:
        cumulative = sum(row[3] for (file, _line, name), row in stats.stats.items()
                         if file.endswith(filename) and name == function)
        print(f"  {100 * cumulative / total:5.1f} %  {label}")
    print(hottest(profiler, 20))
    return 0


if __name__ == "__main__":
    sys.exit(main())
