"""The XMPP servers a test or benchmark runs in its namespace (testbed/namespace.py): a real
Prosody and ejabberd as child processes with generated configurations, and the gateway as
``xmpp-gateway run`` (docs/interop.md). Everything is stopped by PID, also when the run
fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.net.s2s_record import ENVIRONMENT as RECORD_S2S
from gateway.net.s2s_record import split_documents
from testbed.namespace import IPS, REPO, Namespace, run, stop_process
from testbed.pki import Pki

PROSODY_CFG = """
run_as_root = true
daemonize = false
pidfile = "{dir}/prosody.pid"
data_path = "{dir}/data"
log = {{ {log_level} = "{dir}/prosody.log" }}
interfaces = {{ "{ip}" }}
s2s_interfaces = {{ "{ip}" }}
c2s_ports = {{ 5222 }}
s2s_ports = {{ 5269 }}
http_ports = {{}}
https_ports = {{}}
modules_enabled = {{ "roster", "saslauth", "tls", "dialback", "disco", "ping", "presence",
                    "blocklist"{more} }}
modules_disabled = {{ {disabled} }}
authentication = "internal_plain"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
s2s_require_encryption = {require_encryption}
s2s_secure_auth = {secure_auth}
ssl = {{ certificate = "{cert}"; key = "{key}"; cafile = "{cafile}" }}
{extra}
VirtualHost "{domain}"
"""


@dataclass
class Prosody:
    ns: Namespace
    pki: Pki
    domain: str = "a.example"
    tls: bool = True
    secure_auth: bool = True
    require_encryption: bool = True
    trusts_gateway: bool = True
    log_level: str = "debug"
    users: tuple[str, ...] = ("user",)
    # XEP-0198 on S2S (mod_smacks; smacks_s2s_resend: re-send unacknowledged stanzas over
    # a new link instead of bouncing them), XEP-0288 (mod_s2s_bidi), XEP-0368 direct TLS
    # listener port, and any more global config lines.
    smacks: bool = False
    smacks_resend: bool = False
    bidi: bool = False
    direct_tls_port: int | None = None
    extra: tuple[str, ...] = ()
    process: subprocess.Popen | None = None
    dir: Path = field(init=False)

    def start(self) -> Prosody:
        self.dir = self.ns.workdir / f"prosody-{self.domain}"
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "data").mkdir(parents=True)
        tls = self.pki.tls_settings(self.domain)
        cafile = self.pki.root / ("ca.crt" if self.trusts_gateway else "other-ca.crt")
        for path in (tls.certificate, tls.key):
            os.chmod(path, 0o644)
        config = self.dir / "prosody.cfg.lua"
        more = "".join(f', "{m}"' for m, on in (("smacks", self.smacks),
                                                 ("s2s_bidi", self.bidi)) if on)
        disabled = ", ".join(f'"{m}"' for m, off in (("tls", not self.tls),
                                                     ("s2s_bidi", not self.bidi)) if off)
        extra = list(self.extra)
        if self.smacks:
            extra.append(f"smacks_s2s_resend = {str(self.smacks_resend).lower()}")
        if self.direct_tls_port is not None:
            extra.append(f"s2s_direct_tls_ports = {{ {self.direct_tls_port} }}")
        config.write_text(PROSODY_CFG.format(
            dir=self.dir, ip=IPS[self.domain], domain=self.domain, cert=tls.certificate,
            key=tls.key, cafile=cafile, disabled=disabled, more=more, extra="\n".join(extra),
            require_encryption=str(self.require_encryption).lower(),
            secure_auth=str(self.secure_auth).lower(), log_level=self.log_level))
        for user in self.users:
            run([*self.ns.exec, "prosodyctl", "--config", str(config), "register", user,
                 self.domain, "pw"])
        out = (self.dir / "stdout").open("wb")
        self.process = subprocess.Popen([*self.ns.exec, "prosody", "--config", str(config)],
                                        stdout=out, stderr=subprocess.STDOUT)
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"prosody exited: {(self.dir / 'stdout').read_text()}")
            connect = f"import socket; socket.create_connection(('{IPS[self.domain]}', 5222), 1)"
            probe = subprocess.run([*self.ns.exec, sys.executable, "-c", connect],
                                   capture_output=True)
            if probe.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("prosody did not start listening")

    @property
    def log(self) -> str:
        path = self.dir / "prosody.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        stop_process(self.process)


@dataclass
class GatewayProcess:
    ns: Namespace
    pki: Pki
    partners: list[dict]
    domain: str = "gw.example"
    # ejabberd 23.01 crashes (badarg in xmpp_stream_pkix:get_cert_domains) on a client
    # certificate carrying id-on-xmppAddr; see docs/interop.md.
    xmpp_addrs: bool = True
    log_level: str = "debug"
    allow_unlisted: bool = False
    bidi: bool = True  # XEP-0288 (federation.bidi)
    sip: dict | None = None  # the `sip:` section (backend: sip …); None = development
    # Issue "nothing dropped silently": stop() fails when the gateway logged a dropped
    # stanza, unless the scenario expects drops (and counts them itself).
    drops_expected: bool = False
    extra: tuple[str, ...] = ()  # more top-level YAML lines, e.g. "metrics: {enabled: true}"
    # `limits:` entries added or replaced (e.g. max_connections for 10,000 idle sessions)
    limits: dict | None = None
    dnssec: bool = False  # believe the resolver's AD bit (DANE tests run a validating one)
    direct_tls_port: int | None = None  # a second listener, XEP-0368 direct TLS
    # Every byte the gateway writes on S2S is recorded before TLS (gateway/net/s2s_record.py)
    # and stop() fails the test on the first one a strict XML parser refuses. Benchmarks
    # turn it off: the recording costs a system call per write.
    record_s2s: bool = True
    process: subprocess.Popen | None = None
    dir: Path = field(init=False)

    @property
    def config(self) -> Path:
        return self.dir / "gateway.yaml"

    @property
    def recordings(self) -> Path:
        return self.dir / "s2s-output"

    def start(self) -> GatewayProcess:
        self.dir = self.ns.workdir / "gateway"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        tls = self.pki.tls_settings(self.domain, xmpp_addrs=self.xmpp_addrs)
        lines = [f"domains: [{self.domain}]",
                 f"listen: [{{host: {IPS[self.domain]}, port: 5269}}"
                 + (f", {{host: {IPS[self.domain]}, port: {self.direct_tls_port}, "
                    "direct_tls: true}" if self.direct_tls_port else "") + "]",
                 f"tls: {{certificate: {tls.certificate}, key: {tls.key}, "
                 f"ca_file: {self.pki.root / 'ca.crt'}, use_system_cas: false}}",
                 "dialback: {secret: interop-secret}",
                 "dns: {nameservers: ['127.0.0.53'], timeout: 3"
                 + (", dnssec: true}" if self.dnssec else "}"),
                 f"logging: {{level: {self.log_level}}}",
                 "limits: {" + ", ".join(f"{k}: {v}" for k, v in {
                     "negotiation_timeout": 10, "max_connections_per_ip": 5000,
                     **(self.limits or {})}.items()) + "}",
                 f"federation: {{allow_unlisted: {str(self.allow_unlisted).lower()}"
                 + ("" if self.bidi else ", bidi: false") + "}",
                 "store: {path: store.sqlite3}", "admin_socket: admin.sock"]
        if self.sip is not None:
            lines.append("sip: {" + ", ".join(f"{k}: {v}" for k, v in self.sip.items()) + "}")
        lines.extend(self.extra)
        lines.append("partners:")
        if not self.partners:
            lines[-1] = "partners: []"
        for p in self.partners:
            lines.append("  - {" + ", ".join(f"{k}: {v}" for k, v in p.items()) + "}")
        self.config.write_text("\n".join(lines) + "\n")
        self._launch("wb")
        return self

    def _launch(self, mode: str) -> None:
        out = (self.dir / "gateway.log").open(mode)
        env = {**os.environ, RECORD_S2S: str(self.recordings)} if self.record_s2s else None
        self.process = subprocess.Popen(
            [*self.ns.exec, sys.executable, "-m", "gateway.cli.main", "-c", str(self.config),
             "run"], stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        deadline = time.monotonic() + 15
        while not (self.dir / "admin.sock").exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not start: {self.log}")
            time.sleep(0.05)

    def restart(self, *, crash: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL with ``crash``) and start again with the same
        configuration and store, the log going on in the same file; returns once the new
        process answers."""
        if crash and self.process is not None:
            self.process.kill()
            self.process.wait(10)
        stop_process(self.process)
        (self.dir / "admin.sock").unlink(missing_ok=True)
        self._launch("ab")

    def status(self) -> dict:
        result = run([sys.executable, "-m", "gateway.cli.main", "-c", str(self.config), "status",
                      "--json"], cwd=REPO)
        return json.loads(result.stdout)

    @property
    def log(self) -> str:
        path = self.dir / "gateway.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        stop_process(self.process)
        if self.process is not None and not self.drops_expected:
            dropped = [line for line in self.log.splitlines() if "stanza.dropped" in line]
            assert not dropped, "the gateway dropped stanzas:\n" + "\n".join(dropped[:20])
        if self.process is not None and self.record_s2s:
            assert_well_formed_output(self.recordings)


