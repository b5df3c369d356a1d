"""Every other way into a running gateway than S2S and SIP, reviewed and tested.

* the admin socket: mode 0600, owned by the gateway's user, and — independently of the
  mode — other uids refused by their peer credentials (SO_PEERCRED); a socket directory
  that others may write to is refused at start;
* the metrics endpoint: read-only (a POST changes nothing), and no secret in it;
* reload: a configuration file made unreadable or invalid keeps the running
  configuration and says why; a valid one applies a new ``sip.trusted_sources`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gateway.config.loader import load_config
from gateway.daemon import Gateway, StartupError
from gateway.net.admin import query
from testbed.dnsmasq import free_port
from testbed.pki import Pki
from tests.integration.test_daemon import write_config
from tests.support.sip_attacker import spoofed, status_of, udp_exchange

NOBODY = 65534
SECRET = "secret-of-a.example"  # write_config's dialback secret


def config_file(tmp_path: Path, pki: Pki, extra: str = "") -> Path:
    path = write_config(tmp_path / "gw" / "gateway.yaml", pki, "a.example",
                        free_port(kind=socket.SOCK_STREAM), "127.0.0.1:9", [])
    path.write_text(path.read_text().replace("partners:", extra + "partners: []"))
    return path


async def as_nobody(socket_path: Path) -> dict | str:
    """Ask for ``status`` over a connection made with uid/gid 65534: SO_PEERCRED records
    the credentials at connect(), so the process switches its effective ids just for that
    call (root only) and talks as itself afterwards. A refused connect returns its error."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        sock.connect(str(socket_path))
    except OSError as exc:
        sock.close()
        return exc.strerror or str(exc)
    finally:
        os.seteuid(0)
        os.setegid(0)

    def exchange() -> bytes:
        with sock:
            with contextlib.suppress(BrokenPipeError):  # a refusal does not wait for it
                sock.sendall(b'{"command": "status"}\n')
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data

    return json.loads(await asyncio.to_thread(exchange))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
async def test_admin_socket_answers_its_owner_only(tmp_path: Path, pki: Pki, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.admin")
    # Under /tmp (sticky, world-traversable) so that uid 65534 can reach the file at all.
    directory = Path(f"/tmp/gw-admin-{os.getpid()}")
    config = config_file(tmp_path, pki)
    config.write_text(config.read_text().replace("admin_socket: admin.sock",
                                                 f"admin_socket: {directory}/admin.sock"))
    gateway = Gateway(load_config(config))
    await gateway.start()
    try:
        path = gateway.config.admin_socket
        os.chmod(directory, 0o755)
        info = path.stat()
        assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid()
        ours = await asyncio.to_thread(query, path, "status")
        assert ours["ok"] and ours["domains"] == ["a.example"]
        assert await as_nobody(path) == "Permission denied"  # the mode alone stops it …
        os.chmod(path, 0o666)  # … and with a mode widened by hand, the peer check does
        assert await as_nobody(path) == {"ok": False, "error": "refused: the admin socket "
                                   "answers the gateway's own user and root only"}
    finally:
        await gateway.stop()
        shutil.rmtree(directory, ignore_errors=True)
    [record] = [r for r in caplog.records if r.getMessage() == "admin.refused"]
    assert record.gw_fields["uid"] == NOBODY and record.gw_fields["pid"] > 0


async def test_admin_socket_refuses_a_directory_others_can_write(tmp_path: Path,
                                                                pki: Pki) -> None:
    path = config_file(tmp_path, pki)
    (path.parent / "run").mkdir()
    os.chmod(path.parent / "run", 0o777)
    path.write_text(path.read_text().replace("admin_socket: admin.sock",
                                             "admin_socket: run/admin.sock"))
    gateway = Gateway(load_config(path))
    try:
        with pytest.raises(StartupError) as info:
            await gateway.start()
    finally:
        await gateway.stop()
    assert "is writable by other users (mode 777)" in str(info.value)


async def test_metrics_are_read_only_and_hold_no_secret(tmp_path: Path, pki: Pki) -> None:
    port = free_port(kind=socket.SOCK_STREAM)
    gateway = Gateway(load_config(config_file(
        tmp_path, pki, f"metrics: {{enabled: true, port: {port}}}\n")))
    await gateway.start()
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        before = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=5).read().decode())
        with pytest.raises(urllib.error.HTTPError) as post:
            await asyncio.to_thread(lambda: urllib.request.urlopen(urllib.request.Request(
                url, data=b"xmpp_gateway_refusals_total 99", method="POST"), timeout=5))
        assert post.value.code == 405  # prometheus_client serves GET (and HEAD) only
        after = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    finally:
        await gateway.stop()
    assert "# TYPE xmpp_gateway_sip_untrusted_total counter" in before
    for text in (before, after):
        assert SECRET not in text and str(pki.root) not in text and ".key" not in text
    assert [line for line in after.splitlines() if line.startswith("xmpp_gateway_refusals")] \
        == [line for line in before.splitlines() if line.startswith("xmpp_gateway_refusals")]


