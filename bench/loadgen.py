"""Load generator, run inside the benchmark's network namespace.

It is a gateway instance serving ``load.example`` (so receivers doing dialback can verify
its keys) that opens one authenticated S2S session to the receiver and pushes N messages
through it, then measures handshakes with ``gateway.net.probe``. Prints one JSON line.

    python -m bench.loadgen RECEIVER_DOMAIN RECIPIENT N HANDSHAKES PKI_DIR WORKDIR COUNTER [METHOD]
METHOD is ``sasl`` (TLS + SASL EXTERNAL, default) or ``dialback`` (TLS + dialback).
COUNTER says how to know the receiver processed the messages: ``c2s:HOST`` (a logged-in
user that counts them) or ``admin:SOCKET`` (the gateway's router counter).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.c2s_sink import C2SSink
from gateway.config.model import (
    DialbackSettings,
    DnsSettings,
    GatewayConfig,
    ListenAddress,
    PartnerPolicy,
    PartnerType,
    StoreSettings,
    TlsSettings,
)
from gateway.daemon import Gateway
from gateway.net.admin import query
from gateway.net.probe import probe
from gateway.policy.negotiation import Support
from gateway.sip.development import message

TIMEOUT = 300.0  # every run is bounded


def load_gateway(receiver: str, pki_dir: Path, work: Path, *, method: str = "sasl") -> Gateway:
    """The sending side: a gateway serving load.example on 127.0.0.5, its only partner the
    receiver, authenticated by SASL EXTERNAL (``method="sasl"``) or by dialback over TLS
    (``method="dialback"``: the receiver then verifies our key against 127.0.0.5:5269)."""
    if method == "sasl":
        policy = PartnerPolicy(receiver, PartnerType.FEDERATED, Support.REQUIRED,
                               Support.REQUIRED, False)
    else:
        policy = PartnerPolicy(receiver, PartnerType.FEDERATED, Support.REQUIRED,
                               Support.NOT_SUPPORTED, True)
    config = GatewayConfig(
        domains=("load.example",), partners=(policy,),
        listen=(ListenAddress("127.0.0.5", 5269),),
        tls=TlsSettings(pki_dir / "load.example.crt", pki_dir / "load.example.key",
                        ca_file=pki_dir / "ca.crt", use_system_cas=False),
        dialback=DialbackSettings("bench"), dns=DnsSettings(("127.0.0.53",), 3.0),
        store=StoreSettings(work / "loadgen.sqlite3"), admin_socket=work / "loadgen.sock")
    return Gateway(config)


def admin_counter(socket_path: str):
    """How many stanzas the receiving gateway's router has delivered to its backend."""
    def received() -> int:
        return int(query(Path(socket_path), "status")["router"]["delivered"])
    return received


async def warm_up(gateway: Gateway, sender: str, recipient: str,
                  received: Callable[[], int]) -> None:
    """Send one message and wait until the receiver counted it: the S2S session is then
    established and authenticated, so what follows measures only the load."""
    assert gateway.s2s is not None
    gateway.s2s.send(message(sender, recipient, "warm-up"))
    deadline = time.monotonic() + 30
    while received() < 1:
        if time.monotonic() > deadline:
            raise TimeoutError(f"warm-up message to {recipient} never arrived")
        await asyncio.sleep(0.01)


async def main() -> None:
    receiver, recipient, total, handshakes, pki, workdir, counter = sys.argv[1:8]
    method = sys.argv[8] if len(sys.argv) > 8 else "sasl"
    n, k = int(total), int(handshakes)
    gateway = load_gateway(receiver, Path(pki), Path(workdir), method=method)
    await gateway.start()
    assert gateway.s2s is not None
    sink = None
    try:
        if counter.startswith("c2s:"):
            sink = C2SSink(counter[4:], 5222, receiver, "user", "pw")
            await sink.connect()

            def received() -> int:
                return sink.count
        else:
            received = admin_counter(counter[len("admin:"):])

        sender = "load@load.example/bench"
        await warm_up(gateway, sender, recipient, received)
        base = received()
        stanzas = [message(sender, recipient, f"benchmark message {i:06d} with some text")
                   for i in range(n)]
        started = time.perf_counter()
        deadline = time.monotonic() + TIMEOUT
        for index in range(0, n, 500):
            for stanza in stanzas[index:index + 500]:
                gateway.s2s.send(stanza)
            await asyncio.sleep(0)  # let the batch flush
            session = gateway.s2s.sessions[("load.example", receiver)]
            conn = session.connection
            while conn is not None and conn.transport is not None and \
                    conn.transport.get_write_buffer_size() > 4 * 1024 * 1024:
                await asyncio.sleep(0.001)  # the receiver's TCP window is full
        while received() - base < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"receiver processed {received() - base} of {n}")
            await asyncio.sleep(0.002 if counter.startswith("c2s:") else 0.02)
        elapsed = time.perf_counter() - started
        latencies = []
        for _ in range(k):
            t0 = time.perf_counter()
            report = await probe(gateway.s2s, "load.example", receiver, timeout=20)
            if not report.ok:
                raise RuntimeError(f"handshake failed: {report.verdict}")
            latencies.append(time.perf_counter() - t0)
        latencies.sort()
        print(json.dumps({
            "receiver": receiver, "messages": n, "seconds": elapsed,
            "messages_per_second": n / elapsed, "handshakes": k,
            "handshake_p50_ms": 1000 * statistics.median(latencies) if latencies else None,
            "handshake_p99_ms": 1000 * latencies[min(len(latencies) - 1,
                                                     int(0.99 * len(latencies)))]
            if latencies else None,
            "method": report.method if latencies else "",
        }))
    finally:
        if sink is not None:
            await sink.close()
        await gateway.stop()


if __name__ == "__main__":
    asyncio.run(main())
