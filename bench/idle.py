"""Idle-session memory: open authenticated S2S sessions from distinct domains
(d00001.load.example …, one wildcard certificate, SASL EXTERNAL) to the receiver in steps
and keep them idle. Run inside the benchmark namespace.

    python -m bench.idle RECEIVER RECIPIENT COUNTS PKI_DIR WORKDIR

COUNTS is an increasing comma-separated list of session totals (e.g. 1000,5000,10000).
For each, the sessions are opened up to that total, then one JSON line is printed
(``{"sessions": n, "seconds_to_open": s}``) and a line is awaited on stdin, so that the
caller can let the receiver settle and read its memory; after the last count (or an empty
stdin) all sessions are closed. If sessions cannot be opened, the JSON line is
``{"sessions": opened, "wanted": n, "error": "..."}`` with the receiver's refusal and the
program ends with status 1: a caller must not take a short count for the asked one.
"""

from __future__ import annotations

import asyncio
import json
import os
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
    LoggingSettings,
    PartnerPolicy,
    PartnerType,
    StoreSettings,
    TlsSettings,
)
from gateway.daemon import Gateway
from gateway.net.fdlimit import ensure_fd_limit
from gateway.policy.negotiation import Support

# Seconds allowed per step: a base plus a budget per session to open.
TIMEOUT_BASE, TIMEOUT_PER_SESSION = 60.0, 0.05
CONCURRENCY = 25  # sessions being negotiated at once
# The key exchange offered: X25519, which is what Prosody 0.12 and ejabberd 23.01 on
# Debian 12's OpenSSL 3.0 negotiate, so that all three receivers keep the same key share
# per session (the gateway would otherwise pick X25519MLKEM768, about 8 KiB more; see
# docs/performance.md). IDLE_GROUPS=default in the environment offers OpenSSL's default.
GROUPS: tuple[str, ...] = (() if os.environ.get("IDLE_GROUPS") == "default"
                           else tuple(os.environ.get("IDLE_GROUPS", "X25519").split(":")))


class OpenFailed(Exception):
    """Fewer sessions than asked are open; the message says why."""


async def main() -> int:
    receiver, recipient, counts_arg, pki, workdir = sys.argv[1:6]
    counts = [int(c) for c in counts_arg.split(",")]
    if counts != sorted(counts) or counts[0] <= 0:
        raise SystemExit(f"COUNTS must be increasing positive totals, not {counts_arg}")
    k = counts[-1]
    # One socket per session in this process too; as the daemon does (gateway.net.fdlimit).
    limit = ensure_fd_limit(k)
    if not limit.sufficient:
        raise SystemExit(f"open-files limit {limit.now} is below the {limit.wanted} needed "
                         f"for {k} sessions (raise the hard limit: ulimit -Hn)")
    domains = tuple(f"d{i:05d}.load.example" for i in range(k))
    pki_dir = Path(pki)
    config = GatewayConfig(
        domains=domains,
        partners=(PartnerPolicy(receiver, PartnerType.FEDERATED, Support.REQUIRED,
                                Support.REQUIRED, False),),
        listen=(ListenAddress("127.0.0.5", 5270),),
        tls=TlsSettings(pki_dir / "wild.load.example.crt", pki_dir / "wild.load.example.key",
                        ca_file=pki_dir / "ca.crt", use_system_cas=False, groups=GROUPS),
        dialback=DialbackSettings("bench"), dns=DnsSettings(("127.0.0.53",), 3.0),
        store=StoreSettings(Path(workdir) / "idle.sqlite3"),
        admin_socket=Path(workdir) / "idle.sock", logging=LoggingSettings(level="warning"),
        limits=Limits(idle_timeout=3600, keepalive_interval=3600, max_queue_per_domain=10,
                      negotiation_timeout=120, connect_timeout=30,
                      max_connections=k + 100),
    )
    gateway = Gateway(config)
    await gateway.start()
    assert gateway.s2s is not None
    opened = 0
    try:
        for wanted in counts:
            started = time.monotonic()
            timeout = TIMEOUT_BASE + TIMEOUT_PER_SESSION * (wanted - opened)
            try:
                for index in range(opened, wanted):
                    # An error-type message: delivered or dropped by the receiver, never
                    # answered, so only our outbound sessions exist (RFC 6120 §8.3.1).
                    stanza = Element("{jabber:server}message", {
                        "from": f"idle@{domains[index]}", "to": recipient, "type": "error"})
                    gateway.s2s.send(stanza)
                    if index % CONCURRENCY == CONCURRENCY - 1:
                        await _wait_open(gateway, receiver, index + 1, started, timeout)
                await _wait_open(gateway, receiver, wanted, started, timeout)
            except OpenFailed as exc:
                print(json.dumps({"sessions": _open_count(gateway, receiver), "wanted": wanted,
                                  "error": str(exc)}), flush=True)
                return 1
            opened = wanted
            print(json.dumps({"sessions": opened,
                              "seconds_to_open": round(time.monotonic() - started, 2)}),
                  flush=True)
            line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            if not line.strip():
                break
    finally:
        await gateway.stop()
    return 0


def _open_count(gateway: Gateway, receiver: str) -> int:
    assert gateway.s2s is not None
    return sum(1 for s in gateway.s2s.sessions.values()
               if s.remote == receiver and s.connection is not None
               and s.connection.stream.pairs)


async def _wait_open(gateway: Gateway, receiver: str, wanted: int, started: float,
                     timeout: float) -> None:
    assert gateway.s2s is not None
    while True:
        open_sessions = _open_count(gateway, receiver)
        failed = sum(s.failures for s in gateway.s2s.sessions.values())
        if failed:
            reasons = {s.last_failure for s in gateway.s2s.sessions.values() if s.failures}
            raise OpenFailed(f"{failed} sessions failed with {open_sessions} open: "
                             f"{sorted(reasons)[:3]}")
        if open_sessions >= wanted:
            return
        if time.monotonic() - started > timeout:
            raise OpenFailed(f"only {open_sessions} of {wanted} sessions open after "
                             f"{timeout:.0f} s")
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
