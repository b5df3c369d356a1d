"""A slixmpp user run once inside the namespace: what it received after writing to a peer,
and what that must show when federation through the gateway works."""

from __future__ import annotations

import json
import subprocess
import sys

from testbed.namespace import Namespace

CLIENT = r"""
import asyncio, json, sys, slixmpp
jid, host, peer = sys.argv[1], sys.argv[2], sys.argv[3]
wait = float(sys.argv[4]) if len(sys.argv) > 4 else 15.0
async def main():
    client = slixmpp.ClientXMPP(jid, "pw")
    client.enable_starttls = False
    client.enable_direct_tls = False
    client.enable_plaintext = True
    client.plugin["feature_mechanisms"].unencrypted_plain = True
    loop = asyncio.get_event_loop()
    ready, messages, presences = loop.create_future(), [], []
    client.add_event_handler("session_start", lambda _: ready.done() or ready.set_result(True))
    client.add_event_handler("message", lambda m: messages.append(
        {"from": str(m["from"]), "to": str(m["to"]), "type": m["type"], "body": m["body"],
         "error": m["error"]["condition"] if m["type"] == "error" else ""}))
    for event in ("presence", "presence_subscribed", "presence_available"):
        client.add_event_handler(event, lambda p, e=event: presences.append(
            {"from": str(p["from"]), "type": p["type"], "event": e}))
    client.connect(host, 5222)
    await asyncio.wait_for(ready, 10)
    client.send_presence()
    client.send_message(mto=peer, mbody="hello gateway", mtype="chat")
    client.send_presence(pto=peer.split("/")[0], ptype="subscribe")
    for _ in range(int(wait * 10)):
        if messages and any(p["type"] in ("subscribed", "available") and
                            p["from"].startswith(peer.split("/")[0]) for p in presences):
            break
        if messages and messages[0]["type"] == "error":
            break
        await asyncio.sleep(0.1)
    print(json.dumps({"messages": messages, "presences": presences}))
    client.disconnect()
    await asyncio.sleep(0.2)
asyncio.run(main())
"""


def assert_echo_exchange(result: dict, user: str, why: str) -> None:
    """What xmpp_client's run must show when federation works: the echo user's reply to
    ``user`` and the approval of the subscription (as 'subscribed' or, after the server's
    roster processing, as the contact's available presence, only sent once approved)."""
    messages = [m for m in result["messages"] if m["type"] != "error"]
    assert messages, f"no echo came back: {result}\n{why}"
    assert messages[0]["from"] == "echo@gw.example/dev" and messages[0]["body"] == \
        "hello gateway", f"{result}\n{why}"
    assert messages[0]["to"].startswith(user), why
    assert any(p["type"] in ("subscribed", "available") and
               p["from"].startswith("echo@gw.example") for p in result["presences"]), \
        f"no subscription approval/presence: {result}\n{why}"


def xmpp_client(ns: Namespace, jid: str, host: str, peer: str, wait: float = 15.0) -> dict:
    """What ``jid`` received within ``wait`` seconds of writing to ``peer`` (less where
    nothing is expected to come back)."""
    script = ns.workdir / "client.py"
    script.write_text(CLIENT)
    result = subprocess.run([*ns.exec, sys.executable, str(script), jid, host, peer,
                             str(wait)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"client failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
