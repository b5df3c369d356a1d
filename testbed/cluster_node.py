"""One gateway node of a two-node cluster (``xmpp-gateway run`` in a network namespace)
on a shared PostgreSQL store, behind Kamailio's dispatcher: started, asked, killed with
SIGKILL and started again. Used by the cluster interop tests and bench/failover.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.namespace import REPO, Namespace, stop_process
from testbed.pki import Pki

NODE_IPS = {"a": "127.0.0.4", "b": "127.0.0.6"}
KAMAILIO = ("127.0.0.4", 5070)  # the gateway domain's proxy (Kamailio)
SIP_PORT = 5062


@dataclass
class ClusterNode:
    ns: Namespace
    pki: Pki
    name: str
    store_url: str
    # the `partners:` entry for a.example, as a YAML flow mapping
    partner: str = "{domain: a.example, type: federated}"
    prefix: str = "node"  # its directory: WORKDIR/PREFIX-NAME
    limits: str = "{negotiation_timeout: 10}"
    process: subprocess.Popen[bytes] | None = None
    dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.dir = self.ns.workdir / f"{self.prefix}-{self.name}"
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def config(self) -> Path:
        return self.dir / "gateway.yaml"

    def start(self) -> ClusterNode:
        tls = self.pki.tls_settings("gw.example")
        ip = NODE_IPS[self.name]
        self.config.write_text("\n".join([
            "domains: [gw.example]",
            f"listen: [{{host: {ip}, port: 5269}}]",
            f"tls: {{certificate: {tls.certificate}, key: {tls.key}, "
            f"ca_file: {self.pki.root / 'ca.crt'}, use_system_cas: false}}",
            "dialback: {secret: interop-cluster-secret}",
            "dns: {nameservers: ['127.0.0.53'], timeout: 3}",
            "logging: {level: info}",
            f"limits: {self.limits}",
            f"store: {{url: '{self.store_url}', timeout: 3}}",
            f"cluster: {{node_id: {self.name}, heartbeat_interval: 0.5, lease: 3.0, "
            "drain_timeout: 15, drain_grace: 3}",
            "admin_socket: admin.sock",
            f"sip: {{backend: sip, proxy_host: {KAMAILIO[0]}, proxy_port: {KAMAILIO[1]}, "
            f"transport: udp, local_host: {ip}, local_port: {SIP_PORT}}}",
            "partners:",
            f"  - {self.partner}",
        ]) + "\n")
        (self.dir / "admin.sock").unlink(missing_ok=True)
        with (self.dir / "gateway.log").open("ab") as out:
            self.process = subprocess.Popen(
                [*self.ns.exec, sys.executable, "-m", "gateway.cli.main", "-c",
                 str(self.config), "run"], stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 20
        while not (self.dir / "admin.sock").exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node {self.name} did not start: {self.log[-3000:]}")
            time.sleep(0.05)
        return self

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.ns.exec, sys.executable, "-m", "gateway.cli.main", "-c",
                               str(self.config), *args], capture_output=True, text=True,
                              cwd=REPO, timeout=timeout, check=False)

    def status(self) -> dict[str, Any] | None:
        answer = self.cli("status", "--json", timeout=30)
        return json.loads(answer.stdout) if answer.returncode == 0 else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    @property
    def log(self) -> str:
        path = self.dir / "gateway.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        stop_process(self.process, timeout=30)
