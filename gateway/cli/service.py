"""``xmpp-gateway start|stop|restart``: the daemon on a host without systemd.

What ``prosodyctl start``/``ejabberdctl start`` give: the gateway in the background with a
pidfile, and the command returning only once the gateway answers (or failed, with the
end of its log). ``xmpp-gateway run`` stays the foreground form for systemd
(deploy/xmpp-gateway.service), containers and supervisors.

* The pidfile is ``gateway.pid`` beside the admin socket (``--pidfile`` to change it);
  ``run --pidfile`` writes it (so another supervisor can use it too) and removes it when
  the gateway exits.
* Output goes to ``logging.file`` when the configuration sets one, else to
  ``gateway.log`` beside the pidfile (``--log`` to change it): a background process
  has no terminal to write to.
* ``stop`` sends SIGTERM (the graceful stop; in a cluster, a drain) and waits for the
  process to end; it refuses a pid that is not a gateway's (a pidfile left by a crash
  whose pid was reused).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gateway.cli.common import load_or_report
from gateway.cli.main import config_parent


def register(subparsers: Any) -> None:
    for name, text, options, handler in (
            ("start", "start the gateway in the background (pidfile)", (_start_options,),
             _start),
            ("stop", "stop the gateway started with start (SIGTERM, wait)", (_stop_options,),
             _stop),
            ("restart", "stop, then start", (_stop_options, _start_options), _restart)):
        parser = subparsers.add_parser(name, parents=[config_parent()], help=text)
        parser.add_argument("--pidfile", type=Path, default=None,
                            help="default: gateway.pid beside the admin socket")
        for add in options:
            add(parser)
        parser.set_defaults(func=handler)


def _start_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", type=Path, default=None,
                        help="file for the gateway's output (default: logging.file, else "
                             "gateway.log beside the pidfile)")
    parser.add_argument("--wait", type=float, default=30.0,
                        help="seconds to wait for it to answer (default 30)")


def _stop_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for it to end (default: cluster.drain_timeout "
                             "+ 15)")


def pidfile_for(config: Any, given: Path | None) -> Path:
    return given if given is not None else Path(config.admin_socket).parent / "gateway.pid"


def write_pidfile(path: Path) -> None:
    """Our pid, written atomically (a reader never sees a half-written number)."""
    from gateway.auth.devcerts import atomic_write

    atomic_write(path, f"{os.getpid()}\n".encode())


def remove_pidfile(path: Path) -> None:
    """Remove ``path`` if it still names us (a newer gateway may have replaced it)."""
    if read_pid(path) == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(text) if text.isdigit() else None


def is_gateway(pid: int) -> bool:
    """Is ``pid`` a running gateway (not a pid reused by something else)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    if state == "Z":  # ended, not yet reaped
        return False
    words = [part.decode(errors="replace") for part in cmdline]
    return any(word.endswith(("xmpp-gateway", "gateway.cli.main")) for word in words) and \
        "run" in words


def _answering(config: Any) -> dict[str, Any] | None:
    from gateway.net.admin import query

    try:
        return query(config.admin_socket, "status", timeout=2)
    except OSError:
        return None


def _running_pid(config: Any, pidfile: Path) -> int | None:
    """The pid of the gateway serving this configuration: its pidfile, else the one its
    admin socket reports (a gateway started with `run`)."""
    pid = read_pid(pidfile)
    if pid is not None and is_gateway(pid):
        return pid
    status = _answering(config)
    if status is not None and is_gateway(int(status.get("pid", 0))):
        return int(status["pid"])
    return None


def _start(args: argparse.Namespace) -> int:
    config = load_or_report(args)
    if config is None:
        return 1
    pidfile = pidfile_for(config, args.pidfile)
    running = _running_pid(config, pidfile)
    if running is not None:
        print(f"the gateway is already running (pid {running}); "
              "xmpp-gateway restart to restart it")
        return 0
    with contextlib.suppress(FileNotFoundError):
        pidfile.unlink()  # left by a gateway that did not stop cleanly
    log_path = args.log or config.logging.file or pidfile.parent / "gateway.log"
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        written_before = log.tell()
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli.main", "-c", str(Path(args.config).resolve()),
             "run", "--pidfile", str(pidfile.resolve())],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd="/")
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            print(f"the gateway did not start (exit status {process.returncode}); the end of "
                  f"{log_path}:", file=sys.stderr)
            print(_tail(Path(log_path), written_before), file=sys.stderr)
            return 1
        if read_pid(pidfile) == process.pid and _answering(config) is not None:
            print(f"started the gateway (pid {process.pid}) with {args.config}; output: "
                  f"{log_path}; stop it with: xmpp-gateway stop")
            return 0
        time.sleep(0.1)
    print(f"the gateway (pid {process.pid}) does not answer on {config.admin_socket} after "
          f"{args.wait:g}s; see {log_path}", file=sys.stderr)
    return 1


def _tail(path: Path, offset: int, lines: int = 15) -> str:
    """The last ``lines`` lines written to ``path`` since ``offset`` (this start's)."""
    try:
        with path.open("rb") as file:
            file.seek(offset)
            text = file.read().decode(errors="replace")
    except OSError as exc:
        return f"({exc})"
    return "\n".join(text.splitlines()[-lines:])


def _stop(args: argparse.Namespace) -> int:
    config = load_or_report(args)
    if config is None:
        return 1
    pidfile = pidfile_for(config, args.pidfile)
    pid = _running_pid(config, pidfile)
    if pid is None:
        stale = read_pid(pidfile)
        if stale is not None:
            pidfile.unlink(missing_ok=True)
            print(f"the gateway is not running (removed {pidfile}, left with pid {stale})")
        else:
            print("the gateway is not running")
        return 0
    timeout = args.timeout if args.timeout is not None else config.cluster.drain_timeout + 15
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while is_gateway(pid):
        if time.monotonic() > deadline:
            print(f"the gateway (pid {pid}) is still running after {timeout:g}s (draining?); "
                  f"kill -KILL {pid} ends it at once", file=sys.stderr)
            return 1
        time.sleep(0.1)
    if read_pid(pidfile) == pid:
        pidfile.unlink(missing_ok=True)
    print(f"stopped the gateway (pid {pid})")
    return 0


def _restart(args: argparse.Namespace) -> int:
    status = _stop(args)
    return status if status != 0 else _start(args)
