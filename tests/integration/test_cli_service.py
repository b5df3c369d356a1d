"""``xmpp-gateway start|stop|restart`` on a host without systemd: a pidfile, the command
back only once the gateway answers (or with its log when it cannot start), and a stop that
waits for the end and never signals a pid that is not a gateway's."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.cli.service import is_gateway
from testbed.dnsmasq import free_port

REPO = Path(__file__).resolve().parents[2]


def gateway(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli.main", "-c", str(config), *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.fixture
def config(tmp_path: Path):
    path = tmp_path / "gateway.yaml"
    path.write_text("domains: [contoso.example]\n"
                    f"listen: [{{host: 127.0.0.1, port: {free_port()}}}]\n"
                    "store: {path: data/store.sqlite3}\nadmin_socket: run/gateway.sock\n"
                    "partners: []\n")
    yield path
    gateway(path, "stop", "--timeout", "10")  # whatever a failed assertion left running


def test_start_status_restart_stop(config: Path) -> None:
    pidfile = config.parent / "run" / "gateway.pid"
    started = gateway(config, "start")
    assert started.returncode == 0, started.stdout + started.stderr
    pid = int(pidfile.read_text())
    assert started.stdout.startswith(f"started the gateway (pid {pid}) with {config}; "
                                     f"output: {config.parent / 'run' / 'gateway.log'}")
    assert gateway(config, "status").stdout.startswith(f"gateway pid {pid} serving")
    again = gateway(config, "start")
    assert (again.returncode, again.stdout.strip()) == (
        0, f"the gateway is already running (pid {pid}); xmpp-gateway restart to restart it")
    restarted = gateway(config, "restart")
    assert restarted.returncode == 0, restarted.stderr
    new_pid = int(pidfile.read_text())
    assert new_pid != pid and f"stopped the gateway (pid {pid})" in restarted.stdout
    assert not is_gateway(pid)  # ended (possibly a zombie until its new parent reaps it)
    stopped = gateway(config, "stop")
    assert (stopped.returncode, stopped.stdout.strip()) == (
        0, f"stopped the gateway (pid {new_pid})")
    assert not pidfile.exists() and not is_gateway(new_pid)
    assert gateway(config, "stop").stdout.strip() == "the gateway is not running"


def test_a_stale_pidfile_is_never_trusted(config: Path) -> None:
    """A pidfile left by a crash, its pid since reused by another program: stop does not
    signal it, start replaces the file."""
    pidfile = config.parent / "run" / "gateway.pid"
    pidfile.parent.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pidfile.write_text(f"{other.pid}\n")
        result = gateway(config, "stop")
        assert result.stdout.strip() == (f"the gateway is not running (removed {pidfile}, "
                                         f"left with pid {other.pid})")
        assert other.poll() is None  # not signalled
        pidfile.write_text(f"{other.pid}\n")
        started = gateway(config, "start")
        assert started.returncode == 0, started.stderr
        assert int(pidfile.read_text()) != other.pid
    finally:
        other.kill()
        other.wait()


def test_a_gateway_that_cannot_start_says_why(config: Path) -> None:
    busy = free_port()
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", busy))
        holder.listen()
        text = config.read_text()
        port = text.split("port: ")[1].split("}")[0]
        config.write_text(text.replace(f"port: {port}", f"port: {busy}"))
        started = time.monotonic()
        result = gateway(config, "start", "--wait", "20")
    assert result.returncode == 1
    assert "the gateway did not start (exit status 1); the end of" in result.stderr
    assert "address already in use" in result.stderr
    assert time.monotonic() - started < 30  # not the whole --wait: it said so when it ended
    assert not (config.parent / "run" / "gateway.pid").exists()


def test_run_writes_and_removes_its_pidfile(tmp_path: Path, config: Path) -> None:
    pidfile = tmp_path / "other.pid"
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli.main", "-c", str(config),
                                "run", "--pidfile", str(pidfile)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert int(pidfile.read_text()) == process.pid
        while gateway(config, "status").returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        os.kill(process.pid, 15)
        process.wait(15)
    assert not pidfile.exists()
