"""Linphone's console client, linphonec (Debian package linphone-cli), driven headless for
tests: a real SIP chat client with CPIM (``cpim_in_basic_chat_rooms_enabled``) and IMDN
(``im_notif_policy``) as Linphone users have them.

Its command interface is its standard input (``chat <uri> <text>`` sends a message; an
incoming one is printed as ``Message received from <uri>: <text>``). What it does not
print — its registration, the state of a sent message after an IMDN came back
(``DeliveredToUser``, ``Displayed``), the SIP messages it sent and received — is in its
debug log (``-d 6 -l file``), which the test reads. Started with its own HOME (its chat
database lives there) and stopped by PID.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

RC = """[sip]
sip_port={port}
sip_tcp_port=-1
sip_tls_port=-1
im_notif_policy=all
default_proxy=0
register_only_when_network_is_up=0
[net]
ipv6=0
[proxy_0]
reg_proxy=<sip:{proxy};transport=udp>
reg_route=<sip:{proxy};transport=udp;lr>
reg_identity=sip:{user}@{domain}
reg_expires=300
reg_sendregister=1
publish=0
cpim_in_basic_chat_rooms_enabled={cpim}
# Linphone 5.1 reads this account setting from the defaults of accounts
# (linphone_config_get_default_int: the "<section>_default_values" section)
[proxy_default_values]
cpim_in_basic_chat_rooms_enabled={cpim}
[sound]
echocancellation=0
[video]
enabled=0
"""


def available() -> bool:
    return shutil.which("linphonec") is not None


class Linphonec:
    def __init__(self, workdir: Path, *, user: str, domain: str, proxy: tuple[str, int],
                 port: int, cpim: bool, prefix: list[str] | None = None) -> None:
        self.dir = workdir
        self.user, self.domain, self.proxy, self.port, self.cpim = user, domain, proxy, \
            port, cpim
        self.prefix = prefix or []
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def log_path(self) -> Path:
        return self.dir / "linphone.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 15.0) -> Linphonec:
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / ".local" / "share" / "linphone").mkdir(parents=True)
        rc = self.dir / "linphonerc"
        rc.write_text(RC.format(port=self.port, proxy=f"{self.proxy[0]}:{self.proxy[1]}",
                                user=self.user, domain=self.domain, cpim=int(self.cpim)))
        self.process = subprocess.Popen(
            [*self.prefix, "env", f"HOME={self.dir}", "linphonec", "-c", str(rc), "-d", "6",
             "-l", str(self.log_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.wait_log(r"RegistrationOk", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def command(self, line: str) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def chat(self, uri: str, text: str) -> None:
        """Send ``text`` to ``uri`` as its user would (``chat``: no quotes, they would
        be sent too)."""
        self.command(f"chat {uri} {text}")

    def wait_output(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        return self._wait(lambda: "".join(self.output), pattern, timeout, "output")

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        return self._wait(self.log, pattern, timeout, "log")

    def _wait(self, read, pattern: str, timeout: float, what: str) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        compiled = re.compile(pattern)
        while time.monotonic() < deadline:
            found = compiled.search(read())
            if found is not None:
                return found
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"linphonec {self.user}: no {pattern!r} in its {what}; output:\n"
                             f"{''.join(self.output)[-1500:]}\nlog:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.command("quit")
            self.process.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(5)
