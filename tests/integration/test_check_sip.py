"""``xmpp-gateway check sip`` against a real Kamailio, up and down, over UDP and TCP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.dnsmasq import free_dns_port, free_port
from testbed.kamailio import Kamailio

REPO = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, transport: str, port: int, backend: str = "sip") -> Path:
    config = tmp_path / f"gateway-{transport}.yaml"
    config.write_text(
        "domains: [sip.example]\n"
        f"store: {{path: {tmp_path / 'store.sqlite3'}}}\n"
        f"sip: {{backend: {backend}, proxy_host: 127.0.0.1, proxy_port: {port}, "
        f"transport: {transport}, local_host: 127.0.0.1, local_port: {free_port()}}}\n"
        "partners: []\n")
    return config


def check(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli.main", "-c", str(config), "check",
                           "sip", "--timeout", "2", *extra], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


@pytest.fixture(scope="module")
def kamailio(tmp_path_factory: pytest.TempPathFactory):
    port = free_dns_port()  # Kamailio listens on UDP and TCP: free for both
    server = Kamailio(tmp_path_factory.mktemp("kamailio"), domain="sip.example", port=port,
                      gateway=("127.0.0.1", free_port()))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_check_sip_reaches_kamailio(tmp_path: Path, kamailio: Kamailio, transport: str) -> None:
    result = check(write_config(tmp_path, transport, kamailio.port))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SIP proxy 127.0.0.1:{kamailio.port} ({transport}): 200 OK in " in result.stdout
    as_json = json.loads(check(write_config(tmp_path, transport, kamailio.port),
                               "--json").stdout)
    assert (as_json["ok"], as_json["status"]) == (True, 200) and as_json["rtt_ms"] > 0


def test_check_sip_says_why_nothing_answers(tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    udp = check(write_config(tmp_path, "udp", port))
    assert udp.returncode == 1
    assert f"SIP proxy 127.0.0.1:{port} (udp): no answer within 2s" in udp.stdout
    assert "hint: is the proxy listening on UDP there" in udp.stdout
    # ... and where a proxy configuration that works with the gateway is.
    assert f"{REPO / 'deploy' / 'kamailio' / 'kamailio.cfg'} (its header says how" \
        in " ".join(udp.stdout.split())
    tcp = check(write_config(tmp_path, "tcp", port))
    assert tcp.returncode == 1
    assert f"SIP proxy 127.0.0.1:{port} (tcp): cannot connect: " in tcp.stdout
    assert "refused" in tcp.stdout.lower()


def test_check_sip_with_the_development_backend(tmp_path: Path) -> None:
    result = check(write_config(tmp_path, "udp", 5060, backend="development"))
    assert result.returncode == 0
    assert "no SIP proxy is used" in result.stdout
    assert "deploy/kamailio/kamailio.cfg" in result.stdout
