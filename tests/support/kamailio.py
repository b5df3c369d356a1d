"""A real Kamailio (Debian package 5.6) started by a test: registrar, proxy and presence
server for one SIP domain, routing every other domain to the XMPP gateway.

The configuration is generated per run (ports, domain, gateway address): a minimal
registrar/proxy skeleton plus the presence modules: ``presence`` + ``presence_xml`` with
a ``db_text`` database copied from the package's table definitions into a temporary
directory. ``force_active`` makes every presence subscription active at once: authorizing
watchers is the job of the gateway's contact rules, not of this test server.

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

MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")
DBTEXT_TABLES = Path("/usr/share/kamailio/dbtext/kamailio")
REPO = Path(__file__).resolve().parents[2]
TABLES = ("version", "presentity", "active_watchers", "watchers", "xcap", "location")

CONFIG = """#!KAMAILIO
debug={debug}
log_stderror=yes
fork=yes
# UDP workers: one per core (docs/sip.md, Sizing Kamailio)
children={children}
tcp_children=2
# UDP receive buffer up to 8 MiB (the default cap is 256 KiB): bursts from the gateway
# (up to sip.max_in_flight requests) must not overflow it (docs/sip.md, Setting it up).
maxbuffer=8388608
listen=udp:{host}:{port}
listen=tcp:{host}:{port}
# Connections Kamailio opens (to the gateway) start from its own address, not from the
# host's primary one: the gateway trusts requests by source address (docs/sip.md).
tcp_source_ipv4={host}
{tls_listen}alias="{domain}"
mpath="{modules}/"
loadmodule "pv.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "sanity.so"
loadmodule "db_text.so"
loadmodule "presence.so"
loadmodule "presence_xml.so"
{tls_module}{auth_module}{dispatcher_module}modparam("presence", "db_url", "text://{dbdir}")
modparam("presence", "server_address", "sip:{host}:{port}")
modparam("presence", "subs_db_mode", 0)
modparam("presence_xml", "db_url", "text://{dbdir}")
modparam("presence_xml", "force_active", 1)
modparam("usrloc", "db_mode", 0)

request_route {{
  if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
  if (!sanity_check()) {{ xlog("L_WARN", "sanity check failed for $rm from $si\\n"); exit; }}
{auth_route}  if (has_totag()) {{
    if (is_method("SUBSCRIBE") && uri == myself) {{ route(PRESENCE); }}
    t_relay();
    exit;
  }}
  if (is_method("REGISTER")) {{ save("location"); exit; }}
  if ($rd == "{domain}" || uri == myself) {{
    if (is_method("{presence_methods}")) {{ route(PRESENCE); }}
    if (is_method("OPTIONS") && $rU == $null) {{ sl_send_reply("200", "OK"); exit; }}
{unregistered}    if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
    t_relay();
    exit;
  }}
  # Any other domain is XMPP: the gateway's SIP side.
{gateway_route}}}
{failure_route}
route[PRESENCE] {{
  if (!t_newtran()) {{ sl_reply_error(); exit; }}
  if (is_method("PUBLISH")) {{ handle_publish(); }} else {{ handle_subscribe(); }}
  t_release();
  exit;
}}
"""


def _md5(text: str) -> str:
    """HA1 of the subscriber table (RFC 2617 §3.2.2.2), as kamctl writes it."""
    return hashlib.md5(text.encode()).hexdigest()


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


# docs/sip.md "Security": the route that authenticates phones before anything is relayed.
AUTH_MODULE = """loadmodule "auth.so"
loadmodule "auth_db.so"
modparam("auth_db", "db_url", "text://{dbdir}")
modparam("auth_db", "calculate_ha1", yes)
modparam("auth_db", "password_column", "password")
"""
AUTH_ROUTE = """  # Phones prove who they are (digest, RFC 3261 §22) before anything is relayed; the
  # gateway's own requests (NOTIFYs, MESSAGEs from XMPP) are not challenged.
  if ($si != "{gateway_host}" && is_method("REGISTER|MESSAGE|SUBSCRIBE|PUBLISH|NOTIFY")) {{
    # flag 1: the From (To for REGISTER) user must be the authenticated user
    if (!auth_check("$fd", "subscriber", "1")) {{
      auth_challenge("$fd", "1");
      exit;
    }}
    consume_credentials();
    # RFC 3325 §5: never relay an identity the phone asserted itself; assert ours.
    remove_hf("P-Asserted-Identity");
    if (!is_method("REGISTER")) {{
      append_hf("P-Asserted-Identity: <sip:$fU@$fd>\\r\\n");
    }}
  }}
"""


# Phones as their own presence agents (no presence server for SUBSCRIBE): a SUBSCRIBE
# goes to the registered phone, and to a user without a registration the answer is 480
# Temporarily Unavailable (RFC 3261 §21.4.18: known, but not reachable now).
UNREGISTERED = """    if (is_method("SUBSCRIBE") && !lookup("location")) {{
      sl_send_reply("480", "Temporarily Unavailable"); exit;
    }}
"""

ONE_GATEWAY = """  $du = "sip:{host}:{port};transport={transport}";
  t_relay();
  exit;
