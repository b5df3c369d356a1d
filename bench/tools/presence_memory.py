"""What one SIP watcher of an XMPP contact costs the gateway in memory.

    python -m bench.tools.presence_memory [N]        # prints one JSON object (N: 5,000)

A real :class:`gateway.sip.backend.SipBackend` on loopback and a SIP user agent in the
proxy's place: N phones (p00000@sip.example …) each subscribe to an XMPP contact of their
own, every contact approves and sends one presence with a status note, and every NOTIFY
is answered. Then the notifier's state is measured as the deep size of
``backend.notifying`` (every object reachable from it: the per-watcher views, their
dialogs, the presence kept for each watcher, the indexes), excluding what it shares with
the rest of the gateway (the SIP endpoint, the served domains, the callback toward XMPP,
the store). ``bytes_per_watcher`` is that size over N.

The SIP transaction layer's memory (answered requests kept 32 s for retransmissions) is
not part of a watcher's state and is not counted; the deep size does not reach it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from collections.abc import Callable
from typing import Any
from xml.etree.ElementTree import Element, SubElement

from gateway.sip.backend import SipBackend
from gateway.sip.development import presence
from testbed.sip_ua import SipUserAgent

DOMAIN = "sip.example"


def deep_size(root: object, exclude: set[int]) -> int:
    """Bytes of every object reachable from ``root``, each counted once, not following
    the objects in ``exclude`` (nor classes, modules, functions)."""
    seen = set(exclude)
    stack = [root]
    total = 0
    skip = (type, type(sys), type(deep_size), type(len))
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


class CountingRouter:
    """Stands where the router is (a :class:`gateway.contracts.RouterForBackend`): counts
    what goes toward XMPP, keeps nothing, decides at once."""

    def __init__(self) -> None:
        self.count = 0

    def submit_local(self, stanza: Element, on_decided: Callable[[], None] | None = None
                     ) -> None:
        self.count += 1
        if on_decided is not None:
            on_decided()

    async def from_local(self, stanza: Element) -> None:
        self.count += 1

    def xmpp_saturated(self, domain: str) -> bool:
        return False


def subscribe_request(ua: SipUserAgent, index: int) -> Any:
    contact = f"sip:contact{index:05d}@xmpp.example"
    request = ua._new("SUBSCRIBE", contact, contact)
    request.set("from", f"<sip:p{index:05d}@{DOMAIN}>;tag=t{index:05d}")
    request.add("event", "presence")
    request.add("accept", "application/pidf+xml")
    request.add("expires", "3600")
    return request


async def measure(n: int) -> dict[str, Any]:
    ua = await SipUserAgent("proxy", DOMAIN, ("127.0.0.1", 9)).start()
    backend = SipBackend([DOMAIN], proxy=("127.0.0.1", ua.port), local=("127.0.0.1", 0),
                         max_in_flight=512)
    sink = CountingRouter()
    await backend.start(sink)
    ua.proxy = backend.transport.local
    try:
        notifier = backend.notifying
        shared = {id(getattr(notifier, name, None))
                  for name in ("endpoint", "served", "to_xmpp", "store")} | {id(backend)}
        empty = deep_size(notifier, shared)
        window = asyncio.Semaphore(200)

        async def one(index: int) -> None:
            async with window:
                answer = await ua.request(subscribe_request(ua, index), timeout=30)
                assert answer.status < 300, answer

        await asyncio.gather(*(one(index) for index in range(n)))
        for index in range(n):
            contact, watcher = f"contact{index:05d}@xmpp.example", f"p{index:05d}@{DOMAIN}"
            await backend.deliver(presence(contact, watcher, "subscribed"))
            available = presence(f"{contact}/laptop", watcher)
            SubElement(available, "{jabber:server}status").text = "at my desk, back at 3"
            await backend.deliver(available)
        async with asyncio.timeout(60):  # every NOTIFY answered: nothing in flight
            while backend.endpoint.in_flight or backend.endpoint.backlog:
                await asyncio.sleep(0.05)
        gc.collect()
        assert len(notifier.notifiers) == n
        total = deep_size(notifier, shared) - empty
        return {"watchers": n, "notifier_bytes": total,
                "bytes_per_watcher": round(total / n),
                "stanzas_toward_xmpp": sink.count}
    finally:
        await backend.stop(grace=0.5)
        await ua.close()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    print(json.dumps(asyncio.run(measure(n))))


if __name__ == "__main__":
    main()
