"""`make compose-test`: the compose stack (docker/docker-compose.yml) built from Debian
packages and run for real with podman: a Prosody user (a.example) and an ejabberd user
(b.example) each message echo@gw.example (a SIP user that answers with the same text) and
carol@gw.example (a SIP user), through the gateway and Kamailio, and see both SIP users'
presence. Everything runs inside the containers (``podman exec``); the stack is removed by
name afterwards, also when something fails.

Skipped only when podman cannot run on this host (`make compose-test` installs it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.compose.stack import ComposeStack, StackError, podman_unusable

PROSODY_IP, EJABBERD_IP = "172.29.77.12", "172.29.77.13"
SIP_USERS = ("echo@gw.example", "carol@gw.example")
XMPP_USERS = {"anna@a.example": ("prosody", PROSODY_IP), "bert@b.example": ("ejabberd",
                                                                            EJABBERD_IP)}
HEALTH_CHECKED = ["gateway", "prosody", "ejabberd", "kamailio"]


def report(stack: ComposeStack) -> str:
    return "".join(f"\n--- {service} (log tail) ---\n{stack.logs(service)[-2500:]}"
                   for service in ("gateway", "kamailio", "sip-ua", "prosody", "ejabberd"))


@pytest.fixture(scope="module")
def stack() -> Iterator[ComposeStack]:
    why = podman_unusable()
    if why:
        pytest.skip(why)
    # One name (the subnet in the compose file is fixed too): a run that was killed
    # before its teardown is cleared by the next one.
    stack = ComposeStack(project="xmpp-gateway-test")
    started = time.monotonic()
    try:
        stack.down()
        stack.ensure_base()
        stack.build()
        stack.timings["images"] = time.monotonic() - started
        stack.up()
        stack.wait_certs()
        stack.wait_healthy(HEALTH_CHECKED)
        stack.timings["healthy"] = time.monotonic() - started
        yield stack
    finally:
        left = stack.down()
        stack.timings["total"] = time.monotonic() - started
        print("\ncompose stack timings (s): " + ", ".join(
            f"{k} {v:.0f}" for k, v in stack.timings.items()))
        assert not left, f"left behind: {left}"


def sip_events(stack: ComposeStack) -> list[dict]:
    events = []
    for line in stack.logs("sip-ua").splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def wait_sip_users_online(stack: ComposeStack, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        online = {e["user"] for e in sip_events(stack)
                  if e["event"] == "online" and e["register"] == 200 and e["publish"] == 200}
        if online >= {u.split("@")[0] for u in SIP_USERS}:
            return
        time.sleep(0.5)
    raise StackError(f"SIP users not registered/published: {sip_events(stack)}")


def test_xmpp_users_reach_sip_users_through_the_gateway(stack: ComposeStack) -> None:
    try:
        wait_sip_users_online(stack)
        stack.exec("prosody", "prosodyctl", "register", "anna", "a.example", "pw")
        stack.exec("ejabberd", "ejabberdctl", "register", "bert", "b.example", "pw")
        results = {}
        for jid, (_server, address) in XMPP_USERS.items():
            done = stack.exec("sip-ua", "python3", "/opt/sip-ua/xmpp_client.py", jid, "pw",
                              address, *SIP_USERS, timeout=90, check=False)
            results[jid] = json.loads(done.stdout.strip().splitlines()[-1]) \
                if done.stdout.strip() else {"complete": False, "stderr": done.stderr[-2000:]}
        events = sip_events(stack)
        status = json.loads(stack.exec("gateway", "xmpp-gateway", "status", "--json").stdout)
    except BaseException as exc:
        raise AssertionError(f"{exc}{report(stack)}") from exc
    why = f"\nresults: {json.dumps(results, indent=1)}\nSIP: {events}{report(stack)}"
    for jid, result in results.items():
        user = jid.split("@")[0]
        # The echo user's answer came back through Kamailio and the gateway.
        assert any(m["from"] == "echo@gw.example/sip" and m["type"] == "chat" and
                   m["body"] == f"hello echo from {jid}" for m in result["messages"]), why
        # Both SIP users' presence (PUBLISHed to Kamailio) reached the XMPP user.
        for contact in SIP_USERS:
            assert any(p["from"] == f"{contact}/sip" and p["type"] == "available"
                       for p in result["presences"]), f"{jid} saw no presence of {contact}{why}"
        # carol got the message, from the XMPP user's SIP address.
        assert any(e["event"] == "message" and e["user"] == "carol" and
                   e["sender"] == f"sip:{user}@{jid.split('@')[1]}" and
                   e["body"] == f"hello carol from {jid}" for e in events), why
        assert any(e["event"] == "echoed" and e["to"] == f"sip:{jid}" and e["status"] < 300
                   for e in events), why
    # The gateway's admin socket shows the federation with both servers.
    peers = json.dumps(status["sessions"])
    assert "a.example" in peers and "b.example" in peers, status


def test_gateway_upgrade_keeps_the_store(stack: ComposeStack) -> None:
    """What docs/deploy.md tells operators to do to upgrade: a new gateway container from
    the (re)built image, on the same gateway-store volume; what the store held is kept."""
    stack.exec("gateway", "xmpp-gateway", "contacts", "allow", "carol", "anna@a.example")
    before = stack.exec("gateway", "xmpp-gateway", "contacts", "list", "carol").stdout
    assert "anna@a.example" in before, before
    old = stack.container_id("gateway")
    stack.compose_run("up", "-d", "--no-deps", "--force-recreate", "gateway")
    assert stack.container_id("gateway") != old, "the gateway container was not replaced"
    stack.wait_healthy(["gateway"], timeout=60)
    after = stack.exec("gateway", "xmpp-gateway", "contacts", "list", "carol").stdout
    assert after == before
