"""The SIP users of the compose stack: each registers with Kamailio, publishes open presence
(PIDF, RFC 3903) and keeps both fresh; ``echo`` answers every MESSAGE (RFC 3428) with a
MESSAGE carrying the same text back to its sender, the others only record what they get.

Why a UA of our own: it is testbed/sip_ua.py, the user agent the interop tests run
against Kamailio, so the stack exercises the same SIP behaviour the test suite checks.
Everything a user receives is printed as one JSON object per line (``podman logs`` /
``docker compose logs sip-ua``), which is how the compose test sees what reached SIP.

    sip_users.py --proxy 172.29.77.20:5060 --domain gw.example echo carol
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys

from testbed.sip_ua import SipUserAgent

ECHO_USER = "echo"
REGISTER_EXPIRES = 300  # seconds asked for; refreshed well before (RFC 3261 §10.2.1)
PUBLISH_EXPIRES = 600  # RFC 3903 §4.1; refreshed with the registration
REFRESH_EVERY = 240
RETRY_EVERY = 2.0  # the proxy may not be up yet when the stack starts


def log(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def keep_online(ua: SipUserAgent, note: str) -> None:
    """Register and publish 'open', again before either runs out; retry while the proxy
    does not answer (start-up order, proxy restart)."""
    while True:
        try:
            registered = await ua.register(REGISTER_EXPIRES)
            published = await ua.publish("open", note=note, expires=PUBLISH_EXPIRES)
        except TimeoutError:
            log("proxy-silent", user=ua.user, proxy=f"{ua.proxy[0]}:{ua.proxy[1]}")
            await asyncio.sleep(RETRY_EVERY)
            continue
        log("online", user=ua.user, register=registered.status, publish=published.status)
        ok = registered.status == 200 and published.status == 200
        await asyncio.sleep(REFRESH_EVERY if ok else RETRY_EVERY)


async def serve(ua: SipUserAgent) -> None:
    """Record each MESSAGE (already answered 200 by the UA); ``echo`` sends the text back."""
    while True:
        message = await ua.messages.get()
        sender = message.from_.uri
        text = message.body.decode("utf-8", errors="replace")
        log("message", user=ua.user, sender=sender, body=text,
            content_type=message.content_type)
        if ua.user != ECHO_USER:
            continue
        try:
            response = await ua.send_message(sender, text)
            log("echoed", user=ua.user, to=sender, status=response.status)
        except TimeoutError:
            log("echo-unanswered", user=ua.user, to=sender)


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxy", required=True, help="Kamailio, host:port (UDP)")
    parser.add_argument("--domain", default="gw.example", help="SIP domain of the users")
    parser.add_argument("--host", default="", help="own address (default: this host's)")
    parser.add_argument("users", nargs="+")
    args = parser.parse_args(argv)
    host = args.host or socket.gethostbyname(socket.gethostname())
    proxy_host, _, proxy_port = args.proxy.rpartition(":")
    tasks = []
    for user in args.users:
        ua = await SipUserAgent(user, args.domain, (proxy_host, int(proxy_port)),
                                host=host).start()
        note = "echoes what you write" if user == ECHO_USER else "at my desk"
        tasks += [keep_online(ua, note), serve(ua)]
        log("started", user=user, aor=ua.aor, contact=ua.contact)
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
