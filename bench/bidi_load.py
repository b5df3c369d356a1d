"""The partners of the bidi memory run: one process serving COUNT domains
(d00001.load.example …, one wildcard certificate, SASL EXTERNAL), each of which sends one
message to echo@gw.example and waits for its answer, so that every partner has traffic
both ways with the gateway under test. Run inside the benchmark namespace:

    python -m bench.bidi_load COUNTS BIDI PKI_DIR WORKDIR

COUNTS is an increasing comma-separated list of partner totals; after each, one JSON line
(``{"partners": n, "connections": c}``) is printed and a line awaited on stdin (the caller
reads the gateway's memory meanwhile). BIDI is ``on`` or ``off`` (federation.bidi here;
the gateway under test is configured the same). The process listens on 127.0.0.5:5269,
where the namespace's DNS sends every *.load.example, for the gateway's own connections
when there is no bidi.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from gateway.config.model import (
    DialbackSettings,
    DnsSettings,
    FederationSettings,
    GatewayConfig,
    Limits,
    ListenAddress,
    LoggingSettings,
    PartnerPolicy,
    PartnerType,
    StoreSettings,
    TlsSettings,
)
from gateway.daemon import Gateway
from gateway.net.fdlimit import ensure_fd_limit
from gateway.policy.negotiation import Support
from gateway.sip.development import message

CONCURRENCY = 25


async def main() -> int:
    counts = [int(c) for c in sys.argv[1].split(",")]
    bidi, pki, workdir = sys.argv[2] == "on", Path(sys.argv[3]), Path(sys.argv[4])
    total = counts[-1]
    ensure_fd_limit(2 * total + 100)
    domains = tuple(f"d{i:05d}.load.example" for i in range(total))
    config = GatewayConfig(
        domains=domains,
        partners=(PartnerPolicy("gw.example", PartnerType.FEDERATED, Support.REQUIRED,
                                Support.REQUIRED, False),),
        listen=(ListenAddress("127.0.0.5", 5269),),
        tls=TlsSettings(pki / "wild.load.example.crt", pki / "wild.load.example.key",
                        ca_file=pki / "ca.crt", use_system_cas=False, groups=("X25519",)),
        dialback=DialbackSettings("bench"), dns=DnsSettings(("127.0.0.53",), 3.0),
        store=StoreSettings(workdir / "bidi-load.sqlite3"),
        admin_socket=workdir / "bidi-load.sock", logging=LoggingSettings(level="warning"),
        federation=FederationSettings(bidi=bidi),
        limits=Limits(idle_timeout=3600, keepalive_interval=3600, negotiation_timeout=120,
                      connect_timeout=30, max_connections=2 * total + 100,
                      max_connections_per_ip=2 * total + 100))
    gateway = Gateway(config)
    await gateway.start()
    assert gateway.s2s is not None
    answered: set[str] = set()
    done = 0
    try:
        for wanted in counts:
            started = time.monotonic()
            for index in range(done, wanted):
                await gateway.backend.inject(message(f"p@{domains[index]}/r", "echo@gw.example",
                                                     "both ways"))
                if index % CONCURRENCY == CONCURRENCY - 1:
                    await _answers(gateway, answered, index + 1, started)
            await _answers(gateway, answered, wanted, started)
            done = wanted
            print(json.dumps({"partners": wanted, "connections": len(gateway.s2s.connections),
                              "seconds": round(time.monotonic() - started, 2)}), flush=True)
            line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            if not line.strip():
                break
    finally:
        await gateway.stop()
    return 0


async def _answers(gateway: Gateway, answered: set[str], wanted: int, started: float) -> None:
    """Wait until ``wanted`` partners got their echo (bounded: 60 s + 0.1 s a partner)."""
    while len(answered) < wanted:
        if time.monotonic() - started > 60 + 0.1 * wanted:
            raise SystemExit(f"only {len(answered)} of {wanted} partners got an answer")
        stanza = await gateway.backend.next_delivered(60)
        if stanza.get("type") == "error":
            raise SystemExit(f"an error came back: {stanza.get('from')} -> "
                             f"{stanza.get('to')}")
        answered.add(stanza.get("to", "").partition("/")[0])


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
