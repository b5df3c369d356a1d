"""A real Kamailio (Debian package 5.6) started by a test, running the shipped
configuration ``deploy/kamailio/kamailio.cfg``: registrar, proxy and presence server for
one SIP domain, routing every other domain to the XMPP gateway.

The shipped file is used as it is; what varies per run (addresses, ports, domain, the
gateway, the optional digest authentication, TLS and dispatcher) is written into a
``kamailio-local.cfg`` beside the run's data, exactly as an operator writes theirs, and
Kamailio is started in that directory so the file's ``import_file "kamailio-local.cfg"``
finds it. The db_text tables are copied from the package's definitions into the run's
directory.

Started in the foreground (``-DD -E``), stopped by PID (SIGTERM to the main process stops
its children), logs kept for failure reports.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DBTEXT_TABLES = Path("/usr/share/kamailio/dbtext/kamailio")
REPO = Path(__file__).resolve().parents[1]
#: The configuration operators install; the tests, the demo and the benchmarks run it.
SHIPPED_CONFIG = REPO / "deploy" / "kamailio" / "kamailio.cfg"
TABLES = ("version", "presentity", "active_watchers", "watchers", "xcap", "location")

def _md5(text: str) -> str:
    """HA1 of the subscriber table (RFC 2617 §3.2.2.2), as kamctl writes it."""
    return hashlib.md5(text.encode()).hexdigest()


def local_config(values: dict[str, object], features: list[str], *, log_level: int,
                 children: int) -> str:
    """A ``kamailio-local.cfg``: one ``#!substdef`` per site value (it replaces the name in
    quoted strings too), one ``#!define`` per feature, as docs/getting-started.md shows."""
    for name, value in values.items():
        if "!" in str(value) or "\n" in str(value):
            raise ValueError(f"{name}: {value!r} cannot be written in a #!substdef")
    return "".join([
        *(f'#!substdef "!{name}!{value}!g"\n' for name, value in values.items()),
        f"#!define LOG_LEVEL {log_level}\n", f"#!define UDP_CHILDREN {children}\n",
        *(f"#!define {feature}\n" for feature in features)])


