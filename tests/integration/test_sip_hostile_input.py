"""What one SIP user (or anyone who reaches the SIP port) sends must never cost the
federation with a partner: every hostile request gets a precise answer (400 from the
trusted proxy, 403 from anyone else), a log line and nothing on stderr, and the next
ordinary message still arrives on the *same* S2S stream.

The gateway under test (b.example, ``sip.backend: sip``) runs as the operator runs it, an
``xmpp-gateway run`` process whose log goes to a file and whose stderr is captured on its
own (an exception escaping into an asyncio callback is printed there, not logged). Its
partner (a.example) is a second gateway in this process: a real S2S peer that parses what
it receives with expat, as Prosody and ejabberd do, and closes the stream on the first
byte that is not XML.

Addresses: 127.0.0.1 is the SIP proxy (the trusted source), 127.0.0.11 an outsider.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.daemon import Gateway
from gateway.sip.message import StreamDeframer
from testbed.dnsmasq import free_port
from testbed.namespace import stop_process
from testbed.pki import Pki
from tests.integration.test_sip_flow import SipPair

PROXY = "127.0.0.1"
OUTSIDER = "127.0.0.11"
CLI = [sys.executable, "-m", "gateway.cli.main"]
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.asyncio(loop_scope="module")


def sip_request(source: tuple[str, int], transport: str, *, body: bytes = b"hello",
                uri: str = "sip:carol@a.example", content_length: str | None = None,
                cseq: str = "1 MESSAGE", via_port: str | None = None,
                sender: str = "alice", domain: str = "b.example") -> bytes:
    """A MESSAGE as a phone behind the proxy sends it; each keyword spoils one field."""
    lines = [
        f"MESSAGE {uri} SIP/2.0",
        f"Via: SIP/2.0/{transport.upper()} {source[0]}:{via_port or source[1]};"
        f"branch=z9hG4bK{secrets.token_hex(8)};rport",
        "Max-Forwards: 70",
        f"From: <sip:{sender}@{domain}>;tag={secrets.token_hex(4)}",
        "To: <sip:carol@a.example>",
        f"Call-ID: {secrets.token_hex(8)}@{source[0]}",
        f"CSeq: {cseq}",
        "Content-Type: text/plain;charset=UTF-8",
        f"Content-Length: {len(body) if content_length is None else content_length}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def status_line(data: bytes) -> tuple[int, str]:
    """(status, reason phrase) of a response: from its first line only, since an answer
    to a broken request copies the broken field (RFC 3261 §8.2.6.2)."""
    version, status, reason = data.split(b"\r\n", 1)[0].decode().split(" ", 2)
    assert version == "SIP/2.0", data[:80]
    return int(status), reason


def status_of(data: bytes) -> int:
    return status_line(data)[0]


class UdpSender:
    """A UDP socket bound to one source address: the proxy's, or an outsider's."""

    def __init__(self, source: str, target: tuple[str, int]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.sock.setblocking(False)
        self.source = self.sock.getsockname()
        self.target = target

    async def exchange(self, data: bytes, listen: float = 1.0) -> list[bytes]:
        """Send one datagram; every datagram received until a final answer (and
        ``listen`` seconds at most)."""
        loop = asyncio.get_running_loop()
        self.sock.sendto(data, self.target)
        answers: list[bytes] = []
        deadline = loop.time() + listen
        while loop.time() < deadline:
            try:
                answer = await asyncio.wait_for(loop.sock_recv(self.sock, 65535),
                                                deadline - loop.time())
            except TimeoutError:
                break
            answers.append(answer)
            if status_of(answer) >= 200:
                break
        return answers

    def close(self) -> None:
        self.sock.close()


class TcpSender:
    """A connection from one source address; reopened when the gateway closed it."""

    def __init__(self, source: str, target: tuple[str, int]) -> None:
        self.source_host, self.target = source, target
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.deframer = StreamDeframer()
        self.source: tuple[str, int] = (source, 0)
        self.closed_by_peer = False

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            *self.target, local_addr=(self.source_host, 0))
        self.source = self.writer.get_extra_info("sockname")[:2]
        self.deframer = StreamDeframer()
        self.closed_by_peer = False

    async def exchange(self, data: bytes, listen: float = 3.0) -> list[bytes]:
        if self.writer is None or self.closed_by_peer:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        self.writer.write(data)
        answers: list[bytes] = []
        try:
            async with asyncio.timeout(listen):
                while not answers or status_of(answers[-1]) < 200:
                    chunk = await self.reader.read(65536)
                    if not chunk:
                        self.closed_by_peer = True
                        break
                    answers += self.deframer.feed(chunk)
        except TimeoutError:
            pass
        except ConnectionError:
            self.closed_by_peer = True
        return answers

    async def closed(self, within: float = 2.0) -> bool:
        """Whether the gateway closes this connection within ``within`` seconds."""
        if self.closed_by_peer:
            return True
        assert self.reader is not None
        try:
            async with asyncio.timeout(within):
                self.closed_by_peer = not await self.reader.read(65536)
        except TimeoutError:
            pass
        except ConnectionError:
            self.closed_by_peer = True
        return self.closed_by_peer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class GatewayProcess:
    """``xmpp-gateway run`` for b.example: JSON log file, stderr in a file of its own."""

    directory: Path
    process: subprocess.Popen[bytes]
    sip: tuple[str, int]
    log_offset: int = 0
    seen: list[dict] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.directory / "gateway.log"

    @property
    def stderr(self) -> str:
        return (self.directory / "stderr.txt").read_text(errors="replace")

    def new_log_lines(self) -> list[dict]:
        data = self.log_path.read_bytes()
        fresh, self.log_offset = data[self.log_offset:], len(data)
        return [json.loads(line) for line in fresh.decode().splitlines() if line.strip()]

    def stop(self) -> None:
        stop_process(self.process)


def start_gateway_b(directory: Path, pki: Pki, dns: str, port: int,
                    transport: str) -> GatewayProcess:
    tls = pki.tls_settings("b.example")
    sip_port = free_port(PROXY, socket.SOCK_DGRAM if transport == "udp" else
                         socket.SOCK_STREAM)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "gateway.yaml").write_text("\n".join([
        "domains: [b.example]",
        f"listen: [{{host: 127.0.0.1, port: {port}}}]",
        f"tls: {{certificate: {tls.certificate}, key: {tls.key}, ca_file: {tls.ca_file}, "
        "use_system_cas: false}",
        "dialback: {secret: secret-b.example}",
        f"dns: {{nameservers: ['{dns}'], timeout: 2}}",
        "store: {path: store.sqlite3}",
        "admin_socket: admin.sock",
        "logging: {file: gateway.log, format: json}",
        "partners:",
        "  - {domain: a.example, type: federated, tls: optional, sasl: optional, "
        "dialback: true}",
        f"sip: {{backend: sip, transport: {transport}, proxy_host: {PROXY}, proxy_port: 9, "
        f"local_host: {PROXY}, local_port: {sip_port}}}",
    ]) + "\n")
    stderr = (directory / "stderr.txt").open("wb")
    process = subprocess.Popen([*CLI, "-c", str(directory / "gateway.yaml"), "run"],
                               stdout=stderr, stderr=stderr, cwd=ROOT)
    stderr.close()
    deadline = time.monotonic() + 15
    while not (directory / "admin.sock").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError((directory / "stderr.txt").read_text()
                                 + (directory / "gateway.log").read_text())
        time.sleep(0.05)
    return GatewayProcess(directory, process, (PROXY, sip_port))


@dataclass
class Federation:
    """Partner a.example in-process, gateway b.example as a process, SIP senders."""

    a: Gateway
    b: GatewayProcess
    transport: str
    proxy: UdpSender | TcpSender
    outsider: UdpSender | TcpSender
    sent: int = 0

    def sender(self, trusted: bool) -> UdpSender | TcpSender:
        return self.proxy if trusted else self.outsider

    def inbound_streams(self) -> list[str]:
        """Stream ids of a.example's open inbound streams from b.example."""
        return [row["stream_id"] for row in self.a.status()["sessions"]
                if row["direction"] == "inbound" and row["peer_domain"] == "b.example"
                and row["phase"] == "open"]

    async def ordinary_message(self) -> None:
        """A normal message from the proxy: answered 202 and delivered to a.example."""
        self.sent += 1
        text = f"ordinary {self.sent}"
        sender = self.proxy
        if isinstance(sender, TcpSender) and sender.writer is None:
            await sender.connect()
        answers = await sender.exchange(sip_request(sender.source, self.transport,
                                                    body=text.encode()), listen=5.0)
        assert [status_of(a) for a in answers][-1:] == [202], answers
        async with asyncio.timeout(10):
            while not any(s.findtext("{jabber:server}body") == text
                          for s in self.a.backend.delivered):
                await asyncio.sleep(0.02)


