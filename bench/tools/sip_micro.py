"""The SIP half's own per-message work, in process and without sockets:

    python -m bench.tools.sip_micro from-sip N [--profile]   # SIP MESSAGE datagram -> S2S bytes
    python -m bench.tools.sip_micro to-sip N [--profile]     # XMPP stanza -> MESSAGE, 200 back

``from-sip`` hands N MESSAGE datagrams (as Kamailio relays them: two Vias, a From tag, a
text body) to ``SipEndpoint._on_bytes`` exactly as the UDP reader does; the router
decides each at once and the stanza is serialised as the S2S stream would write it, and
the 202 is built. ``to-sip`` gives N stanzas to ``SipBackend.deliver`` and answers each
MESSAGE 200 through ``_on_bytes`` (the proxy's answers are made beforehand, outside the
measured time). Sockets, TLS and the event loop's own cost are left out: this is the
Python work per message, the part that profiling and optimising act on. The relay
benchmark (bench/relay.py) measures the whole process with Prosody and Kamailio.
Prints CPU µs per message (time.process_time).
"""

from __future__ import annotations

import asyncio
import cProfile
import sys
import tempfile
import time
from pathlib import Path
from xml.etree.ElementTree import Element, SubElement

from bench.tools.in_process import hottest
from gateway.config.model import GatewayConfig, PartnerPolicy, PartnerType, StoreSettings
from gateway.contracts import OnSent
from gateway.router import Router
from gateway.sip.backend import SipBackend
from gateway.sip.message import SipRequest, make_response, parse_message
from gateway.store import AsyncAuthorizationStore, open_authorization_store
from gateway.xmpp.xml import serialize

PROXY = ("127.0.0.1", 9)
FLOW = ("udp", PROXY)


class SerialisingS2S:
    """Stands where the S2S service is: serialises what the router sends, as a stream."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, stanza: Element, on_sent: OnSent = None) -> None:
        serialize(stanza)
        self.sent += 1
        if on_sent is not None:
            on_sent(True)  # as plain S2S: written is all it knows

    def set_reading_paused(self, paused: bool) -> None:
        pass

    def queues(self) -> dict[str, int]:
        return {}


def relayed_message(index: int) -> bytes:
    """A MESSAGE from a SIP user toward XMPP as Kamailio relays it to the gateway."""
    body = f"{time.monotonic_ns()} {index}".encode()
    return (f"MESSAGE sip:user@a.example SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.4:5070;branch=z9hG4bKkam{index}.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.9:40000;rport=40000;branch=z9hG4bKua{index}"
            ";received=127.0.0.9\r\n"
            "Max-Forwards: 69\r\n"
            f"From: <sip:sipwriter@gw.example>;tag=ua{index}\r\n"
            "To: <sip:user@a.example>\r\n"
            f"Call-ID: ua-{index}@127.0.0.9\r\n"
            "CSeq: 1 MESSAGE\r\nContent-Type: text/plain;charset=UTF-8\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def measure(direction: str, n: int, profiler: cProfile.Profile | None) -> float:
    workdir = Path(tempfile.mkdtemp(prefix="sip-micro-"))
    config = GatewayConfig(domains=("gw.example",),
                           partners=(PartnerPolicy("a.example", PartnerType.FEDERATED),),
                           store=StoreSettings(workdir / "store.sqlite3"))
    store = AsyncAuthorizationStore(open_authorization_store(config.store))
    backend = SipBackend(["gw.example"], proxy=PROXY, local=("127.0.0.1", 0))
    router = Router(config, backend, store)
    s2s = SerialisingS2S()
    await backend.start(router, watches=store)
    await router.start(s2s)
    sent: list[bytes] = []
    backend.transport.send = lambda flow, data: sent.append(data)  # type: ignore[method-assign]
    endpoint = backend.endpoint
    try:
        if direction == "from-sip":
            datagrams = [relayed_message(index) for index in range(n + 100)]
            for data in datagrams[:100]:  # the user's switch snapshot loads meanwhile
                endpoint._on_bytes(data, FLOW, PROXY)
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.5)
            s2s.sent = 0
            cpu = time.process_time()
            if profiler is not None:
                profiler.enable()
            for index, data in enumerate(datagrams[100:]):
                endpoint._on_bytes(data, FLOW, PROXY)
                if index % 200 == 199:
                    sent.clear()
                    await asyncio.sleep(0)  # what the event loop does between batches
            if profiler is not None:
                profiler.disable()
            cpu = time.process_time() - cpu
            if s2s.sent != n:
                raise RuntimeError(f"{s2s.sent} of {n} messages reached the S2S side")
        else:
            endpoint.max_in_flight = n + 1
            stanzas = []
            for index in range(n):
                stanza = Element("{jabber:server}message", {
                    "from": "alice@a.example/r", "to": "bob@gw.example", "type": "chat",
                    "id": f"m{index}"})
                SubElement(stanza, "{jabber:server}body").text = f"message {index}"
                stanzas.append(stanza)
            cpu = 0.0
            for start in range(0, n, 200):
                began = time.process_time()
                if profiler is not None:
                    profiler.enable()
                for stanza in stanzas[start:start + 200]:
                    await backend.deliver(stanza)
                if profiler is not None:
                    profiler.disable()
                cpu += time.process_time() - began
                requests = [parse_message(data) for data in sent]
                sent.clear()
                answers = [make_response(request, 200, to_tag="kam").serialize()
                           for request in requests
                           if isinstance(request, SipRequest)]
                began = time.process_time()
                if profiler is not None:
                    profiler.enable()
                for answer in answers:
                    endpoint._on_bytes(answer, FLOW, PROXY)
                if profiler is not None:
                    profiler.disable()
                cpu += time.process_time() - began
            if endpoint.layer.clients:
                raise RuntimeError(f"{len(endpoint.layer.clients)} MESSAGEs unanswered")
    finally:
        await router.stop()
        await backend.stop()
        await store.aclose()
    return cpu / n * 1e6


def main() -> int:
    direction, n = sys.argv[1], int(sys.argv[2])
    if direction not in ("from-sip", "to-sip"):
        raise SystemExit(__doc__)
    profiler = cProfile.Profile() if "--profile" in sys.argv else None
    print(f"{direction}: {asyncio.run(measure(direction, n, profiler)):.1f} µs CPU per message")
    if profiler is not None:
        print(hottest(profiler, 30))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
