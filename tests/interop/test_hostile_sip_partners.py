"""A SIP user's hostile message against real partners: Prosody 0.12 and ejabberd 23.01
keep the gateway's stream, and the next user's message arrives on it.

What one SIP user sends (a NUL or an escape sequence pasted from a terminal, a %00 in the
address) is refused with a 400 naming the problem before anything reaches a partner; if
it did reach one, Prosody and ejabberd (both expat-based) would close the stream every
other user's messages travel on. Both partners are live at once: Prosody for a.example,
ejabberd for b.example. The SIP side is driven directly by a user agent in the proxy's
place (127.0.0.5, the gateway's ``proxy_host``). The harness records every byte the
gateway writes on S2S and fails the test on any a strict parser refuses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from testbed.in_namespace import XmppUser, run_in_namespace
from testbed.namespace import IPS, Namespace
from testbed.pki import Pki
from testbed.servers import Ejabberd, GatewayProcess, Prosody, assert_well_formed_output
from testbed.sip_ua import SipUserAgent

GW = IPS["gw.example"]
PROXY = IPS["load.example"]  # the address the gateway trusts as its SIP proxy
PARTNERS = {"a.example": IPS["a.example"], "b.example": IPS["b.example"]}
HOSTILE = [("a\x00b", "sip:{user}@{domain}"), ("\x1b[31mred\x1b[0m", "sip:{user}@{domain}"),
           ("x\x01y", "sip:{user}@{domain}"), ("hello", "sip:a%00b@{domain}")]


@pytest.fixture(scope="module")
def servers(ns: Namespace, pki: Pki) -> Iterator[tuple[Prosody, Ejabberd]]:
    prosody = Prosody(ns, pki, secure_auth=False).start()
    try:
        ejabberd = Ejabberd(ns, pki, starttls="optional").start()
    except BaseException:
        prosody.stop()
        raise
    try:
        yield prosody, ejabberd
    finally:
        ejabberd.stop()
        prosody.stop()


def outbound_streams(gateway: GatewayProcess) -> dict[str, str]:
    return {row["peer_domain"]: row["stream_id"] for row in gateway.status()["sessions"]
            if row["direction"] == "outbound" and row["phase"] == "open"}


def test_partners_keep_their_stream_through_hostile_sip_messages(
        ns: Namespace, pki: Pki, servers: tuple[Prosody, Ejabberd]) -> None:
    prosody, ejabberd = servers
    partner = {"type": "federated", "tls": "optional", "sasl": "optional", "dialback": "true"}
    gateway = GatewayProcess(
        ns, pki, [{"domain": domain, **partner} for domain in PARTNERS], log_level="info",
        xmpp_addrs=False,  # ejabberd 23.01 and id-on-xmppAddr: see testbed/servers.py
        sip={"backend": "sip", "proxy_host": PROXY, "proxy_port": 5070, "transport": "udp",
             "local_host": GW, "local_port": 5062}).start()

    async def scenario() -> list[tuple[str, int, str]]:
        ua = await SipUserAgent("sipuser", "gw.example", (GW, 5062), host=PROXY).start()
        users = {domain: await XmppUser(f"user@{domain}", ip).start()
                 for domain, ip in PARTNERS.items()}
        refused: list[tuple[str, int, str]] = []
        try:
            for domain in PARTNERS:
                user = users[domain]
                await _delivered(ua, user, domain, f"first to {domain}")
                streams = await asyncio.to_thread(outbound_streams, gateway)
                assert domain in streams, streams
                for index, (body, uri) in enumerate(HOSTILE):
                    response = await ua.send_message(uri.format(user="user", domain=domain),
                                                     body)
                    refused.append((domain, response.status, response.reason))
                    await _delivered(ua, user, domain, f"after {index} to {domain}")
                    assert (await asyncio.to_thread(outbound_streams, gateway))[domain] \
                        == streams[domain], f"{domain} replaced the stream"
                assert user.messages.empty(), "a refused message reached the partner"
        finally:
            for user in users.values():
                await user.stop()
            await ua.close()
        return refused

    try:
        refused = run_in_namespace(ns.name, scenario, timeout=120)
    except BaseException as exc:
        raise AssertionError(f"{exc!r}\n--- gateway log (tail) ---\n{gateway.log[-4000:]}"
                             f"\n--- prosody (tail) ---\n{prosody.log[-2000:]}") from exc
    finally:
        gateway.stop()  # and every byte it wrote on S2S checked by expat (harness)
    assert assert_well_formed_output(gateway.recordings) >= len(PARTNERS)  # streams recorded
    assert [status for _, status, _ in refused] == [400] * len(HOSTILE) * len(PARTNERS)
    assert all("xml" in reason.lower() or "address" in reason.lower()
               for _, _, reason in refused), refused
    for log in (prosody.log, ejabberd.log):
        assert "not-well-formed" not in log and "not well-formed" not in log


async def _delivered(ua: SipUserAgent, user: XmppUser, domain: str, text: str) -> None:
    response = await ua.send_message(f"sip:user@{domain}", text)
    assert response.status == 202, response
    message = await user.next_message(15)
    assert (message["from"], message["body"]) == ("sipuser@gw.example/sip", text), message