class Federations:
    """One federation per transport for the module, set up again only when a case left
    it broken (the partner's stream gone, the process dead): each case is its own test,
    which on a gateway without the defences fails on its own defect, not its
    predecessor's."""

    def __init__(self, root: Path, pki: Pki, dns: tuple[str, dict[str, int]]) -> None:
        self.root, self.pki, self.dns = root, pki, dns
        self.current: dict[str, tuple[Federation, SipPair]] = {}
        self.started = 0

    async def get(self, transport: str) -> Federation:
        for other in [t for t in self.current if t != transport]:  # they share the ports
            await self.stop(other)
        held = self.current.get(transport)
        if held is not None:
            fed, _pair = held
            if fed.b.process.poll() is None and len(fed.inbound_streams()) == 1:
                return fed
            await self.stop(transport)
        return await self.start(transport)

    async def start(self, transport: str) -> Federation:
        dns, ports = self.dns
        self.started += 1
        directory = self.root / f"{transport}-{self.started}"
        pair = SipPair(directory, self.pki, dns, ports)
        a = await pair.start_a()
        try:
            b = await asyncio.to_thread(start_gateway_b, directory / "b", self.pki, dns,
                                        ports["b.example"], transport)
        except BaseException:
            await pair.stop()
            raise
        kind = UdpSender if transport == "udp" else TcpSender
        fed = Federation(a, b, transport, kind(PROXY, b.sip), kind(OUTSIDER, b.sip))
        self.current[transport] = (fed, pair)
        await fed.ordinary_message()  # opens the S2S stream
        return fed

    async def stop(self, transport: str) -> None:
        fed, pair = self.current.pop(transport)
        fed.proxy.close()
        fed.outsider.close()
        await asyncio.to_thread(fed.b.stop)
        await pair.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def federations(tmp_path_factory: pytest.TempPathFactory, pki: Pki,
                      dns_for_pair: tuple[str, dict[str, int]]) -> AsyncIterator[Federations]:
    held = Federations(tmp_path_factory.mktemp("hostile"), pki, dns_for_pair)
    try:
        yield held
    finally:
        for transport in list(held.current):
            await held.stop(transport)


