"""Idle-session memory: open K authenticated S2S sessions from K distinct domains
(d0001.load.example …, one wildcard certificate, SASL EXTERNAL) to the receiver and keep
them idle. Run inside the benchmark namespace; prints one JSON line when all are up, then
waits for a line on stdin before closing them (so the caller can read the receiver's RSS).

    python -m bench.idle RECEIVER RECIPIENT K PKI_DIR WORKDIR
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from xml.etree.ElementTree import Element

from gateway.config.model import (
    DialbackSettings,
    DnsSettings,
    GatewayConfig,
    Limits,
    ListenAddress,
    PartnerPolicy,
    PartnerType,
    StoreSettings,
    TlsSettings,
)
from gateway.daemon import Gateway
from gateway.policy.negotiation import Support

TIMEOUT = 240.0


async def main() -> None:
    receiver, recipient, count, pki, workdir = sys.argv[1:6]
    k = int(count)
    domains = tuple(f"d{i:04d}.load.example" for i in range(k))
    pki_dir = Path(pki)
    config = GatewayConfig(
        domains=domains,
        partners=(PartnerPolicy(receiver, PartnerType.FEDERATED, Support.REQUIRED,
                                Support.REQUIRED, False),),
        listen=(ListenAddress("127.0.0.5", 5270),),
        tls=TlsSettings(pki_dir / "wild.load.example.crt", pki_dir / "wild.load.example.key",
                        ca_file=pki_dir / "ca.crt", use_system_cas=False),
        dialback=DialbackSettings("bench"), dns=DnsSettings(("127.0.0.53",), 3.0),
        store=StoreSettings(Path(workdir) / "idle.sqlite3"),
        admin_socket=Path(workdir) / "idle.sock",
        limits=Limits(idle_timeout=3600, keepalive_interval=3600, max_queue_per_domain=10,
                      negotiation_timeout=120, connect_timeout=30),
    )
    gateway = Gateway(config)
    await gateway.start()
    assert gateway.s2s is not None
    started = time.monotonic()
    try:
        for index, domain in enumerate(domains):
            # An error-type message: delivered or dropped by the receiver, never answered,
            # so only our outbound sessions exist (RFC 6120 §8.3.1).
            stanza = Element("{jabber:server}message", {
                "from": f"idle@{domain}", "to": recipient, "type": "error"})
            gateway.s2s.send(stanza)
            if index % 25 == 24:
                await _wait_open(gateway, receiver, index + 1, started)
        await _wait_open(gateway, receiver, k, started)
        print(json.dumps({"sessions": k, "seconds_to_open": time.monotonic() - started}),
              flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    finally:
        await gateway.stop()


async def _wait_open(gateway: Gateway, receiver: str, wanted: int, started: float) -> None:
    assert gateway.s2s is not None
    while True:
        open_sessions = sum(
            1 for s in gateway.s2s.sessions.values()
            if s.remote == receiver and s.connection is not None
            and s.connection.stream.pairs)
        failed = sum(s.failures for s in gateway.s2s.sessions.values())
        if failed:
            reasons = {s.last_failure for s in gateway.s2s.sessions.values() if s.failures}
            raise RuntimeError(f"{failed} sessions failed: {sorted(reasons)[:3]}")
        if open_sessions >= wanted:
            return
        if time.monotonic() - started > TIMEOUT:
            raise TimeoutError(f"only {open_sessions} of {wanted} sessions opened")
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main())