@pytest.mark.parametrize("breakage", ["unreadable", "invalid", "not-utf8"])
async def test_reload_keeps_the_running_config(tmp_path: Path, pki: Pki, caplog,
                                               breakage: str) -> None:
    caplog.set_level(logging.ERROR, logger="gateway.daemon")
    path = config_file(tmp_path, pki)
    gateway = Gateway(load_config(path))
    await gateway.start()
    running = gateway.config
    try:
        if breakage == "unreadable":
            # (root reads any file whatever its mode: a directory in its place is what
            # "cannot be read" looks like to root too)
            path.unlink()
            path.mkdir()
            expected = "Is a directory"
        elif breakage == "invalid":
            path.write_text(path.read_text().replace("timeout: 2", "timeout: -2"))
            expected = "dns.timeout: -2 is not a positive number of seconds"
        else:
            path.write_bytes(path.read_bytes() + b"\xff\n")
            expected = "not UTF-8 text"
        answer = await gateway.reload()
        assert not answer["ok"] and expected in answer["error"]
        assert gateway.config is running and gateway.reloads == 0
        assert gateway.status()["domains"] == ["a.example"]
    finally:
        await gateway.stop()
    [record] = [r for r in caplog.records if r.getMessage() == "gateway.reload_refused"]
    assert expected in record.gw_fields["reason"]


async def test_reload_applies_trusted_sources_at_once(tmp_path: Path, pki: Pki) -> None:
    sip_port = free_port("127.0.0.9")
    sip = (f"sip: {{backend: sip, proxy_host: 127.0.0.10, local_host: 127.0.0.9, "
           f"local_port: {sip_port}}}\n")
    path = config_file(tmp_path, pki, sip)
    gateway = Gateway(load_config(path))
    await gateway.start()
    target = ("127.0.0.9", sip_port)

    async def from_pool_member() -> int:
        answers = await udp_exchange("127.0.0.12", target, lambda port: spoofed(
            "OPTIONS", "udp", ("127.0.0.12", port), domain="a.example"), listen=0.4)
        return status_of(answers[0])

    try:
        assert await from_pool_member() == 403
        path.write_text(path.read_text().replace("local_port:",
                                                 "trusted_sources: [127.0.0.12/32], local_port:"))
        answer = await gateway.reload()
        assert answer["ok"] and answer["note"] == ""
        assert await from_pool_member() == 200  # OPTIONS answered: now trusted
        path.write_text(path.read_text().replace("local_host: 127.0.0.9",
                                                 "local_host: 127.0.0.8"))
        answer = await gateway.reload()
        assert answer["note"] == ("sip settings other than trust_asserted_identity and "
                                  "trusted_sources change only on restart")
    finally:
        await gateway.stop()