# (name, spoiled request fields, sent by the proxy?) → the answer the gateway must give
HOSTILE = [
    ("NUL in the body", dict(body=b"a\x00b"), True),
    ("U+0001 in the body", dict(body=b"a\x01b"), True),
    ("ESC from a terminal paste", dict(body=b"\x1b[31mred\x1b[0m"), True),
    ("%00 in the Request-URI", dict(uri="sip:a%00b@a.example"), True),
    ("superscript two in Content-Length", dict(content_length="\u00b2"), True),
    ("superscript two in CSeq", dict(cseq="\u00b2 MESSAGE"), True),
    ("superscript two in the Via port", dict(via_port="\u00b2"), True),
    ("unterminated IPv6 host", dict(uri="sip:bob@[2001:db8::1"), True),
    ("superscript two in Content-Length, outsider", dict(content_length="\u00b2"), False),
    ("superscript two in CSeq, outsider", dict(cseq="\u00b2 MESSAGE"), False),
    ("superscript two in the Via port, outsider", dict(via_port="\u00b2"), False),
]


async def _hostile_then_ordinary(fed: Federation, name: str, spoil: dict,
                                 trusted: bool) -> None:
    streams = fed.inbound_streams()
    assert len(streams) == 1, fed.a.status()["sessions"]
    sender = fed.sender(trusted)
    if isinstance(sender, TcpSender) and sender.writer is None:
        await sender.connect()
    fed.b.new_log_lines()
    answers = await sender.exchange(sip_request(sender.source, fed.transport, **spoil))
    statuses = [status_of(a) for a in answers]
    # a precise refusal: 400 with the reason from the proxy, 403 for an outsider
    assert statuses == [400 if trusted else 403], (name, answers)
    if trusted:  # the reason phrase names the problem (RFC 3261 §21.4.1)
        assert status_line(answers[0])[1] != "Bad Request", answers[0]
    await asyncio.sleep(0.2)
    lines = fed.b.new_log_lines()
    refusals = [line for line in lines if line["event"] in
                ("sip.malformed", "sip.refused", "sip.untrusted")]
    assert refusals and all(line["level"] in ("warning", "info") for line in refusals), lines
    assert fed.b.stderr == ""
    if isinstance(sender, TcpSender):
        # An outsider's connection is not read further; neither is one whose framing is
        # lost (a Content-Length that is not a number). Anything else keeps the connection.
        framing_lost = "content_length" in spoil
        assert await sender.closed(within=0.25 if trusted and not framing_lost else 2.0) \
            == (framing_lost or not trusted), name
    await fed.ordinary_message()
    assert fed.inbound_streams() == streams, "the partner's stream was replaced"
    assert fed.b.stderr == ""


@pytest.mark.parametrize(("name", "spoil", "trusted"), HOSTILE, ids=[c[0] for c in HOSTILE])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_hostile_sip_input_is_refused_and_the_s2s_stream_survives(
        federations: Federations, transport: str, name: str, spoil: dict,
        trusted: bool) -> None:
    fed = await federations.get(transport)
    await _hostile_then_ordinary(fed, name, spoil, trusted)
    status = fed.b.process.poll()
    assert status is None, f"gateway exited with {status}"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_status_sums_up_what_the_sip_side_refused(federations: Federations,
                                                          transport: str) -> None:
    """After the cases above, ``xmpp-gateway status`` tells the operator in one line what
    was refused (malformed, untrusted) and what overload cost (503s, kernel drops)."""
    fed = await federations.get(transport)
    for trusted in (True, False):
        sender = fed.sender(trusted)
        await sender.exchange(sip_request(sender.source, transport, cseq="\u00b2 MESSAGE"))
    result = await asyncio.to_thread(subprocess.run, [
        *CLI, "-c", str(fed.b.directory / "gateway.yaml"), "status"], capture_output=True,
        text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("SIP refused:")]
    malformed = int(line.split("SIP refused: ")[1].split(" malformed")[0])
    untrusted = int(line.split("malformed, ")[1].split(" from untrusted")[0])
    assert malformed >= 1 and untrusted >= 1, line
    assert "0 failed unexpectedly" in line and "answered 503" in line
    if transport == "udp":
        assert "datagrams dropped by the kernel at the SIP socket" in line
