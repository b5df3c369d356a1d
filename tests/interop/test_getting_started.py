"""docs/getting-started.md, followed literally.

The page is the lab: four hosts (the gateway, Prosody, ejabberd, Kamailio) and DNS. Here
each host is a network namespace of its own on one bridge (192.0.2.0/24), with private
``/etc/<server>``, ``/var/lib``, ``/var/log`` and ``/run`` (a mount namespace over copies of
what the Debian packages installed), so that the page's commands — ``install … /etc/prosody``,
``prosodyctl start``, ``ejabberdctl start``, ``kamailio -f /etc/kamailio/kamailio.cfg`` —
run exactly as printed without touching this machine's own files.

What is taken from the page, and nothing else:

* the ``<!-- lab: dns -->`` block: the zone lines, served by dnsmasq as written;
* every ``<!-- lab: HOST -->`` ``sh`` block, run in that host's namespace by ``bash -e`` in
  page order (the gateway's and Kamailio's from the checkout, the others from ``$HOME``);
  the ``export`` lines of a host's earlier blocks carry over, as in one terminal per host;
* the ``<!-- lab: step NAME -->`` markers: where the page tells the reader to use an XMPP
  client or a SIP phone; the test does it there, as the user the page names.

Every ``sh`` block of the page must carry a marker, so the page cannot grow a command this
test does not run; a command that fails, or a message that does not arrive, fails the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.dnsmasq import DnsmasqServer

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "getting-started.md"
HOSTS = {"gw": "192.0.2.10", "fabrikam": "192.0.2.20", "northwind": "192.0.2.30",
         "sip": "192.0.2.40"}
DNS = "192.0.2.53"
# What each host's packages installed and its boot made: copied, then mounted over the
# real paths inside that host's mount namespace (owner, mode).
PRIVATE = {
    "fabrikam": {"/etc/prosody": None, "/var/lib/prosody": ("prosody", "prosody", 0o750),
                 "/var/log/prosody": ("prosody", "adm", 0o750),
                 "/run/prosody": ("prosody", "prosody", 0o755)},
    "northwind": {"/etc/ejabberd": None, "/var/lib/ejabberd": ("ejabberd", "ejabberd", 0o700),
                  "/var/log/ejabberd": ("ejabberd", "adm", 0o750),
                  "/run/ejabberd": ("ejabberd", "ejabberd", 0o755)},
    "sip": {"/etc/kamailio": None},
    "gw": {},
}
FROM_CHECKOUT = {"gw", "sip"}  # the page runs these hosts' commands in the checkout

pytestmark = pytest.mark.interop


# ------------------------------------------------------------------------- the page


@dataclass(frozen=True)
class Block:
    kind: str  # "dns", a host name, or "step"
    text: str  # the block's content, or the step's name


MARKER = re.compile(r"^<!-- lab: (\S+)(?: (\S+))? -->$")


def read_page(text: str) -> list[Block]:
    """The page's marked blocks in order; every sh block must be marked."""
    lines = text.splitlines()
    blocks: list[Block] = []
    pending: str | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        marker = MARKER.match(line)
        if marker:
            kind, name = marker.groups()
            if kind == "step":
                assert name, f"line {index + 1}: a step needs a name"
                blocks.append(Block("step", name))
            else:
                assert kind == "dns" or kind in HOSTS, f"line {index + 1}: unknown host {kind}"
                pending = kind
        elif line.startswith("```"):
            info = line[3:].strip()
            end = lines.index("```", index + 1)
            body = "\n".join(lines[index + 1:end]) + "\n"
            if pending is not None:
                blocks.append(Block(pending, body))
            else:
                assert info != "sh", (f"line {index + 1}: an sh block without a "
                                      "<!-- lab: HOST --> marker")
            pending = None
            index = end
        elif line.strip() and pending is not None:
            raise AssertionError(f"line {index + 1}: a lab marker must be followed by its "
                                 "code block")
        index += 1
    return blocks


