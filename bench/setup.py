"""What every benchmark run starts from: a network namespace of its own (loopback IPs,
dnsmasq with the test domains; tests/interop/harness.py) and a PKI holding the load
generator's certificates."""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import dataclasses
import io
import json
import os
import pstats
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
from gateway.policy.negotiation import Support
from tests.interop.harness import Namespace
from tests.unit.s2s_world import Pki

ROOT = Path(__file__).resolve().parents[1]


def bench_pki(root: Path) -> Pki:
    """The test CA plus load.example's certificate (DNS-IDs only: ejabberd 23.01 crashes on
    xmppAddr client certificates, docs/interop.md) and a *.load.example wildcard for the
    idle sessions' many domains, at the paths bench/loadgen.py and bench/idle.py read."""
    pki = Pki(root)
    load = pki.tls_settings("load.example", xmpp_addrs=False)
    shutil.copy(load.certificate, pki.root / "load.example.crt")
    shutil.copy(load.key, pki.root / "load.example.key")
    wild, wild_key = devcerts.issue_certificate(
        pki.ca, pki.ca_key, ["*.load.example"], key_type="ec", xmpp_addrs=False)
    devcerts.write_key_and_cert(pki.root / "wild.load.example.crt",
                                pki.root / "wild.load.example.key", wild, wild_key)
    return pki


@contextlib.contextmanager
def bench_namespace(kind: str, *, keep_workdir: bool = True) -> Iterator[tuple[Namespace, Pki]]:
    """A namespace named after ``kind`` and this process, with its PKI; removed on exit
    (the work directory too unless ``keep_workdir``, which keeps logs for a post-mortem)."""
    workdir = Path(f"/tmp/xmpp-gateway-{kind}-{os.getpid()}")
    workdir.mkdir(parents=True)
    ns = Namespace(f"gw{kind[:1]}{os.getpid()}", workdir)
    ns.up()
    try:
        yield ns, bench_pki(workdir / "pki")
    finally:
        ns.down()
        if not keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


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
