"""CPU per message of the whole XMPP → SIP path inside the gateway, next to the S2S path
alone, in one run:

    python -m bench.tools.sip_e2e [N] [--profile]      # default N = 50,000

The receiving gateway runs in this process (in the benchmark namespace, see
bench/tools/profile_receiver.py), bench/loadgen.py pushes N messages over one TLS + SASL
EXTERNAL session, and the gateway hands them either to the development backend (S2S path
only) or, with ``sip.backend: sip`` over UDP, to bench/tools/sip_peer.py answering every MESSAGE
200 at once. CPU is this process's utime+stime over the push, per message.
"""

from __future__ import annotations

import cProfile
import dataclasses
import json
import subprocess
import sys
import time

from bench.setup import ROOT, bench_namespace
from bench.tools.in_process import hottest, push_load, receiver_config
from gateway.config.model import SipSettings
from gateway.daemon import Gateway
from testbed.in_namespace import run_in_namespace

PEER = ("127.0.0.6", 5060)


def main() -> int:
    n = int(next((a for a in sys.argv[1:] if a.isdigit()), "50000"))
    profiler = cProfile.Profile() if "--profile" in sys.argv else None
    results = {}
    with bench_namespace("sipe2e", keep_workdir=False) as (ns, pki):
        peer = subprocess.Popen([*ns.exec, sys.executable, "-m", "bench.tools.sip_peer", "answer",
                                 *map(str, PEER), "600"], stdout=subprocess.PIPE, text=True,
                                cwd=ROOT)
        try:
            assert peer.stdout is not None
            peer.stdout.readline()
            for label, sip in (("s2s+development", SipSettings()),
                               ("s2s+sip", SipSettings(backend="sip", proxy_host=PEER[0],
                                                       proxy_port=PEER[1],
                                                       local_host="127.0.0.4",
                                                       local_port=5062))):
                config = dataclasses.replace(receiver_config(ns, pki), sip=sip)

                async def scenario(config=config, label=label) -> dict:
                    gateway = Gateway(config)
                    await gateway.start()
                    try:
                        cpu, wall = time.process_time(), time.perf_counter()
                        if profiler is not None and label == "s2s+sip":
                            profiler.enable()
                        await push_load(ns, pki, n)
                        if profiler is not None:
                            profiler.disable()
                        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                        return {"cpu_us_per_message": round(cpu / n * 1e6, 1),
                                "msg_per_s": round(n / wall),
                                "backend": gateway.status()["backend"],
                                "dropped": gateway.status()["dropped"]}
                    finally:
                        await gateway.stop()

                results[label] = run_in_namespace(ns.name, scenario, timeout=900)
        finally:
            peer.terminate()
            peer.wait(5)
    print(json.dumps(results, indent=1))
    if profiler is not None:
        print(hottest(profiler, 25))
    return 0


if __name__ == "__main__":
    sys.exit(main())