def zone_records(zone: str) -> tuple[dict[str, str], list[tuple[str, str, int, int, int]]]:
    """A and SRV lines of a zone fragment, as dnsmasq options."""
    hosts: dict[str, str] = {}
    srv: list[tuple[str, str, int, int, int]] = []
    for line in zone.splitlines():
        fields = line.split()
        if not fields:
            continue
        name = fields[0].rstrip(".")
        if fields[1:3] == ["IN", "A"]:
            hosts[name] = fields[3]
        elif fields[1:3] == ["IN", "SRV"]:
            priority, weight, port, target = fields[3:7]
            srv.append((name, target.rstrip("."), int(port), int(priority), int(weight)))
        else:
            raise AssertionError(f"a zone line this lab does not serve: {line}")
    return hosts, srv


def test_every_command_of_the_page_is_marked_for_a_host() -> None:
    blocks = read_page(PAGE.read_text())
    kinds = [block.kind for block in blocks]
    assert kinds.count("dns") == 1 and set(HOSTS) <= set(kinds)
    steps = [block.text for block in blocks if block.kind == "step"]
    assert steps == ["alice-writes-to-echo", "alice-and-carol", "carol-reads-bob"]
    with pytest.raises(AssertionError, match="without a <!-- lab: HOST --> marker"):
        read_page("text\n```sh\nrm -rf /\n```\n")


# ------------------------------------------------------------------------- the hosts


class Lab:
    """The namespaces, their private directories, dnsmasq; everything removed by stop()."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        tag = f"gs{os.getpid() % 100000}"
        self.hub = f"{tag}hub"
        self.ns = {host: f"{tag}{host}" for host in HOSTS}
        # $HOME: traversable by the servers' users, as a home directory is
        self.home = Path(tempfile.mkdtemp(prefix="gw-getting-started-"))
        os.chmod(self.home, 0o755)
        self.dns: DnsmasqServer | None = None
        self.logs: list[Path] = []

    def exec(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[host]]

    def up(self, zone: str) -> None:
        run(["ip", "netns", "add", self.hub])
        run(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.hub, "addr", "add", f"{DNS}/24", "dev", "br0"])
        run(["ip", "-n", self.hub, "link", "set", "br0", "up"])
        for host, address in HOSTS.items():
            ns = self.ns[host]
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", self.hub, "link", "add", f"v{host}", "type", "veth", "peer",
                 "name", "eth0", "netns", ns])
            run(["ip", "-n", self.hub, "link", "set", f"v{host}", "master", "br0", "up"])
            run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text(f"nameserver {DNS}\n")
            (etc / "hosts").write_text("127.0.0.1 localhost\n")
            self._private(host)
        hosts, srv = zone_records(zone)
        self.dns = DnsmasqServer(self.workdir / "dns", host_records=hosts, srv_records=srv,
                                 address=DNS, port=53, prefix=("ip", "netns", "exec", self.hub)
                                 ).start()

    def _private(self, host: str) -> None:
        import grp
        import pwd

        root = self.workdir / host
        for path, owner in PRIVATE[host].items():
            copy = root / path.strip("/").replace("/", "-")
            if owner is None:  # a package's configuration directory, as installed
                root.mkdir(parents=True, exist_ok=True)
                run(["cp", "-a", path, str(copy)])  # owners and modes too
                continue
            copy.mkdir(parents=True)
            user, group, mode = owner
            os.chown(copy, pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid)
            os.chmod(copy, mode)
        for shared in ("var-lib", "var-log", "run"):
            (root / shared).mkdir(parents=True, exist_ok=True)

    def mounts(self, host: str) -> str:
        """Shell lines giving ``host`` its own /var/lib, /var/log, /run and /etc/<server>."""
        root = self.workdir / host
        lines = [f"mount --bind {root / 'var-lib'} /var/lib",
                 f"mount --bind {root / 'var-log'} /var/log",
                 f"mount --bind {root / 'run'} /run"]
        for path in PRIVATE[host]:
            copy = root / path.strip("/").replace("/", "-")
            if path.startswith(("/var/lib/", "/var/log/", "/run/")):
                lines.append(f"mkdir -p {path} && mount --bind {copy} {path}")
            else:
                lines.append(f"mount --bind {copy} {path}")
        return "\n".join(lines) + "\n"

    def shell(self, host: str, script: str, exports: list[str], timeout: float = 120) -> str:
        """Run the page's ``script`` as ``host``; its output, or an AssertionError with it."""
        log = self.workdir / f"{len(self.logs):02d}-{host}.log"
        self.logs.append(log)
        cwd = REPO if host in FROM_CHECKOUT else self.home
        program = ("set -e -o pipefail\n" + self.mounts(host) + f"cd {cwd}\n"
                   + "".join(f"{line}\n" for line in exports) + "set -x\n" + script)
        env = {"HOME": str(self.home), "LANG": "C.UTF-8",
               "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        with log.open("w") as out:
            # Output to a file, not a pipe: the daemons the page starts keep theirs open.
            done = subprocess.run([*self.exec(host), "unshare", "--mount", "--propagation",
                                   "private", "bash", "-c", program], stdout=out,
                                  stderr=subprocess.STDOUT, env=env, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        text = log.read_text(errors="replace")
        assert done.returncode == 0, f"{host} block failed (exit {done.returncode}):\n{text}"
        return text

    def stop(self) -> None:
        """End every process still running in the lab's namespaces (all started by the
        lab), by pid, then remove the namespaces and their files."""
        for ns in [*self.ns.values(), self.hub]:
            listed = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                    text=True).stdout.split()
            for pid in map(int, listed):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.dns is not None:
            self.dns.stop()
        for ns in [*self.ns.values(), self.hub]:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        shutil.rmtree(self.home, ignore_errors=True)

    def explain(self) -> str:
        parts = [f"--- {log.name} ---\n{log.read_text(errors='replace')[-3000:]}"
                 for log in self.logs[-4:]]
        gateway_log = self.home / "xmpp-lab" / "run" / "gateway.log"
        if gateway_log.exists():
            parts.append(f"--- gateway.log ---\n{gateway_log.read_text()[-4000:]}")
        for host, name in (("fabrikam", "var-log/prosody/prosody.log"),
                           ("northwind", "var-log/ejabberd/ejabberd.log")):
            path = self.workdir / host / name
            if path.exists():
                parts.append(f"--- {host} {name} ---\n{path.read_text(errors='replace')[-2500:]}")
        return "\n".join(parts)


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)


