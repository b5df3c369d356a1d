"""Where the SIP half spends its CPU: the router and the SIP backend in this process,
a fast SIP peer (bench/sip_peer.py) in another, on loopback.

    python -m bench.sip_profile to-sip N      # XMPP→SIP: N messages into the router
    python -m bench.sip_profile from-sip N    # SIP→XMPP: N MESSAGEs from the peer
    add --profile for a cProfile listing of the hottest functions

The S2S service is replaced by a counter (``CountingS2S``): this measures the SIP half
alone, which is what the S2S half's figure (bench/profile_receiver.py) is compared with.
Prints the CPU time of this process per message (time.process_time), the wall rate, and
what the router and the backend counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import io
import json
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.etree.ElementTree import Element, SubElement

from gateway.config.model import GatewayConfig, PartnerPolicy, PartnerType, StoreSettings
from gateway.router import Router
from gateway.sip.backend import SipBackend
from gateway.store import AsyncAuthorizationStore, open_authorization_store
from tests.support.dnsmasq import free_port

NS = "jabber:server"
ROOT = Path(__file__).resolve().parents[1]


class CountingS2S:
    """Stands where the S2S service is: counts what the router sends toward XMPP."""

    def __init__(self) -> None:
        self.sent = 0
        self.errors = 0
        self.done = asyncio.Event()
        self.wanted = 0

    def send(self, stanza: Element) -> None:
        if stanza.get("type") == "error":
            self.errors += 1
        else:
            self.sent += 1
        if self.sent + self.errors >= self.wanted:
            self.done.set()

    def set_reading_paused(self, paused: bool) -> None:
        pass

    def congested(self, domain: str) -> bool:
        return False


def _peer(*args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-m", "bench.sip_peer", *args],
                               stdout=subprocess.PIPE, text=True, cwd=ROOT)
    return process


async def run(direction: str, n: int, profiler: cProfile.Profile | None) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="sip-profile-"))
    config = GatewayConfig(domains=("gw.example",),
                           partners=(PartnerPolicy("a.example", PartnerType.FEDERATED),),
                           store=StoreSettings(workdir / "store.sqlite3"))
    store = AsyncAuthorizationStore(open_authorization_store(config.store))
    peer_port, local_port = free_port(), free_port()
    backend = SipBackend(["gw.example"], proxy=("127.0.0.1", peer_port),
                         local=("127.0.0.1", local_port))
    router = Router(config, backend, store)
    s2s = CountingS2S()
    router.s2s = s2s
    await router.start()
    result: dict = {"direction": direction, "messages": n}
    try:
        if direction == "to-sip":
            peer = _peer("answer", "127.0.0.1", str(peer_port), "120")
            assert peer.stdout is not None
            peer.stdout.readline()
            stanzas = []
            for i in range(n):
                stanza = Element(f"{{{NS}}}message", {"from": "alice@a.example/r",
                                                     "to": "bob@gw.example", "type": "chat",
                                                     "id": f"m{i}"})
                SubElement(stanza, f"{{{NS}}}body").text = f"message {i}"
                stanzas.append(stanza)
            cpu, wall = time.process_time(), time.perf_counter()
            if profiler:
                profiler.enable()
            paused = asyncio.Event()
            paused.set()
            router.on_pressure = lambda on: paused.clear() if on else paused.set()
            for i, stanza in enumerate(stanzas):
                await paused.wait()  # what the S2S reader does: stop reading under pressure
                router.from_xmpp(stanza, "a.example", "gw.example")
                if i % 100 == 99:
                    await asyncio.sleep(0)
            deadline = time.monotonic() + 120
            while (backend.sent < n or backend.layer.clients) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if profiler:
                profiler.disable()
            result.update(cpu_us=(time.process_time() - cpu) / n * 1e6,
                          rate=n / (time.perf_counter() - wall), sip_sent=backend.sent,
                          in_flight=len(backend.layer.clients), xmpp_errors=s2s.errors)
            peer.terminate()
            peer.wait(5)
        else:
            s2s.wanted = n
            cpu, wall = time.process_time(), time.perf_counter()
            if profiler:
                profiler.enable()
            sender_port = free_port()
            peer = _peer("send", "127.0.0.1", str(sender_port), "127.0.0.1", str(local_port),
                         str(n), "0", "120")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(s2s.done.wait(), 120)
            if profiler:
                profiler.disable()
            result.update(cpu_us=(time.process_time() - cpu) / n * 1e6,
                          rate=n / (time.perf_counter() - wall), xmpp_sent=s2s.sent,
                          xmpp_errors=s2s.errors)
            out, _ = await asyncio.to_thread(peer.communicate, timeout=130)
            result["peer"] = json.loads(out.strip().splitlines()[-1])
    finally:
        await router.stop()
        await store.aclose()
    return result


def main() -> int:
    direction, n = sys.argv[1], int(sys.argv[2])
    profiler = cProfile.Profile() if "--profile" in sys.argv else None
    print(json.dumps(asyncio.run(run(direction, n, profiler))))
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
