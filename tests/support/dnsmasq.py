"""A real dnsmasq (Debian dnsmasq-base) as a child process, for tests that need DNS.

Uses the ``.example`` TLD with ``--local=/example/`` so unknown names get NXDOMAIN rather
than REFUSED (see ../shared/interop/README.md). Stopped by PID.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class DnsmasqServer:
    workdir: Path
    host_records: dict[str, str] = field(default_factory=dict)  # name -> IPv4
    # (service name, target, port, priority, weight); target "." = no service
    srv_records: list[tuple[str, str, int, int, int]] = field(default_factory=list)
    address: str = "127.0.0.1"
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    # e.g. ["ip", "netns", "exec", NS]: run inside a network namespace; readiness is then
    # read from dnsmasq's log since the test process cannot query into the namespace.
    prefix: tuple[str, ...] = ()

    @property
    def nameserver(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self) -> DnsmasqServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.address)
        args = [
            DNSMASQ,
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--local=/example/",
            "--bind-interfaces",
            f"--listen-address={self.address}",
            f"--port={self.port}",
            "--log-queries",
            f"--log-facility={self.workdir / 'dnsmasq.log'}",
            f"--pid-file={self.workdir / 'dnsmasq.pid'}",
            "--user=root",
        ]
        args += [f"--host-record={name},{ip}" for name, ip in self.host_records.items()]
        for name, target, port, priority, weight in self.srv_records:
            if target == ".":
                args.append(f"--srv-host={name}")  # dnsmasq: no target = "service not here"
            else:
                args.append(f"--srv-host={name},{target},{port},{priority},{weight}")
        self.process = subprocess.Popen(
            [*self.prefix, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dnsmasq exited with {self.process.returncode}: {args}")
            if self._answers():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("dnsmasq did not start answering within 5 s")

    def _answers(self) -> bool:
        if self.prefix:
            log = self.workdir / "dnsmasq.log"
            return log.exists() and "started" in log.read_text(errors="replace")
        return self._query_ok()

    def _query_ok(self) -> bool:
        import dns.message
        import dns.query

        try:
            query = dns.message.make_query("probe.example.", "A")
            dns.query.udp(query, self.address, port=self.port, timeout=0.2)
            return True
        except Exception:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(3)
        self.process = None

    def __enter__(self) -> DnsmasqServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
