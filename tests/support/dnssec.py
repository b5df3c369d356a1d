"""A DNSSEC-signed ``example.`` zone served by real Debian DNS servers, for DANE tests.

- the zone (A, SRV and TLSA records as given) is signed with ``ldns-signzone``
  (ldnsutils) with an ECDSA P-256 KSK and ZSK made by ``ldns-keygen``;
- NSD serves it authoritatively on ``authority`` (port 53);
- unbound, on ``address`` (port 53), resolves ``example.`` through NSD (stub zone) and
  validates it with the KSK's DS as its only trust anchor: it sets the AD bit on what
  validates and answers SERVFAIL for what does not (RFC 4035 §3.2.3).

Both run in the foreground as our children (in a network namespace when ``prefix`` is
``ip netns exec NAME``) and are stopped by PID.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ZONE = "example."
Tlsa = tuple[str, int, int, int, str]  # owner, usage, selector, matching type, hex data


def tools_missing() -> list[str]:
    return [tool for tool in ("nsd", "unbound", "ldns-keygen", "ldns-signzone")
            if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]


@dataclass
class SignedZone:
    workdir: Path
    host_records: Mapping[str, str]
    srv_records: Sequence[tuple[str, str, int, int, int]] = ()  # name, target, port, prio, w
    tlsa_records: Sequence[Tlsa] = ()
    unsigned_names: Sequence[str] = ()  # A records added after signing: no RRSIG (bogus)
    address: str = "127.0.0.53"
    authority: str = "127.0.0.54"
    port: int = 53  # unbound's
    authority_port: int = 53  # NSD's
    prefix: tuple[str, ...] = ()
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> SignedZone:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.prefix:
            subprocess.run([*self.prefix, "ip", "addr", "add", f"{self.authority}/8", "dev",
                            "lo"], capture_output=True, check=False)
        ds = self._sign()
        self._start_nsd()
        self._start_unbound(ds)
        return self

    def _zone_text(self) -> str:
        lines = [
            f"$ORIGIN {ZONE}", "$TTL 60",
            f"@ IN SOA ns.{ZONE} hostmaster.{ZONE} 1 3600 600 86400 60",
            f"@ IN NS ns.{ZONE}", f"ns IN A {self.authority}",
        ]
        lines += [f"{name}. IN A {ip}" for name, ip in self.host_records.items()]
        lines += [f"{name}. IN SRV {prio} {weight} {port} {target}."
                  for name, target, port, prio, weight in self.srv_records]
        lines += [f"{owner}. IN TLSA {usage} {selector} {mtype} {data}"
                  for owner, usage, selector, mtype, data in self.tlsa_records]
        return "\n".join(lines) + "\n"

    def _sign(self) -> str:
        """Sign the zone; the KSK's DS record (the resolver's trust anchor)."""
        work = self.workdir
        zone = work / "example.zone"
        zone.write_text(self._zone_text())

        def keygen(*extra: str) -> str:
            out = subprocess.run(["ldns-keygen", "-a", "ECDSAP256SHA256", *extra, ZONE],
                                 cwd=work, capture_output=True, text=True, check=True)
            return out.stdout.strip()

        ksk, zsk = keygen("-k"), keygen()
        subprocess.run(["ldns-signzone", "-o", ZONE, str(zone), zsk, ksk], cwd=work,
                       check=True, capture_output=True)
        signed = work / "example.zone.signed"
        if self.unsigned_names:  # records a man in the middle added: no signature
            signed.write_text(signed.read_text() + "".join(
                f"{name}. 60 IN A 127.0.0.99\n" for name in self.unsigned_names))
        return (work / f"{ksk}.ds").read_text().strip()

    def _start_nsd(self) -> None:
        work = self.workdir
        config = work / "nsd.conf"
        config.write_text(f"""server:
  ip-address: {self.authority}
  port: {self.authority_port}
  username: ""
  chroot: ""
  zonesdir: "{work}"
  pidfile: "{work}/nsd.pid"
  xfrdfile: "{work}/xfrd.state"
  zonelistfile: "{work}/zone.list"
  database: ""
  logfile: "{work}/nsd.log"
  verbosity: 1
remote-control:
  control-enable: no
zone:
  name: "{ZONE}"
  zonefile: "example.zone.signed"
""")
        self._spawn(["nsd", "-d", "-c", str(config)], "nsd")

    def _start_unbound(self, ds: str) -> None:
        work = self.workdir
        (work / "anchor.ds").write_text(ds + "\n")
        config = work / "unbound.conf"
        config.write_text(f"""server:
  interface: {self.address}
  port: {self.port}
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{work}"
  pidfile: "{work}/unbound.pid"
  use-syslog: no
  logfile: "{work}/unbound.log"
  verbosity: 1
  val-log-level: 2
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  qname-minimisation: no
  module-config: "validator iterator"
  trust-anchor-file: "{work}/anchor.ds"
  cache-max-ttl: 5
  cache-max-negative-ttl: 5
remote-control:
  control-enable: no
stub-zone:
  name: "{ZONE}"
  stub-addr: {self.authority}@{self.authority_port}
""")
        self._spawn(["unbound", "-d", "-c", str(config)], "unbound")

    def _spawn(self, command: list[str], name: str) -> None:
        out = (self.workdir / f"{name}.stdout").open("wb")
        process = subprocess.Popen([*self.prefix, *command], stdout=out,
                                   stderr=subprocess.STDOUT)
        self.processes.append(process)
        host, port = (self.authority, self.authority_port) if name == "nsd" else \
            (self.address, self.port)
        deadline = time.monotonic() + 10
        probe = ["python3", "-c", f"import socket; s = socket.create_connection(('{host}', "
                                  f"{port}), 0.5)"]
        while subprocess.run([*self.prefix, *probe], capture_output=True).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {self.log(name)}")
            time.sleep(0.1)

    @property
    def nameserver(self) -> str:
        return f"{self.address}:{self.port}"

    def log(self, name: str) -> str:
        texts = []
        for path in (self.workdir / f"{name}.log", self.workdir / f"{name}.stdout"):
            if path.exists():
                texts.append(path.read_text(errors="replace"))
        return "\n".join(texts)[-3000:]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
        self.processes.clear()
