"""The c2s ends of the relay benchmark (bench/c2s_sink.py's client, raw XML over TCP after
SASL PLAIN), run inside the benchmark namespace, driven over stdin/stdout by
bench/relay.py:

    python -m bench.relay_xmpp sink HOST DOMAIN USER LIMIT
    python -m bench.relay_xmpp write HOST DOMAIN USER RECIPIENT N RATE LIMIT [chat]

``sink`` logs in (its initial presence is what starts a presence storm when the user's
roster is large), prints ``{"ready": true}``, then waits for ``EXPECTED QUIET LIMIT`` on
stdin and prints what it received once EXPECTED messages arrived, or nothing arrived for
QUIET seconds, or LIMIT seconds passed.

``write`` logs in, prints ``{"ready": true}``, waits for a line on stdin ("go"), writes N
chat messages to RECIPIENT as fast as the server reads them (RATE 0: pipelined, waiting
only on TCP flow control) or paced at RATE msg/s, prints ``{"sent": …}``, keeps counting
the stanza errors that come back until a line arrives on stdin, then prints them.
Everything is bounded by LIMIT seconds. With ``chat``, each of the N messages comes with
what a chat client sends around it (:func:`chat_turn`): N counts user-visible messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
import time

from bench.c2s_sink import C2SSink
from gateway.sip.message_ids import stanza_id_for_sip

BATCH = 200


def received(client: C2SSink) -> dict:
    client.flush()
    return {"received": client.count, "indices": sorted(client.indices),
            "first_at": client.first_at, "last_at": client.last_at,
            "max_gap_s": round(client.max_gap_s, 3),
            "counts": {f"{tag}/{kind or 'normal'}": n
                       for (tag, kind), n in sorted(client.counts.items())},
            # distinct remote senders of presence by type (the storm's contacts)
            "presence_senders": {kind or "available": len(remote(client, senders))
                                 for kind, senders in client.presence_from.items()},
            # distinct remote contacts whose presence (available or not) arrived
            "presence_contacts": len(remote(client, client.presence_from.get("", set())
                                            | client.presence_from.get("unavailable", set())))}


def remote(client: C2SSink, senders: set[str]) -> set[str]:
    return {s for s in senders if s.rpartition("@")[2] != client.domain}


async def stdin_line(limit: float) -> str:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), limit)


async def sink(client: C2SSink, limit: float) -> None:
    cpu_started = time.process_time()
    try:
        expected, quiet, stop_limit = (await stdin_line(limit)).split()
    except TimeoutError:
        expected, quiet, stop_limit = "0", "0", "0"
    deadline = time.monotonic() + float(stop_limit)
    last_change, seen = time.monotonic(), -1
    while client.count < int(expected) and time.monotonic() < deadline:
        total = client.count + sum(client.counts.values())
        if total != seen:
            last_change, seen = time.monotonic(), total
        elif time.monotonic() - last_change > float(quiet):
            break
        await asyncio.sleep(0.01)
    print(json.dumps({**received(client), "cpu_s": time.process_time() - cpu_started}),
          flush=True)


def stanza(recipient: str, run: str, index: int) -> bytes:
    return (f"<message to='{recipient}' type='chat' id='{run}-{index}'><body>"
            f"{time.monotonic_ns()} {index} relay benchmark message</body></message>").encode()


def chat_turn(recipient: str, run: str, index: int) -> bytes:
    """One user-visible message as Conversations, Dino or Gajim send it in a two-way chat:
    ``composing`` when the user starts typing, ``paused`` when they stop before sending
    (every other message here), the message with ``<active/>``, a receipt request
    (XEP-0184) and ``<markable/>`` (XEP-0333); and, for the message the other side wrote
    meanwhile (one for each of ours in a two-way chat), the receipt and the displayed
    marker the client sends back. 4.5 stanzas per visible message; the acknowledged ids
    are those the gateway gives SIP users' messages, so the receipts cross as IMDNs."""
    other = stanza_id_for_sip(f"{run}-{index}@bench.sip", cpim=False, sent=int(time.time()))
    states = "<composing xmlns='http://jabber.org/protocol/chatstates'/>"
    turn = [f"<message to='{recipient}' type='chat'>{states}</message>"]
    if index % 2:
        turn.append(f"<message to='{recipient}' type='chat'><paused xmlns='http://jabber"
                    ".org/protocol/chatstates'/></message>")
    turn.append(f"<message to='{recipient}' type='chat' id='{run}-{index}'><body>"
                f"{time.monotonic_ns()} {index} relay benchmark message</body><active xmlns="
                "'http://jabber.org/protocol/chatstates'/><request xmlns='urn:xmpp:receipts'/>"
                "<markable xmlns='urn:xmpp:chat-markers:0'/></message>")
    turn.append(f"<message to='{recipient}' type='chat'><received xmlns='urn:xmpp:receipts'"
                f" id='{other}'/></message>")
    turn.append(f"<message to='{recipient}' type='chat'><displayed xmlns='urn:xmpp:chat-"
                f"markers:0' id='{other}'/></message>")
    return "".join(turn).encode()


async def write(client: C2SSink, run: str, recipient: str, n: int, rate: float,
                limit: float, chat: bool = False) -> None:
    await stdin_line(limit)  # "go": the driver has taken its CPU readings
    cpu_started = time.process_time()
    started = time.monotonic()
    deadline = started + limit
    sent = 0
    while sent < n and time.monotonic() < deadline:
        due = n if rate <= 0 else min(n, int((time.monotonic() - started) * rate) + 1)
        while sent < due:
            end = min(due, sent + BATCH)
            make = chat_turn if chat else stanza
            client.write(b"".join(make(recipient, run, i) for i in range(sent, end)))
            sent = end
            await asyncio.wait_for(client.drain(), max(0.1, deadline - time.monotonic()))
        if rate > 0:
            await asyncio.sleep(0.0005)
    seconds = time.monotonic() - started
    print(json.dumps({"sent": sent, "wanted": n, "started_at": started,
                      "send_seconds": seconds, "offered_rate": sent / seconds if seconds else 0,
                      "cpu_s": time.process_time() - cpu_started}),
          flush=True)
    with contextlib.suppress(TimeoutError):
        await stdin_line(max(1.0, deadline - time.monotonic()))
    # Only errors for this run's messages count (ids "<run>-<index>"): an error that comes
    # late for an earlier run's message says nothing about this one.
    refused = sorted(int(i.partition("-")[2]) for i in client.error_ids
                     if i.partition("-")[0] == run)
    errors = client.counts[("message", "error")]
    print(json.dumps({"errors": len(refused), "stray_errors": errors - len(refused),
                      "refused_indices": refused, **received(client)}), flush=True)


async def main() -> None:
    mode, host, domain, user = sys.argv[1:5]
    run = secrets.token_hex(4)  # a resource and message ids of this run's own
    client = C2SSink(host, 5222, domain, user, "pw", resource=f"bench-{run}")
    await client.connect(roster=mode == "sink")
    assert client._writer is not None
    transport = client._writer.transport
    transport.set_write_buffer_limits(high=512 * 1024)  # type: ignore[attr-defined]
    print(json.dumps({"ready": True}), flush=True)
    try:
        if mode == "sink":
            await sink(client, float(sys.argv[5]))
        else:
            recipient, n, rate, limit = sys.argv[5:9]
            await write(client, run, recipient, int(n), float(rate), float(limit),
                        chat=sys.argv[9:10] == ["chat"])
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