def assert_well_formed_output(directory: Path) -> int:
    """Check every byte the gateway wrote on each S2S stream (recorded in ``directory``)
    with expat, as Prosody and ejabberd read it, namespaces included: each document whole
    when it ended with ``</stream:stream>``, else as far as it went. Returns the number of
    streams checked; raises AssertionError naming the stream, the offset and the bytes
    around the first one refused."""
    from xml.parsers import expat

    files = sorted(directory.glob("*.xml")) if directory.exists() else []
    for path in files:
        data = path.read_bytes()
        offset = 0
        for document in split_documents(data):
            parser = expat.ParserCreate(namespace_separator=" ")
            try:
                parser.Parse(document, document.endswith(b"</stream:stream>"))
            except expat.ExpatError as exc:
                at = offset + parser.CurrentByteIndex
                raise AssertionError(
                    f"the gateway wrote XML a partner refuses on {path.name} at byte {at}: "
                    f"{exc}: "
                    f"{data[max(0, at - 80):at + 40]!r}") from None
            offset += len(document)
    return len(files)


EJABBERD_YML = """hosts:
  - "{domain}"
loglevel: {log_level}
certfiles:
  - "{dir}/{domain}.pem"
ca_file: "{cafile}"
s2s_use_starttls: {starttls}
s2s_access: all
listen:
  - port: 5222
    ip: "{ip}"
    module: ejabberd_c2s
    starttls: false
  - port: 5269
    ip: "{ip}"
    module: ejabberd_s2s_in
    backlog: 1024  # default 5: bursts of new S2S connections (benchmark) lose SYNs
auth_method: internal
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
  s2s:
    allow: all
modules:
  mod_roster: {{}}
  mod_disco: {{}}
  mod_ping: {{}}
{dialback}
"""


