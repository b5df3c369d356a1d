"""An XMPP user for the compose stack: logs in to its server (Prosody or ejabberd, plain
c2s inside the stack's private network), messages each contact, asks for their presence
(RFC 6121 §3.1) and prints, as one JSON object, every message and presence it received
until each contact has answered and shown presence, or the time is up.

    xmpp_client.py anna@a.example pw 172.29.77.12 echo@gw.example carol@gw.example
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
import time

import slixmpp


async def exchange(jid: str, password: str, server: str, contacts: list[str],
                   echo: str, timeout: float) -> dict:
    client = slixmpp.ClientXMPP(jid, password)
    # Plain c2s on the private network: the servers of the stack allow it (their configs
    # in docker/config), the S2S legs to the gateway are TLS.
    client["feature_mechanisms"].unencrypted_plain = True
    for attribute in ("enable_starttls", "enable_direct_tls"):
        if hasattr(client, attribute):
            setattr(client, attribute, False)
    if hasattr(client, "enable_plaintext"):
        client.enable_plaintext = True
    ready = asyncio.get_running_loop().create_future()
    messages: list[dict] = []
    presences: list[dict] = []
    client.add_event_handler("session_start",
                             lambda _: ready.done() or ready.set_result(True))
    client.add_event_handler("message", lambda m: messages.append(
        {"from": str(m["from"]), "type": m["type"], "body": m["body"],
         "error": m["error"]["condition"] if m["type"] == "error" else ""}))
    client.add_event_handler("presence", lambda p: presences.append(
        {"from": str(p["from"]), "type": p["type"], "status": p["status"]}))
    connect = inspect.signature(client.connect).parameters
    if "disable_starttls" in connect:  # slixmpp < 1.8.4 (Debian bookworm: 1.8.3)
        client.connect((server, 5222), disable_starttls=True, force_starttls=False)
    else:
        client.connect(server, 5222)
    await asyncio.wait_for(ready, 20)
    client.send_presence()
    for contact in contacts:
        client.send_message(mto=contact, mbody=f"hello {contact.split('@')[0]} from {jid}",
                            mtype="chat")
        client.send_presence(pto=contact, ptype="subscribe")

    def complete() -> bool:
        echoed = any(m["from"].startswith(echo + "/") and m["body"] ==
                     f"hello {echo.split('@')[0]} from {jid}" for m in messages)
        seen = all(any(p["from"].startswith(c + "/") and p["type"] == "available"
                       for p in presences) for c in contacts)
        return echoed and seen

    deadline = time.monotonic() + timeout
    while not complete() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    client.disconnect()
    await asyncio.sleep(0.3)
    return {"jid": jid, "complete": complete(), "messages": messages, "presences": presences}


def main(argv: list[str]) -> int:
    jid, password, server, *contacts = argv
    echo = next((c for c in contacts if c.startswith("echo@")), "")
    result = asyncio.run(exchange(jid, password, server, contacts, echo, timeout=45))
    print(json.dumps(result))
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
