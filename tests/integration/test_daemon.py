"""The gateway as an operator runs it: `xmpp-gateway run` processes, the admin socket
(status, reload, check connectivity), SIGTERM; and reload semantics in-process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.config.editor import remove_partner
from gateway.config.loader import load_config
from gateway.daemon import Gateway
from gateway.sip.development import message
from testbed.dnsmasq import DnsmasqServer, free_port
from testbed.pki import Pki

CLI = [sys.executable, "-m", "gateway.cli.main"]


def write_config(
    path: Path, pki: Pki, domain: str, port: int, dns: str, partners: list[dict]
) -> Path:
    tls = pki.tls_settings(domain)
    lines = [
        f"domains: [{domain}]",
        f"listen: [{{host: 127.0.0.1, port: {port}}}]",
        f"tls: {{certificate: {tls.certificate}, key: {tls.key}, ca_file: {tls.ca_file}, "
        "use_system_cas: false}",
        f"dialback: {{secret: secret-of-{domain}}}",
        f"dns: {{nameservers: ['{dns}'], timeout: 2}}",
        "store: {path: store.sqlite3}",
        "admin_socket: admin.sock",
        "limits: {negotiation_timeout: 5}",
        "partners:",
    ]
    for p in partners:
        lines.append(
            f"  - {{domain: {p['domain']}, type: federated, tls: {p.get('tls', 'optional')}, "
            f"sasl: {p.get('sasl', 'optional')}, dialback: {p.get('dialback', 'true')}}}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def dns_and_ports(tmp_path: Path):
    ports = {d: free_port(kind=socket.SOCK_STREAM) for d in ("a.example", "b.example")}
    server = DnsmasqServer(
        tmp_path / "dns",
        host_records={"xmpp.a.example": "127.0.0.1", "xmpp.b.example": "127.0.0.1"},
        srv_records=[(f"_xmpp-server._tcp.{d}", f"xmpp.{d}", p, 0, 5) for d, p in ports.items()],
    )
    with server:
        yield server.nameserver, ports


def start(config: Path) -> subprocess.Popen[bytes]:
    log = (config.parent / "gateway.log").open("wb")
    process = subprocess.Popen(
        [*CLI, "-c", str(config), "run"],
        stdout=log,
        stderr=log,
        cwd=Path(__file__).resolve().parents[2],
    )
    deadline = time.monotonic() + 10
    while not (config.parent / "admin.sock").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError((config.parent / "gateway.log").read_text())
        time.sleep(0.05)
    return process


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
            raise
    return process.returncode


def test_processes_status_probe_reload_and_sigterm(tmp_path: Path, pki: Pki, dns_and_ports) -> None:
    dns, ports = dns_and_ports
    a = write_config(
        tmp_path / "a" / "gateway.yaml",
        pki,
        "a.example",
        ports["a.example"],
        dns,
        [
            {"domain": "b.example", "tls": "required", "sasl": "required", "dialback": "false"},
            {"domain": "c.example"},
        ],
    )
    b = write_config(
        tmp_path / "b" / "gateway.yaml",
        pki,
        "b.example",
        ports["b.example"],
        dns,
        [{"domain": "a.example"}],
    )
    processes = [start(a), start(b)]
    try:
        status = json.loads(cli(a, "status", "--json").stdout)
        assert status["domains"] == ["a.example"] and status["sessions"] == []
        assert (tmp_path / "a" / "admin.sock").stat().st_mode & 0o777 == 0o600

        good = cli(a, "check", "connectivity", "b.example")
        assert good.returncode == 0, good.stdout + good.stderr
        assert "OK: a.example → b.example authenticated with SASL over TLS" in good.stdout
        assert "certificate: valid" in good.stdout and "TLS: TLSv1.3" in good.stdout

        dns_check = cli(a, "check", "dns")
        assert dns_check.returncode == 1  # c.example has no records
        assert "ok    partner b.example: SRV _xmpp-server._tcp.b.example" in dns_check.stdout
        assert "FAIL  partner c.example" in dns_check.stdout
        certs = cli(a, "check", "certs")
        assert "ok    covers a.example: DNS-ID a.example matches a.example" in certs.stdout
        assert "ok    partner b.example: certificate: valid" in certs.stdout
        assert "FAIL  partner c.example: no TLS handshake" in certs.stdout

        bad = cli(a, "check", "connectivity", "c.example")  # no DNS records at all
        assert bad.returncode == 1
        assert "FAILED" in bad.stdout and "hint:" in bad.stdout

        a.write_text(a.read_text().replace("negotiation_timeout: 5", "negotiation_timeout: -1"))
        refused = cli(a, "reload")
        assert refused.returncode == 1
        assert "limits.negotiation_timeout: -1 is not a positive number" in refused.stderr
        processes[0].send_signal(signal.SIGHUP)  # the daemon refuses it too, and logs why
        deadline = time.monotonic() + 5
        while "gateway.reload_refused" not in (tmp_path / "a" / "gateway.log").read_text():
            assert time.monotonic() < deadline, "SIGHUP reload refusal not logged"
            time.sleep(0.05)
        a.write_text(a.read_text().replace("negotiation_timeout: -1", "negotiation_timeout: 5"))
        remove_partner(a, "c.example")
        reloaded = cli(a, "reload")
        assert reloaded.returncode == 0 and "reloaded: 1 partners" in reloaded.stdout
    finally:
        codes = [stop(p) for p in processes]
    assert codes == [0, 0]
    log = (tmp_path / "a" / "gateway.log").read_text()
    assert "gateway.reload_refused" in log and "gateway.stopped" in log
    assert not (tmp_path / "a" / "admin.sock").exists()


async def test_reload_keeps_live_sessions_and_closes_removed_partners(
    tmp_path: Path, pki: Pki, dns_and_ports
) -> None:
    dns, ports = dns_and_ports
    a_path = write_config(
        tmp_path / "a" / "gateway.yaml",
        pki,
        "a.example",
        ports["a.example"],
        dns,
        [{"domain": "b.example"}],
    )
    b_path = write_config(
        tmp_path / "b" / "gateway.yaml",
        pki,
        "b.example",
        ports["b.example"],
        dns,
        [{"domain": "a.example"}],
    )
    a, b = Gateway(load_config(a_path)), Gateway(load_config(b_path))
    await a.start()
    await b.start()
    try:
        await a.backend.inject(message("alice@a.example/pc", "bob@b.example", "before"))
        await b.backend.next_delivered(10)
        # An unrelated edit: the session survives.
        b_path.write_text(b_path.read_text().replace("timeout: 2", "timeout: 3"))
        assert (await b.reload())["closed_sessions"] == 0
        await a.backend.inject(message("alice@a.example/pc", "bob@b.example", "after"))
        assert (await b.backend.next_delivered(10)).findtext("{jabber:server}body") == "after"
        # Removing the partner closes its sessions with a stream error.
        remove_partner(b_path, "a.example")
        answer = await b.reload()
        assert answer["ok"] and answer["closed_sessions"] >= 1
        await _until(lambda: not [s for s in b.status()["sessions"] if s["method"]])
    finally:
        await a.stop()
        await b.stop()


async def _until(condition, timeout: float = 5.0) -> None:
    import asyncio

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_sigterm_path_bounces_queued_stanzas(tmp_path: Path, pki: Pki, dns_and_ports) -> None:
    """Stanzas queued for a partner that never answers are bounced on stop, not lost."""
    dns, ports = dns_and_ports
    silent = socket.socket()
    silent.bind(("127.0.0.1", ports["b.example"]))
    silent.listen(5)  # accepts TCP, never speaks XMPP
    try:
        a_path = write_config(
            tmp_path / "a" / "gateway.yaml",
            pki,
            "a.example",
            ports["a.example"],
            dns,
            [{"domain": "b.example"}],
        )
        a = Gateway(load_config(a_path))
        await a.start()
        for index in range(5):
            await a.backend.inject(message("alice@a.example/pc", "bob@b.example", f"m{index}"))
        await _until(lambda: sum(a.status()["queues"].values()) == 5)
        await a.stop()
        bounced = [s for s in a.backend.delivered if s.get("type") == "error"]
        assert len(bounced) == 5
        assert all(s.get("to") == "alice@a.example/pc" for s in bounced)
    finally:
        silent.close()
    assert os.path.exists(a_path)
