"""A network namespace of its own for a test or benchmark run: loopback addresses
127.0.0.2-5 for a.example, b.example, gw.example and load.example, and dnsmasq on
127.0.0.53 answering for them (``.example`` TLD, ``--local=/example/``; docs/interop.md).
Only what the run creates is contacted; everything it starts is stopped by PID and the
namespace removed, also when the run fails.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from testbed.dnsmasq import DnsmasqServer

REPO = Path(__file__).resolve().parents[1]
IPS = {"a.example": "127.0.0.2", "b.example": "127.0.0.3", "gw.example": "127.0.0.4",
       "load.example": "127.0.0.5"}  # load.example: the benchmark load generator


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60, **kwargs)


def stop_process(process: subprocess.Popen | None, timeout: float = 10) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@dataclass
class Namespace:
    name: str
    workdir: Path
    dns: DnsmasqServer | None = None

    @property
    def exec(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def up(self) -> None:
        run(["ip", "netns", "add", self.name])
        try:
            run([*self.exec, "ip", "link", "set", "lo", "up"])
            for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.53"):
                subprocess.run([*self.exec, "ip", "addr", "add", f"{ip}/8", "dev", "lo"],
                               capture_output=True)  # 127.0.0.0/8 already covers some
            etc = Path("/etc/netns") / self.name
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text("nameserver 127.0.0.53\n")
            (etc / "hosts").write_text("127.0.0.1 localhost\n")
            self.dns = DnsmasqServer(
                self.workdir / "dns", address="127.0.0.53", port=53, prefix=tuple(self.exec),
                host_records={**{f"xmpp.{d}": ip for d, ip in IPS.items()}, **IPS},
                srv_records=[(f"_xmpp-server._tcp.{d}", f"xmpp.{d}", 5269, 0, 5) for d in IPS],
            ).start()
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        if self.dns is not None:
            self.dns.stop()
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)
        shutil.rmtree(Path("/etc/netns") / self.name, ignore_errors=True)
