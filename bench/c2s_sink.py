"""A minimal XMPP client that logs in and counts the messages it receives.

Why not slixmpp: the benchmark needs an *online local user* on Prosody/ejabberd that can
absorb 100,000 messages without becoming the bottleneck; slixmpp builds a stanza object
per message. This sink speaks just enough RFC 6120 c2s (plain TCP, SASL PLAIN, bind,
initial presence) and then counts ``<message`` start tags in the raw bytes, which is all
the measurement needs. Test servers are configured to allow plaintext c2s on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time

_MESSAGE = re.compile(rb"<message[\s>]")


class C2SSink:
    def __init__(self, host: str, port: int, domain: str, user: str, password: str) -> None:
        self.host, self.port, self.domain = host, port, domain
        self.user, self.password = user, password
        self.count = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._tail = b""

    async def _expect(self, pattern: bytes, timeout: float = 10.0) -> bytes:
        assert self._reader is not None
        buffer = b""
        deadline = time.monotonic() + timeout
        while pattern not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"c2s: no {pattern!r} in {buffer[-300:]!r}")
            chunk = await asyncio.wait_for(self._reader.read(65536), remaining)
            if not chunk:
                raise ConnectionError(f"c2s: closed while waiting for {pattern!r}: {buffer!r}")
            buffer += chunk
            if b"<failure" in buffer or b"stream:error" in buffer:
                raise ConnectionError(f"c2s: server refused: {buffer[-400:]!r}")
        return buffer

    def _send(self, data: str) -> None:
        assert self._writer is not None
        self._writer.write(data.encode())

    def _header(self) -> None:
        self._send(
            f"<?xml version='1.0'?><stream:stream to='{self.domain}' xmlns='jabber:client' "
            "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        )

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._header()
        await self._expect(b"</stream:features>")
        token = base64.b64encode(f"\0{self.user}\0{self.password}".encode()).decode()
        self._send(
            f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
        )
        await self._expect(b"<success")
        self._header()
        await self._expect(b"</stream:features>")
        self._send(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            "<resource>bench</resource></bind></iq>"
        )
        await self._expect(b"bind1")
        self._send(
            "<iq type='set' id='sess1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>"
        )
        await self._expect(b"sess1")
        self._send("<presence/>")
        self._task = asyncio.get_running_loop().create_task(self._count())

    async def _count(self) -> None:
        assert self._reader is not None
        while True:
            chunk = await self._reader.read(262144)
            if not chunk:
                return
            # Prepend the previous read's tail so a tag split across reads is counted
            # once: matches wholly inside the old tail were counted last time.
            old_tail = self._tail
            data = old_tail + chunk
            found = len(_MESSAGE.findall(data)) - len(_MESSAGE.findall(old_tail))
            self._tail = data[-16:]
            if found:
                now = time.perf_counter()
                if self.first_at is None:
                    self.first_at = now
                self.last_at = now
                self.count += found

    async def wait_for(self, total: int, timeout: float) -> float:
        """Wait until ``total`` messages arrived; return the arrival time of the last."""
        deadline = time.monotonic() + timeout
        while self.count < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"c2s sink got {self.count} of {total} messages")
            await asyncio.sleep(0.005)
        assert self.last_at is not None
        return self.last_at

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._writer is not None:
            self._writer.write(b"</stream:stream>")
            self._writer.close()
