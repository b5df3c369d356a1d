"""Where the gateway's CPU goes when SIP MESSAGEs arrive one datagram at a time:

    python -m bench.tools.sip_direct_profile [N] [RATE] [--profile [--cumulative]]
                                       [--stream-management]  # default 50,000 at 10,000/s

The relay benchmark's ``sip_direct`` run (bench/relay.py) with the gateway *in this
process* (in a thread that joined the benchmark namespace, testbed/in_namespace.py):
a UA in the proxy's place (bench/relay_sip.py) sends N MESSAGEs paced at RATE from one
socket straight to the gateway's SIP port, the gateway relays them over S2S (TLS + SASL
EXTERNAL) to a real Prosody a.example, and a c2s receiver there counts them. Prints the
gateway's CPU per message (this process's utime + stime over the run: the event loop's
wakeups, recvfrom/sendto, parsing, routing, answering, TLS and the S2S writes), and with
``--profile`` the functions with the most own time (cProfile inflates Python time; use it
for where, the plain run for how much).
"""

from __future__ import annotations

import asyncio
import cProfile
import dataclasses
import gc
import io
import pstats
import resource
import sys
import time

from bench.relay_child import Child
from bench.setup import bench_namespace
from bench.tools.in_process import hottest, receiver_config
from gateway.config.model import PartnerPolicy, PartnerType, SipSettings
from gateway.daemon import Gateway
from gateway.policy.negotiation import Support
from testbed.in_namespace import run_in_namespace
from testbed.namespace import IPS
from testbed.servers import Prosody

GW = IPS["gw.example"]
SIP_PORT = 5062


class GcTime:
    """CPU time spent in the cyclic garbage collector (gc.callbacks), and its runs."""

    def __init__(self) -> None:
        self.seconds, self.runs, self._started = 0.0, [0, 0, 0], 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.seconds += time.process_time() - self._started
            self.runs[info["generation"]] += 1


def main() -> int:
    numbers = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(numbers[0]) if numbers else 50_000
    rate = float(numbers[1]) if len(numbers) > 1 else 10_000.0
    # CPU time, not wall time: on a shared machine waiting would count as work
    profiler = cProfile.Profile(time.process_time) if "--profile" in sys.argv else None
    collector = GcTime()
    limit = 30 + n / 2000
    with bench_namespace("sipdirect", keep_workdir=False) as (ns, pki):
        # --stream-management: XEP-0198 on the S2S link (Prosody's mod_smacks), as the
        # relay benchmark runs by default
        smacks = "--stream-management" in sys.argv
        prosody = Prosody(ns, pki, "a.example", log_level="warn", users=("user",),
                          smacks=smacks, extra=("smacks_max_queue_size = 20000",)
                          if smacks else ()).start()
        try:
            config = receiver_config(
                ns, pki, partners=(PartnerPolicy("a.example", PartnerType.FEDERATED,
                                                 Support.REQUIRED, Support.REQUIRED, False),),
                sip=SipSettings(backend="sip", proxy_host=GW, proxy_port=5070,
                                transport="udp", local_host=GW, local_port=SIP_PORT))
            config = dataclasses.replace(config, tls=pki.tls_settings("gw.example",
                                                                      xmpp_addrs=False))

            def child(module: str, *args: object) -> Child:
                return Child(ns.exec, module, list(args), ns.workdir / f"{module}.log")

            async def run(count: int, pace: float, measured: bool) -> dict:
                with child("bench.relay_xmpp", "sink", IPS["a.example"], "a.example", "user",
                           limit + 30) as sink:
                    await asyncio.to_thread(sink.line, 30)
                    cpu = time.process_time()
                    usage = resource.getrusage(resource.RUSAGE_SELF)
                    gc_before, runs_before = collector.seconds, list(collector.runs)
                    if measured and profiler is not None:
                        profiler.enable()
                    with child("bench.relay_sip", "message", GW, SIP_PORT, count, pace, 2000,
                               limit, "user@a.example") as load:
                        sent = await asyncio.to_thread(load.line, limit + 20)
                        sink.send(f"{sent['sent']} 5 {limit}")
                        arrived = await asyncio.to_thread(sink.line, limit + 20)
                    if profiler is not None:
                        profiler.disable()
                    used = time.process_time() - cpu
                    after = resource.getrusage(resource.RUSAGE_SELF)
                    system = after.ru_stime - usage.ru_stime
                return {"sent": sent["sent"], "delivered": arrived["received"],
                        "finals": sent["finals"], "retransmissions": sent["retransmissions"],
                        "busy_503_sent_again": sent.get("busy", 0),
                        "gateway_cpu_us_per_message": round(used / max(1, count) * 1e6, 1),
                        "of_which_kernel_us_per_message": round(system / max(1, count) * 1e6,
                                                                1),
                        "of_which_gc_us_per_message": round(
                            (collector.seconds - gc_before) / max(1, count) * 1e6, 1),
                        "gc_runs_by_generation": [a - b for a, b in
                                                  zip(collector.runs, runs_before, strict=True)]}

            async def scenario() -> dict:
                gateway = Gateway(config)
                await gateway.start()
                try:
                    warm = await run(5, 0, False)
                    if warm["delivered"] != 5:
                        raise RuntimeError(f"warm-up failed: {warm}")
                    return await run(n, rate, True)
                finally:
                    await gateway.stop()

            result = run_in_namespace(ns.name, scenario, timeout=limit + 120)
        finally:
            prosody.stop()
    print(result)
    if profiler is not None:
        print(hottest(profiler, 40))
        if "--cumulative" in sys.argv:
            buffer = io.StringIO()
            pstats.Stats(profiler, stream=buffer).sort_stats("cumulative").print_stats(45)
            print(buffer.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
