"""Sets the demo's stage, runs the conversation, prints it, and takes everything down.

The stage is the interop tests' (testbed/namespace.py, testbed/servers.py): a network
namespace named after our PID with dnsmasq answering for ``*.example``, Prosody for
a.example with one user (alice), the gateway for gw.example as ``xmpp-gateway run`` and,
for ``--sip``, Kamailio as registrar, proxy and presence server of gw.example. Every process
is our child and is stopped by PID; the namespace and the working directory are removed,
also on failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from demo import conversation
from demo.report import format_report
from testbed.in_namespace import run_in_namespace
from testbed.kamailio import Kamailio
from testbed.namespace import IPS, Namespace
from testbed.pki import Pki
from testbed.servers import GatewayProcess, Prosody

GW = IPS["gw.example"]
KAMAILIO_PORT = 5070
GATEWAY_SIP_PORT = 5062
SIP_TRANSPORT = "udp"
PARTNER = {"domain": "a.example", "type": "federated", "tls": "required", "sasl": "optional",
           "dialback": "true"}
DEADLINE = 45.0  # seconds for the whole conversation (each step has its own, shorter one)


def missing_tools(sip: bool) -> list[str]:
    tools = ["ip", "prosody", "prosodyctl", "dnsmasq", *(["kamailio"] if sip else [])]
    return [t for t in tools if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]


def setting(ns: Namespace, sip: bool) -> list[str]:
    partner = ", ".join(f"{k}={v}" for k, v in PARTNER.items() if k != "domain")
    lines = [f"network namespace {ns.name} (made for this run; dnsmasq answers for *.example)",
             f"Prosody   a.example   {IPS['a.example']}:5269  one user: alice@a.example",
             f"gateway   gw.example  {GW}:5269  partner a.example: {partner}"]
    if sip:
        lines += [f"          SIP backend → Kamailio {GW}:{KAMAILIO_PORT} over "
                  f"{SIP_TRANSPORT.upper()} (gateway's SIP side on {GW}:{GATEWAY_SIP_PORT})",
                  f"Kamailio  gw.example  {GW}:{KAMAILIO_PORT}  registrar, proxy, presence; "
                  "SIP user bob@gw.example"]
    else:
        lines.append("          development backend: echo@gw.example answers every message")
    return lines


def tail(label: str, text: str, lines: int = 25) -> str:
    return f"--- {label} (last {lines} lines) ---\n" + "\n".join(text.splitlines()[-lines:])


def play(sip: bool, workdir: Path) -> int:
    started = time.monotonic()
    ns = Namespace(f"gwdemo{os.getpid()}", workdir)
    talk = conversation.Conversation()
    expected = 4 if sip else 3
    with contextlib.ExitStack() as stage:
        print("starting: network namespace, DNS, Prosody, "
              + ("Kamailio, " if sip else "") + "the gateway …", flush=True)
        ns.up()
        stage.callback(ns.down)
        pki = Pki(workdir / "pki")
        prosody = Prosody(ns, pki, users=("alice",), log_level="info")
        stage.callback(prosody.stop)
        prosody.start()
        kamailio = None
        sip_section = None
        if sip:
            (workdir / "kamailio").mkdir()
            kamailio = Kamailio(workdir / "kamailio", domain="gw.example", host=GW,
                                port=KAMAILIO_PORT, gateway=(GW, GATEWAY_SIP_PORT),
                                gateway_transport=SIP_TRANSPORT, prefix=ns.exec)
            stage.callback(kamailio.stop)
            kamailio.start()
            sip_section = {"backend": "sip", "proxy_host": GW, "proxy_port": KAMAILIO_PORT,
                           "transport": SIP_TRANSPORT, "local_host": GW,
                           "local_port": GATEWAY_SIP_PORT}
        gateway = GatewayProcess(ns, pki, [PARTNER], log_level="info", sip=sip_section)
        stage.callback(gateway.stop)
        gateway.start()
        print(f"ready in {time.monotonic() - started:.1f} s; talking …\n", flush=True)

        async def scenario() -> None:
            if sip:
                await conversation.sip(talk, (GW, KAMAILIO_PORT), SIP_TRANSPORT)
            else:
                await conversation.development(talk)

        failure = ""
        try:
            run_in_namespace(ns.name, scenario, timeout=DEADLINE)
        except Exception as exc:  # recorded steps say which one; say why here
            failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        try:
            sessions = gateway.status()["sessions"]
        except Exception as exc:
            sessions, failure = [], failure or f"xmpp-gateway status failed: {exc}"
        title = "xmpp-gateway demo: Prosody ⇄ gateway" + (
            " ⇄ Kamailio ⇄ SIP phone (sip backend)" if sip else " (development backend)")
        print(format_report(title, setting(ns, sip), talk.steps, expected, sessions,
                            time.monotonic() - started))
        ok = not failure and len(talk.steps) == expected and all(s.ok for s in talk.steps)
        if not ok:
            print(f"\nwhat went wrong: {failure or 'a step failed'}\n"
                  + tail("gateway log", gateway.log)
                  + ("\n" + tail("kamailio log", kamailio.log()) if kamailio else "")
                  + "\n" + tail("prosody log", prosody.log), file=sys.stderr)
    print("stopped Prosody, " + ("Kamailio, " if sip else "") + "the gateway and dnsmasq; "
          f"removed namespace {ns.name}.")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make demo", description="Watch the gateway federate with a real Prosody "
        "(and, with --sip, talk to a SIP phone through Kamailio), in a throw-away network "
        "namespace. Needs root and the Debian packages `make debs` installs.")
    parser.add_argument("--sip", action="store_true",
                        help="use the SIP backend with Kamailio and a SIP user agent")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("make demo needs root: it creates a network namespace (ip netns add).",
              file=sys.stderr)
        return 2
    if missing := missing_tools(args.sip):
        print(f"not installed: {', '.join(missing)} — run `make debs` (as root).",
              file=sys.stderr)
        return 2
    # SIGTERM (e.g. a timeout around `make demo`) unwinds like Ctrl-C: the stage is taken
    # down by the ExitStack instead of leaving processes and a namespace behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="xmpp-gateway-demo-"))
    try:
        return play(args.sip, workdir)
    except KeyboardInterrupt:
        print("interrupted; everything stopped.", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
