"""What the investigations that run the receiving gateway *in this process* share: its
configuration (gw.example, load.example its only partner), bench/loadgen.py pushing load
into it, and a profile's hottest functions."""

from __future__ import annotations

import asyncio
import cProfile
import dataclasses
import io
import json
import pstats
import sys
from typing import Any

from bench.setup import ROOT
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
from gateway.policy.negotiation import Support
from testbed.namespace import Namespace
from testbed.pki import Pki


def receiver_config(ns: Namespace, pki: Pki, **changes: Any) -> GatewayConfig:
    """The receiving gateway (gw.example on 127.0.0.4:5269) for in-process runs: its only
    partner load.example by TLS + SASL EXTERNAL, quiet logs; ``changes`` replace fields
    (e.g. no partners and ``allow_unlisted`` for the idle-session run)."""
    work = ns.workdir
    config = GatewayConfig(
        domains=("gw.example",),
        partners=(PartnerPolicy("load.example", PartnerType.FEDERATED, Support.REQUIRED,
                                Support.REQUIRED, False),),
        listen=(ListenAddress("127.0.0.4", 5269),), tls=pki.tls_settings("gw.example"),
        dialback=DialbackSettings("bench"), dns=DnsSettings(("127.0.0.53",), 3.0),
        store=StoreSettings(work / "gw.sqlite3"), admin_socket=work / "gw.sock",
        logging=LoggingSettings(level="warning"))
    return dataclasses.replace(config, **changes)


async def push_load(ns: Namespace, pki: Pki, n: int) -> dict[str, Any]:
    """bench/loadgen.py pushing ``n`` messages into the in-process receiver (counted by its
    router over the admin socket); its JSON result."""
    work = ns.workdir
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.loadgen", "gw.example", "user@gw.example", str(n), "0",
        str(pki.root), str(work), f"admin:{work / 'gw.sock'}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
    out, err = await asyncio.wait_for(process.communicate(), 600)
    if process.returncode != 0:
        raise RuntimeError(err.decode()[-3000:])
    return json.loads(out.decode().splitlines()[-1])  # type: ignore[no-any-return]


def hottest(profiler: cProfile.Profile, top: int) -> str:
    """The ``top`` functions of a profile by their own time, as pstats prints them."""
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(top)
    return buffer.getvalue()