# ------------------------------------------------------------------------- the users

USERS = r"""
import asyncio, json, sys
import slixmpp

CA, STEP, REPO = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, REPO)
from testbed.sip_ua import SipUserAgent  # noqa: E402


async def alice(on_message):
    client = slixmpp.ClientXMPP("alice@fabrikam.example", "alice-secret")
    client.ca_certs = CA  # Prosody's certificate comes from the lab CA
    ready = asyncio.get_running_loop().create_future()
    client.add_event_handler("session_start", lambda _: ready.done() or ready.set_result(1))
    client.add_event_handler("message", on_message)
    client.connect("xmpp.fabrikam.example", 5222)
    await asyncio.wait_for(ready, 30)
    client.send_presence()
    return client


async def expect(queue, what, timeout=30):
    try:
        return await asyncio.wait_for(queue.get(), timeout)
    except TimeoutError:
        raise SystemExit(f"no {what} within {timeout}s") from None


async def main():
    received = asyncio.Queue()
    client = await alice(lambda m: received.put_nowait(
        {"from": str(m["from"]), "type": m["type"], "body": m["body"]}))
    if STEP == "alice-writes-to-echo":
        client.send_message(mto="echo@contoso.example", mbody="Hello, gateway", mtype="chat")
        print(json.dumps(await expect(received, "echo")), flush=True)
        client.disconnect()
        return
    phone = SipUserAgent("carol", "contoso.example", ("192.0.2.40", 5060),
                         password="carol-secret", host="192.0.2.40")
    await phone.start()
    registered = await phone.register()
    assert registered.status == 200, registered.status
    client.send_message(mto="carol@contoso.example", mbody="Hello Carol", mtype="chat")
    try:
        to_phone = await asyncio.wait_for(phone.messages.get(), 30)
    except TimeoutError:
        raise SystemExit("carol's phone got no MESSAGE") from None
    answer = await phone.send_message("sip:alice@fabrikam.example", "Hello Alice")
    to_alice = await expect(received, "answer from the phone")
    print(json.dumps({"to_phone": {"from": to_phone.get("from") or "",
                                   "body": to_phone.body.decode()},
                      "phone_answer": answer.status, "to_alice": to_alice}), flush=True)
    try:  # now the page has ejabberd write to carol
        bob = await asyncio.wait_for(phone.messages.get(), 30)
    except TimeoutError:
        bob = None
    print(json.dumps({"from_bob": {"from": bob.get("from") or "",
                                   "body": bob.body.decode()} if bob else None}), flush=True)
    client.disconnect()
    await phone.close()

asyncio.run(main())
"""


