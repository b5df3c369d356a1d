"""Local admin socket: ``xmpp-gateway status`` and ``reload`` talk to the daemon here.

A Unix socket with owner-only permissions (0600 in a 0700 directory): only the gateway's
own user (or root) can query sessions or trigger a reload. One JSON request line, one
JSON response line.

The file mode is the first fence; the second does not depend on it (a socket
directory made group-writable, or a mode changed by hand, must not open the gateway to
other users): each connection's peer credentials (``SO_PEERCRED``, unix(7)) are read and
a peer whose uid is neither the gateway's nor root's is refused, logged with its uid and
pid. At start the socket's directory is checked too: one that another user owns, or that
others may write to, lets them replace the socket with their own, and is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any

from gateway.logs import log_event

log = logging.getLogger("gateway.admin")
MAX_REQUEST = 64 * 1024


class AdminServer:
    def __init__(self, path: Path, gateway: Any) -> None:
        self.path = Path(path)
        self.gateway = gateway
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _check_directory(self.path.parent)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a previous run
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid, pid = peer_credentials(writer.get_extra_info("socket"))
        if uid not in (os.geteuid(), 0):
            log_event(log, logging.WARNING, "admin.refused", uid=uid, pid=pid,
                      reason="not the gateway's user nor root")
            with contextlib.suppress(ConnectionError):
                writer.write(json.dumps({"ok": False, "error": "refused: the admin socket "
                                         "answers the gateway's own user and root only"})
                             .encode() + b"\n")
                await writer.drain()
            writer.close()
            return
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            request = json.loads(line or b"{}")
            command = request.get("command")
            if command == "status":
                answer: dict[str, Any] = {"ok": True, **self.gateway.status()}
            elif command == "reload":
                answer = await self.gateway.reload()
            elif command == "drain":
                answer = self.gateway.start_drain()
            elif command == "probe":
                answer = await self.gateway.probe(str(request.get("domain", "")))
            else:
                answer = {"ok": False, "error": f"unknown command {command!r}"}
        except (ValueError, TimeoutError, asyncio.LimitOverrunError) as exc:
            answer = {"ok": False, "error": f"bad request: {exc}"}
        except Exception as exc:  # report, never crash the daemon
            log_event(log, logging.ERROR, "admin.failed", reason=repr(exc))
            answer = {"ok": False, "error": repr(exc)}
        with contextlib.suppress(ConnectionError):
            writer.write(json.dumps(answer, default=str).encode() + b"\n")
            await writer.drain()
            writer.close()


def peer_credentials(sock: socket.socket | None) -> tuple[int, int]:
    """(uid, pid) of the process at the other end of a Unix socket (``SO_PEERCRED``);
    (-1, -1) when unknown, which is refused."""
    if sock is None:
        return -1, -1
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return -1, -1
    pid, uid, _gid = struct.unpack("3i", data)
    return uid, pid


def _check_directory(directory: Path) -> None:
    """Refuse a socket directory that another user owns or others may write to."""
    info = directory.stat()
    if info.st_uid not in (os.geteuid(), 0):
        raise PermissionError(f"admin socket directory {directory} belongs to uid "
                              f"{info.st_uid}, not to the gateway's user: refusing to use it")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        raise PermissionError(f"admin socket directory {directory} is writable by other "
                              f"users (mode {stat.S_IMODE(info.st_mode):o}): anyone could "
                              "replace the socket; chmod 700 it")


def query(path: Path, command: str, timeout: float = 10.0, **arguments: Any) -> dict[str, Any]:
    """Client side (blocking, for the CLI)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps({"command": command, **arguments}).encode() + b"\n")
        data = bytearray()
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)
