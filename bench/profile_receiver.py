"""Where the receiving gateway spends its CPU: cProfile over the inbound hot path.

    python -m bench.profile_receiver [N]        # default N = 50,000 messages

Builds the benchmark namespace, runs the receiving gateway *in this process* (in a thread
that joined the namespace, see tests/interop/in_namespace.py) under cProfile, and lets
bench/loadgen.py push N messages over one TLS + SASL EXTERNAL session into it. Prints the
functions with the most own time, and the share of the big groups (TLS, XML parsing,
stream state machine, router, asyncio) in the total.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import os
import pstats
import shutil
import sys
import time
from pathlib import Path

from gateway.auth import devcerts
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
from tests.interop.harness import Namespace
from tests.interop.in_namespace import run_in_namespace
from tests.unit.s2s_world import Pki

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {
    "TLS (pyOpenSSL/OpenSSL)": ("OpenSSL/", "gateway/xmpp/tls.py"),
    "XML parsing (expat + our handlers)": ("gateway/xmpp/parser.py", "pyexpat"),
    "S2S stream state machine": ("gateway/xmpp/stream.py", "gateway/xmpp/inbound.py",
                                 "gateway/xmpp/outbound.py"),
    "connection / federation": ("gateway/net/",),
    "router + contact rules": ("gateway/router.py", "gateway/policy/"),
    "asyncio event loop": ("asyncio/",),
}


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    workdir = Path(f"/tmp/xmpp-gateway-profile-{os.getpid()}")
    workdir.mkdir(parents=True)
    ns = Namespace(f"gwp{os.getpid()}", workdir)
    ns.up()
    try:
        pki = Pki(workdir / "pki")
        load = pki.tls_settings("load.example", xmpp_addrs=False)
        shutil.copy(load.certificate, pki.root / "load.example.crt")
        shutil.copy(load.key, pki.root / "load.example.key")
        wild, wild_key = devcerts.issue_certificate(
            pki.ca, pki.ca_key, ["*.load.example"], key_type="ec", xmpp_addrs=False)
        devcerts.write_key_and_cert(pki.root / "wild.load.example.crt",
                                    pki.root / "wild.load.example.key", wild, wild_key)
        config = GatewayConfig(
            domains=("gw.example",),
            partners=(PartnerPolicy("load.example", PartnerType.FEDERATED, Support.REQUIRED,
                                    Support.REQUIRED, False),),
            listen=(ListenAddress("127.0.0.4", 5269),),
            tls=pki.tls_settings("gw.example"), dialback=DialbackSettings("bench"),
            dns=DnsSettings(("127.0.0.53",), 3.0), store=StoreSettings(workdir / "gw.sqlite3"),
            admin_socket=workdir / "gw.sock", logging=LoggingSettings(level="warning"))
        profiler = cProfile.Profile()

        async def scenario() -> float:
            gateway = Gateway(config)
            await gateway.start()
            try:
                profiler.enable()
                started = time.perf_counter()
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bench.loadgen", "gw.example", "user@gw.example",
                    str(n), "0", str(pki.root), str(workdir), f"admin:{workdir / 'gw.sock'}",
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
                _out, err = await asyncio.wait_for(process.communicate(), 600)
                profiler.disable()
                if process.returncode != 0:
                    raise RuntimeError(err.decode()[-3000:])
                return time.perf_counter() - started
            finally:
                await gateway.stop()

        elapsed = run_in_namespace(ns.name, scenario, timeout=700)
    finally:
        ns.down()
        shutil.rmtree(workdir, ignore_errors=True)
    stats = pstats.Stats(profiler)
    total = sum(row[2] for row in stats.stats.values())  # own time of every function
    shares = dict.fromkeys(GROUPS, 0.0)
    for (filename, _line, name), row in stats.stats.items():
        where = f"{filename}:{name}"
        for group, needles in GROUPS.items():
            if any(needle in where for needle in needles):
                shares[group] += row[2]
                break
    print(f"{n:,} messages received in {elapsed:.1f} s under the profiler "
          f"(profiling slows Python code ~2x)")
    for group, seconds in sorted(shares.items(), key=lambda item: -item[1]):
        print(f"  {100 * seconds / total:5.1f} %  {group}")
    print(f"  {100 * (total - sum(shares.values())) / total:5.1f} %  other")
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(20)
    print(buffer.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
