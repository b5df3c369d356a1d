"""Run a test's asyncio code *inside* the interop network namespace, in-process.

A network namespace is per thread on Linux (setns(2) with CLONE_NEWNET changes only the
calling thread), and a socket belongs to the namespace of the thread that created it. So
a worker thread that joins the namespace and then runs an event loop creates all its
sockets there: the SIP user agent and XMPP clients of a long conversation can be driven
step by step from the test, instead of through one scripted subprocess per step.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import slixmpp

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def run_in_namespace(name: str, scenario: Callable[[], Awaitable[T]],
                     timeout: float = 120.0) -> T:
    """Run ``scenario()`` on a fresh event loop in a thread inside namespace ``name``."""
    outcome: dict[str, Any] = {}

    def worker() -> None:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                outcome["error"] = OSError(ctypes.get_errno(), "setns failed")
                return
        finally:
            os.close(fd)
        try:
            outcome["result"] = asyncio.run(asyncio.wait_for(scenario(), timeout))
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=worker, name=f"netns-{name}")
    thread.start()
    thread.join(timeout + 30)
    if thread.is_alive():
        raise TimeoutError(f"scenario in namespace {name} did not finish")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


class XmppUser:
    """A slixmpp client session on Prosody's c2s port (plain, test-only accounts)."""

    def __init__(self, jid: str, host: str, password: str = "pw") -> None:
        self.client = slixmpp.ClientXMPP(jid, password)
        self.client.enable_starttls = False
        self.client.enable_direct_tls = False
        self.client.enable_plaintext = True
        self.client.plugin["feature_mechanisms"].unencrypted_plain = True
        self.host = host
        self.messages: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        self.presences: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        self.client.add_event_handler("message", self._on_message)
        self.client.add_event_handler("presence", self._on_presence)

    def _on_message(self, stanza: Any) -> None:
        self.messages.put_nowait({
            "from": str(stanza["from"]), "type": stanza["type"], "body": stanza["body"],
            "error": stanza["error"]["condition"] if stanza["type"] == "error" else ""})

    def _on_presence(self, stanza: Any) -> None:
        self.presences.put_nowait({
            "from": str(stanza["from"]), "type": stanza["type"], "show": stanza["show"],
            "status": stanza["status"]})

    async def start(self) -> XmppUser:
        ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.client.add_event_handler(
            "session_start", lambda _: ready.done() or ready.set_result(True))
        self.client.connect(self.host, 5222)
        await asyncio.wait_for(ready, 10)
        self.client.send_presence()
        await self.client.get_roster()
        return self

    async def stop(self) -> None:
        self.client.disconnect()
        await asyncio.sleep(0.2)

    async def next_message(self, timeout: float = 10.0) -> dict[str, str]:
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def presence_where(self, predicate: Callable[[dict[str, str]], bool],
                             timeout: float = 10.0) -> dict[str, str]:
        """The next presence matching ``predicate`` (others are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                presence = await self.presences.get()
                if predicate(presence):
                    return presence
