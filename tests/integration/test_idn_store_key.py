"""An internationalised domain is one domain, whichever side its users' addresses come from.

A whole gateway (``sip.backend: sip``, the real router, SQLite store, contact rules) serves
``bücher.example``. Its SIP user subscribes to a public-unverified XMPP contact; SIP writes
the user's host in A-labels (``xn--bcher-kva.example``), in the user's own case. Later the
contact writes to the user over XMPP with the U-label domain in another case. The
authorization the subscription stored must be the one the XMPP side finds: one store key.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from gateway.config.model import (
    GatewayConfig,
    ListenAddress,
    PartnerPolicy,
    PartnerType,
    SipSettings,
    StoreSettings,
    TlsSettings,
)
from gateway.daemon import Gateway
from gateway.dns.resolver import DnsPythonResolver
from gateway.domain import normalize_domain
from gateway.sip.development import message
from testbed.dnsmasq import free_port
from testbed.sip_ua import SipUserAgent

SERVED = normalize_domain("Bücher.Example")  # as the configuration loader keeps it


async def test_an_idn_sip_user_and_its_xmpp_contact_meet_at_one_store_key(
        tmp_path: Path, dns_for_pair: tuple[str, dict[str, int]]) -> None:
    dns, _ports = dns_for_pair
    ua = await SipUserAgent("Alice", "xn--bcher-kva.example", ("127.0.0.1", 9)).start()
    sip_port = free_port()
    config = GatewayConfig(
        domains=(SERVED,),
        partners=(PartnerPolicy("c.example", PartnerType.PUBLIC_UNVERIFIED),),
        listen=(ListenAddress("127.0.0.1", free_port(kind=socket.SOCK_STREAM)),),
        tls=TlsSettings(certificate=tmp_path / "none.crt", key=tmp_path / "none.key"),
        store=StoreSettings(tmp_path / "store.sqlite3"),
        admin_socket=tmp_path / "admin.sock",
        sip=SipSettings(backend="sip", proxy_host="127.0.0.1", proxy_port=ua.port,
                        local_host="127.0.0.1", local_port=sip_port))
    gateway = Gateway(config, resolver=DnsPythonResolver(nameservers=(dns,), timeout=2.0))
    await gateway.start()
    ua.proxy = ("127.0.0.1", sip_port)
    try:
        # The A-label host is a served domain (not 403), and adding the contact is the
        # authorization the contact rules wait for.
        answer = await ua.subscribe("sip:bob@c.example")
        assert answer.status < 300, answer.status
        async with asyncio.timeout(5):
            while not await gateway.store.is_authorized("alice@bücher.example",
                                                        "bob@c.example"):
                await asyncio.sleep(0.02)

        # The XMPP side: U-labels, another case. Only an authorized contact's message
        # reaches a user of a public-unverified partner.
        gateway.router.from_xmpp(message("bob@c.example/phone", "ALICE@BÜCHER.example", "hi"),
                                 "c.example", SERVED)
        async with asyncio.timeout(5):
            while True:
                request = await ua.messages.get()
                if request.body == b"hi":
                    break
        # the host in A-labels; the user part as the phone spelled it in its SUBSCRIBE
        # (SIP compares user parts case-sensitively, RFC 3261 §19.1.4)
        assert request.uri == "sip:Alice@xn--bcher-kva.example"
        assert gateway.router.refused == 0
    finally:
        await gateway.stop()
        await ua.close()
