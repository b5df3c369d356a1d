"""A minimal XMPP client that logs in and counts the messages it receives (and, for the
relay benchmark, writes messages as fast as the server accepts them).

Why not slixmpp: the benchmark needs an *online local user* on Prosody/ejabberd that can
absorb 100,000 messages without becoming the bottleneck; slixmpp builds a stanza object
per message. This sink speaks just enough RFC 6120 c2s (plain TCP, SASL PLAIN, bind,
initial presence) and then counts ``<message`` start tags in the raw bytes, which is all
the measurement needs. Test servers are configured to allow plaintext c2s on loopback.
Start tags are counted by kind and type (``counts[("message", "error")]``: the stanza
errors a writer gets back), and the senders of presence stanzas are kept by type (the
presence storm counts distinct contacts).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections import Counter

_START_TAG = re.compile(rb"<(message|presence)(?=[\s>/])([^>]*)")
_TYPE = re.compile(rb"""\stype=['"]([^'"]*)['"]""")
_FROM = re.compile(rb"""\sfrom=['"]([^'"/]*)""")
_ID = re.compile(rb"""\sid=['"]([^'"]*)['"]""")
_INDEX = re.compile(rb"<body>\d+ (\d+)")  # bodies "<monotonic_ns> <index> …" (bench/relay*)


class C2SSink:
    def __init__(self, host: str, port: int, domain: str, user: str, password: str,
                 resource: str = "bench") -> None:
        self.host, self.port, self.domain, self.resource = host, port, domain, resource
        self.user, self.password = user, password
        self.count = 0  # <message> start tags of any type
        self.counts: Counter[tuple[str, str]] = Counter()  # (tag, type) -> how many
        self.presence_from: dict[str, set[str]] = {}  # presence type -> bare senders
        self.error_ids: set[str] = set()  # ids of the message errors that came back
        self.indices: set[int] = set()  # benchmark message indices seen in bodies
        self.first_at: float | None = None  # time.monotonic() of the first/last message
        self.last_at: float | None = None
        self.max_gap_s = 0.0  # longest pause between two arrivals (a failover's stall)
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

    async def connect(self, *, roster: bool = False) -> None:
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
            f"<resource>{self.resource}</resource></bind></iq>"
        )
        await self._expect(b"bind1")
        self._send(
            "<iq type='set' id='sess1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>"
        )
        await self._expect(b"sess1")
        if roster:  # an "interested resource" gets subscription requests (RFC 6121 §2.1.6)
            self._send("<iq type='get' id='roster1'><query xmlns='jabber:iq:roster'/></iq>")
        self._send("<presence/>")
        self._task = asyncio.get_running_loop().create_task(self._count())

    async def _count(self) -> None:
        assert self._reader is not None
        while True:
            chunk = await self._reader.read(262144)
            if not chunk:
                return
            # Only whole tags and texts are counted: the bytes from the last "<" on wait
            # for the next read ("<" cannot occur inside a tag or escaped text, XML 1.0
            # §2.4, §3.1); a stanza is complete before its end tag starts. The last tag of
            # all (a self-closing presence) is counted by flush().
            data = self._tail + chunk
            cut = data.rfind(b"<")
            data, self._tail = (data[:cut], data[cut:]) if cut >= 0 else (data, b"")
            self._arrived(data)

    def flush(self) -> None:
        """Count what the last read left waiting (the stream has gone quiet)."""
        data, self._tail = self._tail, b""
        self._arrived(data)

    def _arrived(self, data: bytes) -> None:
        self.indices.update(map(int, _INDEX.findall(data)))  # a body may follow its tag
        found = self._tally(data)
        if found:
            now = time.monotonic()
            if self.first_at is None:
                self.first_at = now
            elif self.last_at is not None:
                self.max_gap_s = max(self.max_gap_s, now - self.last_at)
            self.last_at = now
            self.count += found

    def _tally(self, data: bytes) -> int:
        """Count the start tags in ``data``; return how many were messages."""
        messages = 0
        for tag, attributes in _START_TAG.findall(data):
            kind = _TYPE.search(attributes)
            stanza_type = kind.group(1).decode() if kind else ""
            if tag == b"message":
                messages += 1
                self.counts[("message", stanza_type)] += 1
                if stanza_type == "error":
                    found_id = _ID.search(attributes)
                    self.error_ids.add(found_id.group(1).decode() if found_id else "")
                continue
            self.counts[("presence", stanza_type)] += 1
            sender = _FROM.search(attributes)
            if sender:
                self.presence_from.setdefault(stanza_type, set()).add(sender.group(1).decode())
        return messages

    def write(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)

    async def drain(self) -> None:
        """Wait while the server has not read what was written (TCP flow control)."""
        assert self._writer is not None
        await self._writer.drain()

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