# ------------------------------------------------------------------------- the test


def test_getting_started_as_printed(tmp_path: Path) -> None:
    for tool in ("prosodyctl", "ejabberdctl", "kamailio", "kamctl", "dnsmasq", "unshare"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.fail(f"{tool} is not installed: run `make debs` (make test does)")
    blocks = read_page(PAGE.read_text())
    lab = Lab(tmp_path)
    users_script = tmp_path / "users.py"
    users_script.write_text(USERS)
    exports: dict[str, list[str]] = {host: [] for host in HOSTS}
    conversation: subprocess.Popen[str] | None = None
    outputs: dict[str, str] = {}
    try:
        lab.up(next(block.text for block in blocks if block.kind == "dns"))
        for block in blocks:
            if block.kind == "dns":
                continue
            if block.kind in HOSTS:
                output = lab.shell(block.kind, block.text, exports[block.kind])
                outputs.setdefault(block.kind, "")
                outputs[block.kind] += output
                exports[block.kind] += [line for line in block.text.splitlines()
                                        if line.startswith("export ")]
                continue
            ca = str(lab.home / "xmpp-lab" / "certs" / "ca.crt")
            if block.text == "alice-writes-to-echo":
                done = subprocess.run([*lab.exec("fabrikam"), sys.executable,
                                       str(users_script), ca, block.text, str(REPO)], cwd=REPO,
                                      capture_output=True, text=True, timeout=60)
                assert done.returncode == 0, done.stderr[-3000:] + lab.explain()
                echo = json.loads(done.stdout.splitlines()[-1])
                assert echo == {"from": "echo@contoso.example/dev", "type": "chat",
                                "body": "Hello, gateway"}, echo
            elif block.text == "alice-and-carol":
                conversation = subprocess.Popen(
                    [*lab.exec("sip"), sys.executable, str(users_script), ca, block.text,
                     str(REPO)],
                    cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                assert conversation.stdout is not None
                line = conversation.stdout.readline()
                if not line:
                    conversation.wait(10)
                    raise AssertionError(conversation.stderr.read()[-3000:] if
                                         conversation.stderr else "" + lab.explain())
                result = json.loads(line)
                assert result["to_phone"]["body"] == "Hello Carol", result
                assert "alice@fabrikam.example" in result["to_phone"]["from"], result
                assert result["phone_answer"] < 300, result
                assert result["to_alice"]["from"].startswith("carol@contoso.example"), result
                assert result["to_alice"]["body"] == "Hello Alice", result
            elif block.text == "carol-reads-bob":
                assert conversation is not None and conversation.stdout is not None
                result = json.loads(conversation.stdout.readline() or "{}")
                assert result.get("from_bob") is not None, result
                assert result["from_bob"]["body"] == "Hello from northwind"
                assert "bob@northwind.example" in result["from_bob"]["from"]
                conversation.wait(10)
        # What the page promises along the way.
        gw = outputs["gw"]
        assert "verdict: OK (config, certs, dns, sip, connectivity to 2 partner(s))" in gw
        assert "authenticated with SASL over TLS" in gw
        # Features after each stream restart, named after what preceded it.
        assert "- features offered after TLS: SASL EXTERNAL" in gw
        assert "- features offered after SASL: dialback" in gw
        assert "SIP proxy sip.contoso.example:5060 (udp): 200 OK" in gw
    except BaseException as exc:
        if not isinstance(exc, AssertionError):
            raise
        raise AssertionError(f"{exc}\n{lab.explain()}") from None
    finally:
        if conversation is not None and conversation.poll() is None:
            conversation.kill()
            conversation.wait(5)
        lab.stop()