"""

# Several gateway nodes (issue 15): dispatcher set 1, round robin, OPTIONS probing; a 503
# (draining node) or a timeout (dead node) moves the request to the next node.
DISPATCHER_MODULE = """loadmodule "dispatcher.so"
modparam("dispatcher", "list_file", "{list_file}")
modparam("dispatcher", "flags", 2)
modparam("dispatcher", "ds_ping_interval", 1)
modparam("dispatcher", "ds_probing_mode", 1)
modparam("dispatcher", "ds_probing_threshold", 1)
modparam("dispatcher", "ds_inactive_threshold", 1)
modparam("dispatcher", "ds_ping_reply_codes", "class=2")
modparam("dispatcher", "ds_ping_from", "sip:dispatcher@{domain}")
modparam("tm", "fr_timer", 2000)
"""
DISPATCHED = """  if (!ds_select_dst("1", "4")) {{ sl_send_reply("503", "No gateway node"); exit; }}
  t_on_failure("GATEWAY_FAILOVER");
  t_relay();
  exit;
"""
FAILOVER = """failure_route[GATEWAY_FAILOVER] {{
  if (t_is_canceled()) {{ exit; }}
  if (t_check_status("503|408") && ds_next_dst()) {{
    xlog("L_INFO", "gateway node failed, next: $du\\n");
    t_on_failure("GATEWAY_FAILOVER");
    t_relay();
  }}
}}
"""

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
        tlsf, qm or fm) are what bench/kamailio_alone.py varies. ``presence_server``
        False: Kamailio serves PUBLISH only and relays SUBSCRIBEs to the phones
        (:data:`UNREGISTERED`)."""
        self.workdir, self.domain, self.host, self.port = workdir, domain, host, port
        self.gateway, self.gateway_transport = gateway, gateway_transport
        self.gateways = gateways
        self.prefix = prefix or []
        self.debug = debug
        self.children, self.memory_manager = children, memory_manager
        self.tls = tls
        self.ca = ca
        # users → digest passwords: with any, phones must authenticate (AUTH_ROUTE)
        self.passwords = passwords or {}
        self.presence_server = presence_server
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "kamailio.log"

    @property
    def tls_port(self) -> int:
        return self.port + 1

    @property
    def config_path(self) -> Path:
        return self.workdir / "kamailio.cfg"

    def write_config(self) -> Path:
        dbdir = self.workdir / "db"
        dbdir.mkdir(parents=True, exist_ok=True)
        for table in TABLES:
            shutil.copy(DBTEXT_TABLES / table, dbdir / table)
        tls_listen = tls_module = auth_module = auth_route = ""
        if self.passwords:
            (dbdir / "subscriber").write_text(
                (DBTEXT_TABLES / "subscriber").read_text() + "".join(
                    f"{index}:{user}:{self.domain}:{password}:"
                    f"{_md5(f'{user}:{self.domain}:{password}')}:"
                    f"{_md5(f'{user}@{self.domain}:{self.domain}:{password}')}\n"
                    for index, (user, password) in enumerate(self.passwords.items(), 1)))
            auth_module = AUTH_MODULE.format(dbdir=dbdir)
            auth_route = AUTH_ROUTE.format(gateway_host=self.gateway[0])
        if self.tls is not None:
            tls_cfg = self.workdir / "tls.cfg"
            tls_cfg.write_text(TLS_CFG.format(
                certificate=self.tls[0], key=self.tls[1], verify="yes" if self.ca else "no",
                ca_list=f"ca_list = {self.ca}\n" if self.ca else ""))
            tls_listen = f"enable_tls=yes\nlisten=tls:{self.host}:{self.tls_port}\n"
            tls_module = f'loadmodule "tls.so"\nmodparam("tls", "config", "{tls_cfg}")\n'
        dispatcher_module = failure_route = ""
        gateway_route = ONE_GATEWAY.format(host=self.gateway[0], port=self.gateway[1],
                                           transport=self.gateway_transport)
        if self.gateways:
            list_file = self.workdir / "dispatcher.list"
            list_file.write_text("".join(
                f"1 sip:{host}:{port};transport={self.gateway_transport}\n"
                for host, port in self.gateways))
            dispatcher_module = DISPATCHER_MODULE.format(list_file=list_file,
                                                         domain=self.domain)
            gateway_route, failure_route = DISPATCHED.format(), FAILOVER.format()
        self.config_path.write_text(CONFIG.format(
            tls_listen=tls_listen, tls_module=tls_module, auth_module=auth_module,
            auth_route=auth_route, dispatcher_module=dispatcher_module,
            gateway_route=gateway_route, failure_route=failure_route,
            presence_methods="PUBLISH|SUBSCRIBE" if self.presence_server else "PUBLISH",
            unregistered="" if self.presence_server else UNREGISTERED.format(),
            debug=self.debug, children=self.children, host=self.host, port=self.port,
            domain=self.domain, modules=MODULES, dbdir=dbdir))
        return self.config_path

    def start(self, timeout: float = 15.0) -> Kamailio:
        self.write_config()
        check = subprocess.run([*self.prefix, "kamailio", "-c", "-f", str(self.config_path)],
                               capture_output=True, text=True, timeout=30)
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
            stdout=log, stderr=subprocess.STDOUT)
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
                code = ("import sys; from tests.support.kamailio import answers_options; "
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
