"""A real PostgreSQL server (Debian package ``postgresql``) as a child process, for tests.

``initdb`` makes a cluster in a fresh temporary directory; the server (``postgres``, the
binary ``pg_ctl`` would start) runs in the foreground as our child on a loopback port and
a private socket directory, and is stopped by its PID (SIGINT = PostgreSQL's "fast
shutdown", then SIGKILL) also when a test fails. PostgreSQL refuses to run as root, so
when the tests run as root both run as the ``postgres`` user through ``setpriv`` (which
execs, so the PID we hold is the postmaster's own).

Durability is switched off (``fsync=off``): nothing here must survive a power cut, and it
makes ``CREATE DATABASE`` per test cheap enough to give every test an empty database.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from testbed.dnsmasq import free_port

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def postgres_bindir() -> Path | None:
    """The newest installed server's bin directory, or None when none is installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory; ``start``/``stop``/``kill`` by PID."""

    def __init__(self, bindir: Path, *, prefix: list[str] | None = None,
                 host: str = "127.0.0.1") -> None:
        """``prefix`` runs the server elsewhere, e.g. ``ip netns exec NAME`` (then only
        processes in that namespace can reach it, at ``host``)."""
        self.bindir = bindir
        self.prefix = list(prefix or [])
        self.host = host
        self.root = Path(tempfile.mkdtemp(prefix=f"gw-pg-{os.getpid()}-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.sockets.mkdir()
        self.port = free_port(kind=socket.SOCK_STREAM)
        self.process: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            os.chown(self.sockets, account.pw_uid, account.pw_gid)
            self._as_user = ["setpriv", f"--reuid={account.pw_uid}",
                             f"--regid={account.pw_gid}", "--init-groups", "--"]
        self.log = self.root / "server.log"

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{dbname}"

    def initdb(self) -> None:
        result = subprocess.run(
            [*self.prefix, *self._as_user, str(self.bindir / "initdb"), "-D", str(self.data), "-U",
             "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"],
            capture_output=True, timeout=120, cwd=self.root, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed ({result.returncode}): "
                               f"{result.stderr.decode(errors='replace')[-2000:]}")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        assert self.process is None, "already running"
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            [*self.prefix, *self._as_user, str(self.bindir / "postgres"), "-D",
             str(self.data), "-p", str(self.port), "-k", str(self.sockets),
             "-c", f"listen_addresses={self.host}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=100", "-c", "shared_buffers=16MB"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                raise RuntimeError(f"postgres exited at start: {self.log.read_text()[-2000:]}")
            ready = subprocess.run(
                [*self.prefix, str(self.bindir / "pg_isready"), "-h", self.host, "-p",
                 str(self.port),
                 "-t", "1"], capture_output=True, check=False, timeout=10)
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postgres not ready after {START_TIMEOUT} s: "
                           f"{self.log.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGINT) -> None:
        """Stop the server by its PID (SIGINT: fast shutdown; SIGKILL if it hangs)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT)
        if sig == signal.SIGKILL:  # the backends it forked outlive a killed postmaster
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            time.sleep(0.2)

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"gw_test_{next(self._names)}"
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