def answers_options(host: str, port: int, domain: str) -> bool:
    """One OPTIONS over UDP answered 200, and a TCP connect that succeeds."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(0.3)
            udp.bind((host, 0))
            local = udp.getsockname()[1]
            probe = (f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
                     f"Via: SIP/2.0/UDP {host}:{local};branch=z9hG4bKprobe{local}\r\n"
                     f"Max-Forwards: 70\r\nFrom: <sip:probe@{domain}>;tag=p\r\n"
                     f"To: <sip:{host}>\r\nCall-ID: probe{local}\r\nCSeq: 1 OPTIONS\r\n"
                     "Content-Length: 0\r\n\r\n")
            udp.sendto(probe.encode(), (host, port))
            if not udp.recv(4096).startswith(b"SIP/2.0 200"):
                return False
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


TLS_CFG = """[server:default]
method = TLSv1.2+
verify_certificate = {verify}
require_certificate = {verify}
certificate = {certificate}
private_key = {key}
{ca_list}
[client:default]
method = TLSv1.2+
verify_certificate = {verify}
require_certificate = {verify}
certificate = {certificate}
private_key = {key}
{ca_list}"""


class Kamailio:
    """``tls=(certificate, key)`` adds a TLS listener on ``port + 1`` (module tls.so from
    Debian's kamailio-tls-modules) and presents that certificate in both directions. With
    ``ca`` (a CA file) the TLS is mutual both ways: ``verify_certificate`` and
    ``require_certificate`` on for the connections the gateway opens to Kamailio and for
    those Kamailio opens to the gateway, i.e. each side verifies the other's certificate."""

    def __init__(self, workdir: Path, *, domain: str, host: str = "127.0.0.1", port: int,
                 gateway: tuple[str, int], gateway_transport: str = "udp",
                 prefix: list[str] | None = None, debug: int = 2,
                 tls: tuple[Path, Path] | None = None, ca: Path | None = None,
                 passwords: dict[str, str] | None = None,
                 gateways: list[tuple[str, int]] | None = None, children: int = 2,
                 memory_manager: str = "tlsf", presence_server: bool = True) -> None:
        """``gateways``: several gateway nodes behind the dispatcher module (``gateway``
        is then ignored). ``children`` (UDP workers) and ``memory_manager`` (``-x``:
        tlsf, qm or fm) are what bench/tools/kamailio_alone.py varies. ``presence_server``
        False: the phones are their own presence agents (WITH_PHONE_PRESENCE)."""
        self.workdir, self.domain, self.host, self.port = workdir, domain, host, port
        self.gateway, self.gateway_transport = gateway, gateway_transport
        self.gateways = gateways
        self.prefix = prefix or []
        self.debug = debug
        self.children, self.memory_manager = children, memory_manager
        self.tls = tls
        self.ca = ca
        # users → digest passwords: with any, phones must authenticate (WITH_AUTH)
        self.passwords = passwords or {}
        self.presence_server = presence_server
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "kamailio.log"

    @property
    def tls_port(self) -> int:
        return self.port + 1

    @property
    def config_path(self) -> Path:
        """The configuration Kamailio runs: the shipped file, as it is."""
        return SHIPPED_CONFIG

    @property
    def local_config_path(self) -> Path:
        """This run's values, read by the shipped file's ``import_file``."""
        return self.workdir / "kamailio-local.cfg"

    @property
    def ctl_socket(self) -> Path:
        """``kamcmd -s unix:PATH`` reaches this instance (the shipped file loads ctl.so)."""
        return self.workdir / "ctl.sock"

    def write_config(self) -> Path:
        """Write the db_text tables, tls.cfg / dispatcher.list when used, and
        ``kamailio-local.cfg``; returns the local file."""
        dbdir = self.workdir / "db"
        dbdir.mkdir(parents=True, exist_ok=True)
        for table in TABLES:
            shutil.copy(DBTEXT_TABLES / table, dbdir / table)
        values = {"SIP_DOMAIN": self.domain, "SIP_ADDR": self.host, "SIP_PORT": self.port,
                  "SIP_TLS_PORT": self.tls_port, "GW_ADDR": self.gateway[0],
                  "GW_PORT": self.gateway[1], "GW_TRANSPORT": self.gateway_transport,
                  "DB_URL": f"text://{dbdir}", "CTL_SOCKET": f"unix:{self.ctl_socket}"}
        features: list[str] = []
        if self.passwords:
            (dbdir / "subscriber").write_text(
                (DBTEXT_TABLES / "subscriber").read_text() + "".join(
                    f"{index}:{user}:{self.domain}:{password}:"
                    f"{_md5(f'{user}:{self.domain}:{password}')}:"
                    f"{_md5(f'{user}@{self.domain}:{self.domain}:{password}')}\n"
                    for index, (user, password) in enumerate(self.passwords.items(), 1)))
            features.append("WITH_AUTH")
        if self.tls is not None:
            tls_cfg = self.workdir / "tls.cfg"
            tls_cfg.write_text(TLS_CFG.format(
                certificate=self.tls[0], key=self.tls[1], verify="yes" if self.ca else "no",
                ca_list=f"ca_list = {self.ca}\n" if self.ca else ""))
            values["TLS_CONFIG"] = tls_cfg
            features.append("WITH_TLS")
        if not self.presence_server:
            features.append("WITH_PHONE_PRESENCE")
        if self.gateways:
            list_file = self.workdir / "dispatcher.list"
            list_file.write_text("".join(
                f"1 sip:{host}:{port};transport={self.gateway_transport}\n"
                for host, port in self.gateways))
            values["DISPATCHER_LIST"] = list_file
            features.append("WITH_DISPATCHER")
        self.local_config_path.write_text(local_config(
            values, features, log_level=self.debug, children=self.children))
        return self.local_config_path

    def start(self, timeout: float = 15.0) -> Kamailio:
        self.write_config()
        # Started in the run's directory: the shipped file imports "kamailio-local.cfg"
        # from the current directory first.
        check = subprocess.run([*self.prefix, "kamailio", "-c", "-f", str(self.config_path)],
                               capture_output=True, text=True, timeout=30, cwd=self.workdir)
        if check.returncode != 0:
            raise RuntimeError(f"kamailio config check failed:\n{check.stderr[-3000:]}")
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            # 1 GB of shared memory: tm keeps every transaction 5 s after it ends (its
            # wait timer), about 13 KB each, so 10,000 MESSAGE/s need ~650 MB; the default
            # 64 MB runs out already at 1,000/s ("could not allocate shared memory from shm
            # pool") and requests are dropped until they are resent. Memory is only used
            # as far as it is needed. TLSF (O(1)) as the memory manager: the default "qm"
            # of Debian's build is the debugging allocator, and with tens of thousands of
            # live transactions its free-list search was half of Kamailio's CPU (perf):
            # 63-93 us per relayed MESSAGE with qm, 19-24 us with tlsf (docs/sip.md, Sizing).
            [*self.prefix, "kamailio", "-DD", "-E", "-m", "1024", "-x", self.memory_manager,
             "-f", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Ready when it answers OPTIONS on UDP and its TCP port accepts (probed from inside
        the namespace when the server runs in one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"kamailio exited:\n{self.log()[-3000:]}")
            if self.prefix:
                code = ("import sys; from testbed.kamailio import answers_options; "
                        f"sys.exit(0 if answers_options({self.host!r}, {self.port}, "
                        f"{self.domain!r}) else 1)")
                ready = subprocess.run([*self.prefix, sys.executable, "-c", code],
                                       cwd=REPO, capture_output=True).returncode == 0
            else:
                ready = answers_options(self.host, self.port, self.domain)
            if ready:
                return
            time.sleep(0.1)
        raise RuntimeError(f"kamailio not ready after {timeout}s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