@dataclass
class Ejabberd:
    """ejabberd 23.01 as a child process (recipe: docs/interop.md)."""

    ns: Namespace
    pki: Pki
    domain: str = "b.example"
    starttls: str = "required"  # required | optional | false
    dialback: bool = True
    trusts_gateway: bool = True
    log_level: str = "debug"
    process: subprocess.Popen | None = None
    dir: Path = field(init=False)

    def ctl(self, *args: str) -> list[str]:
        # Run as user 'ejabberd' ourselves instead of letting ejabberdctl `su` to it: the
        # su session gets PAM's soft limit of 1,024 open files, and ejabberd then fails its
        # accepts ("too many open files") long before 1,000 S2S sessions. setpriv keeps our
        # limits (an administrator would set LimitNOFILE= in the unit).
        user = ["env", "HOME=/var/lib/ejabberd", "setpriv", "--reuid", "ejabberd",
                "--regid", "ejabberd", "--init-groups"]
        return [*self.ns.exec, *user, "ejabberdctl", "--config-dir", str(self.dir), "--spool",
                str(self.dir / "spool"), "--logs", str(self.dir / "logs"), "--node",
                f"ejabberd-{self.ns.name}@localhost", *args]

    def start(self) -> Ejabberd:
        import pwd

        # Its own world-traversable directory: ejabberd runs as user 'ejabberd', which
        # cannot enter pytest's 0700 temporary directories.
        import tempfile

        self.dir = Path(tempfile.mkdtemp(prefix=f"gw-interop-ejabberd-{self.domain}-"))
        os.chmod(self.dir, 0o755)
        for sub in ("spool", "logs"):
            (self.dir / sub).mkdir(parents=True)
        tls = self.pki.tls_settings(self.domain)
        (self.dir / f"{self.domain}.pem").write_bytes(
            Path(tls.certificate).read_bytes() + Path(tls.key).read_bytes())
        cafile = self.pki.root / ("ca.crt" if self.trusts_gateway else "other-ca.crt")
        shutil.copy(cafile, self.dir / "ca.crt")
        (self.dir / "ejabberd.yml").write_text(EJABBERD_YML.format(
            domain=self.domain, dir=self.dir, cafile=self.dir / "ca.crt", ip=IPS[self.domain],
            starttls=self.starttls, dialback="  mod_s2s_dialback: {}" if self.dialback else "",
            log_level=self.log_level))
        (self.dir / "ejabberdctl.cfg").write_text(
            f'EJABBERD_CONFIG_PATH={self.dir / "ejabberd.yml"}\n'
            f'EJABBERD_PID_PATH={self.dir / "ejabberd.pid"}\n'
            'ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0"\n')
        shutil.copy("/etc/ejabberd/inetrc", self.dir / "inetrc")
        user = pwd.getpwnam("ejabberd")
        for path in [self.dir, *self.dir.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
        out = (self.dir / "stdout").open("wb")
        self.process = subprocess.Popen(self.ctl("foreground"), stdout=out,
                                        stderr=subprocess.STDOUT)
        try:
            self._wait_started()
            run(self.ctl("register", "user", self.domain, "pw"))
        except BaseException:
            self.stop()  # never leave a VM (and its epmd) behind a failed start
            raise
        return self

    def _wait_started(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ejabberd exited: {(self.dir / 'stdout').read_text()}")
            status = subprocess.run(self.ctl("status"), capture_output=True, text=True)
            if "is started" in status.stdout and "ejabberd" in status.stdout and \
                    "running" in status.stdout:
                return
            time.sleep(0.5)
        raise RuntimeError(f"ejabberd did not start: {self.log[-2000:]}")

    saved_log: str = ""

    @property
    def log(self) -> str:
        path = self.dir / "logs" / "ejabberd.log"
        return path.read_text(errors="replace") if path.exists() else self.saved_log

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            subprocess.run(self.ctl("stop"), capture_output=True, timeout=30)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                stop_process(self.process)
        # epmd outlives ejabberd; stop the one in our namespace by its PID.
        found = subprocess.run([*self.ns.exec, "ss", "-ltnpH", "sport = :4369"],
                               capture_output=True, text=True).stdout
        for part in found.split("pid=")[1:]:
            pid = int(part.split(",")[0])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        self.saved_log = self.log
        shutil.rmtree(self.dir, ignore_errors=True)
