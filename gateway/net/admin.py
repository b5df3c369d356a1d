"""Local admin socket: ``xmpp-gateway status`` and ``reload`` talk to the daemon here.

A Unix socket with owner-only permissions (0600 in a 0700 directory): only the gateway's
own user (or root) can query sessions or trigger a reload. One JSON request line, one
JSON response line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
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
