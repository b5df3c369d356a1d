"""A real dnsmasq (Debian dnsmasq-base) as a child process, for tests that need DNS.

Names live under the ``.example`` TLD (RFC 2606); ``--local=/example/`` makes dnsmasq answer
NXDOMAIN for unknown names there instead of REFUSED (it has no upstream). dnsmasq runs in the
foreground (``--no-daemon``) as our child and is stopped by its PID, also when a test fails
(context manager / fixture ``finally``).

Also here: :class:`SilentNameserver`, a UDP socket that never answers (timeouts), and
:func:`servfail_dnsmasq`, a validating dnsmasq in front of an unsigned one, which answers
SERVFAIL because DNSSEC validation of every answer comes out BOGUS.

The pytest fixtures built on them (``dnsmasq_server``, ``silent_nameserver``) are in
tests/integration/conftest.py.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdataclass

from gateway.dns.resolver import parse_nameserver

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
# IANA root zone KSK-2017 (https://data.iana.org/root-anchors/root-anchors.xml), the trust
# anchor Debian's dnsmasq ships in /usr/share/dnsmasq-base/trust-anchors.conf.
ROOT_TRUST_ANCHOR = ".,20326,8,2,E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D"
START_ATTEMPTS = 3  # a free port can be taken between choosing it and dnsmasq binding it


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_DGRAM) -> int:
    """A port that is free right now for ``kind`` on ``host``."""
    with socket.socket(_family(host), kind) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_dns_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` (dnsmasq listens on both)."""
    for _ in range(50):
        port = free_port(host, socket.SOCK_DGRAM)
        with socket.socket(_family(host), socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no port free for both UDP and TCP on {host} after 50 tries")


def nameserver_spec(host: str, port: int) -> str:
    """``host:port`` as DnsSettings.nameservers takes it (``[v6]:port`` for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class DnsmasqServer:
    """dnsmasq serving fixed records on ``address``:``port`` (a free port when 0).

    ``host_records``: name -> IPv4 and/or IPv6 address(es) (dnsmasq ``--host-record``, A and
    AAAA). ``srv_records``: ``(name, target, port, priority, weight)``; target ``"."`` gives
    the RFC 2782 "decidedly not available" record (``--srv-host`` without a target, which
    dnsmasq answers as ``0 0 1 .``). ``upstreams`` are nameservers (``host:port``) to forward
    names outside ``local_domains`` to.
    """

    workdir: Path
    host_records: Mapping[str, str | Sequence[str]] = field(default_factory=dict)
    srv_records: Sequence[tuple[str, str, int, int, int]] = field(default_factory=list)
    address: str = "127.0.0.1"
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    # e.g. ["ip", "netns", "exec", NS]: run inside a network namespace; readiness is then
    # read from dnsmasq's log since the test process cannot query into the namespace.
    prefix: tuple[str, ...] = ()
    local_domains: tuple[str, ...] = ("example",)
    upstreams: tuple[str, ...] = ()
    validate_dnssec: bool = False
    local_ttl: int = 0  # TTL of the configured records (dnsmasq's default is 0: no caching)
    extra_args: tuple[str, ...] = ()
    start_timeout: float = 5.0

    @property
    def nameserver(self) -> str:
        """``host:port`` for DnsSettings.nameservers / DnsPythonResolver."""
        return nameserver_spec(self.address, self.port)

    @property
    def log_path(self) -> Path:
        return self.workdir / "dnsmasq.log"

    def arguments(self) -> list[str]:
        args = [
            DNSMASQ,
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            f"--listen-address={self.address}",
            f"--port={self.port}",
            "--log-queries",
            f"--log-facility={self.log_path}",
            f"--pid-file={self.workdir / 'dnsmasq.pid'}",
            "--user=root",  # keep root: the log file and workdir belong to the test user
            f"--local-ttl={self.local_ttl}",
        ]
        args += [f"--local=/{domain}/" for domain in self.local_domains]
        for upstream in self.upstreams:
            host, port = parse_nameserver(upstream)
            args.append(f"--server={host}#{port}")
        if self.validate_dnssec:
            args += ["--dnssec", f"--trust-anchor={ROOT_TRUST_ANCHOR}"]
        for name, addresses in self.host_records.items():
            listed = [addresses] if isinstance(addresses, str) else list(addresses)
            args.append(f"--host-record={name},{','.join(listed)}")
        for name, target, port, priority, weight in self.srv_records:
            if target == ".":
                args.append(f"--srv-host={name}")  # dnsmasq: no target = "service not here"
            else:
                args.append(f"--srv-host={name},{target},{port},{priority},{weight}")
        return [*args, *self.extra_args]

    def start(self) -> DnsmasqServer:
        """Start dnsmasq and return once it answers; raise with its own error otherwise."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        chosen = self.port == 0
        for attempt in range(1, START_ATTEMPTS + 1):
            if chosen:
                self.port = free_dns_port(self.address)
            error = self._start_once()
            if error is None:
                return self
            if not (chosen and "in use" in error and attempt < START_ATTEMPTS):
                raise RuntimeError(error)
        raise AssertionError("unreachable")

    def _start_once(self) -> str | None:
        args = self.arguments()
        stderr = (self.workdir / "dnsmasq.stderr").open("wb")
        try:
            self.process = subprocess.Popen(
                [*self.prefix, *args], stdout=subprocess.DEVNULL, stderr=stderr
            )
        finally:
            stderr.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                said = (self.workdir / "dnsmasq.stderr").read_text(errors="replace").strip()
                return f"dnsmasq exited with {code}: {said or '(no message)'}; args: {args}"
            if self._answers():
                return None
            time.sleep(0.02)
        self.stop()
        return f"dnsmasq did not answer within {self.start_timeout} s; args: {args}"

    def _answers(self) -> bool:
        if self.prefix:
            return self.log_path.exists() and "started" in self.log_text()
        # dnsmasq answers version.bind CH TXT itself, whatever its records and upstreams.
        query = dns.message.make_query("version.bind.", "TXT", dns.rdataclass.CH)
        try:
            dns.query.udp(query, self.address, port=self.port, timeout=0.2)
            return True
        except (OSError, dns.exception.DNSException):
            return False

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def queries(self) -> list[tuple[str, str]]:
        """``(type, name)`` of every query dnsmasq received, from its ``--log-queries`` log."""
        return re.findall(r"query\[(\w+)\] (\S+) from", self.log_text())

    def stop(self) -> None:
        """Terminate our dnsmasq by PID, kill it if it does not exit within 3 s."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(3)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(3)

    def __enter__(self) -> DnsmasqServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class SilentNameserver:
    """A bound UDP socket that reads nothing and answers nothing: every query times out."""

    address: str = "127.0.0.1"
    sock: socket.socket | None = None

    @property
    def port(self) -> int:
        assert self.sock is not None, "SilentNameserver is not open"
        return int(self.sock.getsockname()[1])

    @property
    def nameserver(self) -> str:
        return nameserver_spec(self.address, self.port)

    def __enter__(self) -> SilentNameserver:
        self.sock = socket.socket(_family(self.address), socket.SOCK_DGRAM)
        self.sock.bind((self.address, 0))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


@contextlib.contextmanager
def servfail_dnsmasq(workdir: Path, address: str = "127.0.0.1") -> Iterator[DnsmasqServer]:
    """A dnsmasq that answers SERVFAIL for every name (except version.bind).

    A validating dnsmasq (root trust anchor) forwards everything to a second dnsmasq that
    serves ``.example`` unsigned; with no DS/DNSKEY chain the answers are BOGUS and the
    validator answers SERVFAIL, as a real validating resolver does for a broken zone.
    """
    upstream = DnsmasqServer(
        workdir / "unsigned",
        address=address,
        host_records={"xmpp.broken.example": "127.0.0.9"},
        srv_records=[("_xmpp-server._tcp.broken.example", "xmpp.broken.example", 5269, 0, 5)],
    )
    with upstream:
        front = DnsmasqServer(
            workdir / "validating",
            address=address,
            local_domains=(),
            upstreams=(upstream.nameserver,),
            validate_dnssec=True,
        )
        with front:
            yield front
