"""Only the SIP proxy may speak for local users — over real sockets.

Addresses on the loopback network stand for the machines of a deployment:

* 127.0.0.9 — the gateway's SIP side;
* 127.0.0.10 — the SIP proxy (the only trusted source);
* 127.0.0.11 — an attacker who can reach the gateway's SIP port.

Each attack is sent as raw bytes (what an attacker controls) and the test checks both the
answer on the wire and that nothing reached the XMPP side (the backend's sink, which is
the router in a running gateway), plus the log line and the metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.auth import devcerts
from gateway.config.model import SipSettings
from gateway.metrics import Metrics
from gateway.sip.backend import SipBackend
from gateway.sip.development import message
from gateway.sip.message import make_response, parse_message
from testbed.dnsmasq import free_port
from testbed.sip_ua import SipUserAgent
from tests.integration.test_sip_backend import Recorder, condition
from tests.support.sip_attacker import spoofed, status_of, stream_exchange, udp_exchange

GATEWAY = "127.0.0.9"
PROXY = "127.0.0.10"
ATTACKER = "127.0.0.11"
SIP_DOMAIN = "sip.example"


def untrusted_count(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("xmpp_gateway_sip_untrusted_total",
                                             {"reason": reason}) or 0.0


@contextlib.asynccontextmanager
async def sip_backend(transport: str = "udp", *, proxy_port: int = 9,
                      trusted_sources: tuple[str, ...] = (), proxy_host: str = PROXY,
                      tls=None, require_client_certificate: bool = False,
                      trusted_names: tuple[str, ...] = (),
                      trust_asserted_identity: bool = False,
                      ) -> AsyncIterator[tuple[SipBackend, Recorder, Metrics]]:
    settings = SipSettings(
        backend="sip", transport=transport, proxy_host=proxy_host, proxy_port=proxy_port,
        local_host=GATEWAY, local_port=0, trusted_sources=trusted_sources,
        require_client_certificate=require_client_certificate, trusted_names=trusted_names,
        trust_asserted_identity=trust_asserted_identity)
    backend = SipBackend.from_settings(settings, [SIP_DOMAIN], tls)
    metrics = Metrics()
    recorder = Recorder()
    recorder.backend = backend
    await backend.start(recorder, metrics=metrics)
    try:
        yield backend, recorder, metrics
    finally:
        await backend.stop(grace=0.5)


# ---------------------------------------------------------------------- spoofed requests


@pytest.mark.parametrize("method", ["MESSAGE", "SUBSCRIBE", "NOTIFY"])
async def test_spoofed_request_over_udp_is_refused_once(method: str, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.sip")
    async with sip_backend() as (backend, recorder, metrics):
        answers = await udp_exchange(
            ATTACKER, backend.transport.local,
            lambda port: spoofed(method, "udp", (ATTACKER, port)), listen=1.5)
        # One 403, not retransmitted (T1 = 0.5 s: a retransmission would be within 1.5 s).
        assert [status_of(a) for a in answers] == [403]
        assert recorder.queue.empty()  # nothing reached XMPP
        assert not backend.layer.servers and not backend.notifiers  # no state was created
        assert untrusted_count(metrics, "source") == 1
    [record] = [r for r in caplog.records if r.getMessage() == "sip.untrusted"]
    fields = record.gw_fields
    assert record.levelno == logging.WARNING
    assert fields["peer"].startswith(f"{ATTACKER}:") and fields["method"] == method
    assert (fields["reason"], fields["action"]) == ("source not trusted", "403")


@pytest.mark.parametrize("method", ["MESSAGE", "SUBSCRIBE", "NOTIFY"])
@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_spoofed_request_over_streams_is_refused_and_closed(
        pki, transport: str, method: str) -> None:
    tls = pki.tls_settings("localhost") if transport == "tls" else None
    client = None
    if tls is not None:
        client = ssl.create_default_context(cafile=str(tls.ca_file))
    async with sip_backend(transport, tls=tls) as (backend, recorder, metrics):
        answers, closed = await stream_exchange(
            ATTACKER, backend.transport.local,
            lambda port: spoofed(method, transport, (ATTACKER, port)), context=client)
        assert [status_of(a) for a in answers] == [403]  # the second request: not read
        assert closed
        assert recorder.queue.empty()
        assert untrusted_count(metrics, "source") == 1


async def test_spoofed_notify_cannot_inject_presence_into_a_dialog() -> None:
    """The attacker knows the Call-ID and tags of a live subscription (e.g. sniffed): its
    NOTIFY is still refused, the XMPP watcher sees no presence from it."""
    proxy = await SipUserAgent("alice", SIP_DOMAIN, (GATEWAY, 9), host=PROXY).start()
    async with sip_backend(proxy_port=proxy.port) as (backend, recorder, _):
        proxy.proxy = backend.transport.local
        await backend.deliver(_presence("bob@xmpp.example", "alice@sip.example", "subscribe"))
        subscribe = await asyncio.wait_for(proxy.requests.get(), 5)
        proxy.reply(subscribe, 202, ("Expires", "600"))
        tag = subscribe.from_.tag
        answers = await udp_exchange(ATTACKER, backend.transport.local, lambda port: spoofed(
            "NOTIFY", "udp", (ATTACKER, port), sender="alice", call_id=subscribe.call_id,
            from_tag="x", to_tag=tag), listen=0.7)
        assert [status_of(a) for a in answers] == [403]
        assert recorder.queue.empty()
        assert not backend.watches[("bob@xmpp.example", "alice@sip.example")].announced
    await proxy.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_the_proxy_is_still_heard(transport: str) -> None:
    async with sip_backend(transport) as (backend, recorder, _):
        proxy = await SipUserAgent("alice", SIP_DOMAIN, backend.transport.local, host=PROXY,
                                   transport=transport).start()
        try:
            response = await proxy.send_message("sip:bob@xmpp.example", "hello")
            assert response.status == 202
            stanza = await recorder.next()
            assert stanza.get("from") == "alice@sip.example/sip"
            assert backend.untrusted == 0
        finally:
            await proxy.close()


async def test_a_flood_is_counted_but_not_logged_line_by_line(caplog) -> None:
    """200 forged datagrams in a burst: every one answered once and counted, at most the
    per-second budget of log lines, the rest reported as suppressed."""
    caplog.set_level(logging.WARNING, logger="gateway.sip")
    loop = asyncio.get_running_loop()
    answers: list[bytes] = []

    class Attacker(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            answers.append(data)

    async with sip_backend() as (backend, recorder, metrics):
        attacker, _ = await loop.create_datagram_endpoint(Attacker,
                                                          local_addr=(ATTACKER, 0))
        try:
            port = attacker.get_extra_info("sockname")[1]
            for _ in range(10):  # 10 bursts of 20 within ~0.3 s (a socket buffer's worth)
                for _ in range(20):
                    attacker.sendto(spoofed("MESSAGE", "udp", (ATTACKER, port)),
                                    backend.transport.local)
                await asyncio.sleep(0.03)
            async with asyncio.timeout(10):
                while untrusted_count(metrics, "source") < 200 or len(answers) < 200:
                    await asyncio.sleep(0.05)
        finally:
            attacker.close()
        assert recorder.queue.empty() and len(answers) == 200
    lines = [r for r in caplog.records if r.getMessage() == "sip.untrusted"]
    assert 1 <= len(lines) <= 2 * backend._refusal_log.per_second


# ---------------------------------------------------------------------- responses


async def test_response_from_elsewhere_does_not_complete_a_transaction(caplog) -> None:
    """The gateway's MESSAGE goes to the proxy; a forged 200 from the attacker (same
    branch, Call-ID, everything) and one from the proxy's host on another port are
    ignored; the proxy's real 480 decides the outcome."""
    caplog.set_level(logging.WARNING, logger="gateway.sip")
    loop = asyncio.get_running_loop()
    requests: asyncio.Queue[bytes] = asyncio.Queue()

    class Proxy(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            requests.put_nowait(data)

    proxy, _ = await loop.create_datagram_endpoint(Proxy, local_addr=(PROXY, 0))
    try:
        async with sip_backend(proxy_port=proxy.get_extra_info("sockname")[1]) as (
                backend, recorder, metrics):
            original = message("bob@xmpp.example/p", "alice@sip.example", "pay me")
            original.set("id", "m1")
            await backend.deliver(original)
            request = parse_message(await asyncio.wait_for(requests.get(), 5))
            forged = make_response(request, 200, to_tag="evil").serialize()
            for source in (ATTACKER, PROXY):  # PROXY: right host, wrong port
                await udp_exchange(source, backend.transport.local, lambda _p: forged,
                                   listen=0.2)
            await asyncio.sleep(0.1)
            assert len(backend.layer.clients) == 1  # still waiting for the real answer
            assert recorder.queue.empty()
            # The attacker's copy is dropped by the transport (untrusted source); the one
            # from the proxy's host but another port by the transaction layer.
            assert untrusted_count(metrics, "source") == 1
            assert untrusted_count(metrics, "response") == 1
            proxy.sendto(make_response(request, 480).serialize(), backend.transport.local)
            error = await recorder.next()
            assert (error.get("id"), condition(error)) == ("m1", "recipient-unavailable")
    finally:
        proxy.close()
    assert [r.getMessage() for r in caplog.records].count("sip.misrouted_response") == 1


# ---------------------------------------------------------------------- CIDR allowlist


async def test_trusted_sources_admit_a_proxy_pool() -> None:
    async with sip_backend(trusted_sources=("127.0.0.32/29",)) as (backend, recorder, metrics):
        admitted = await udp_exchange("127.0.0.33", backend.transport.local, lambda port:
                                      spoofed("MESSAGE", "udp", ("127.0.0.33", port)),
                                      listen=0.5)
        assert [status_of(a) for a in admitted] == [202]
        assert (await recorder.next()).get("from") == "ceo@sip.example/sip"
        outside = await udp_exchange("127.0.0.40", backend.transport.local, lambda port:
                                     spoofed("MESSAGE", "udp", ("127.0.0.40", port)),
                                     listen=0.5)
        assert [status_of(a) for a in outside] == [403]
        assert recorder.queue.empty() and untrusted_count(metrics, "source") == 1


async def test_a_source_no_longer_trusted_after_a_reload_is_refused() -> None:
    """The UDP reader remembers each admitted source's flow: a reload that narrows
    ``trusted_sources`` must forget them, so the very same address and port is asked
    again (and refused)."""
    async with sip_backend(trusted_sources=("127.0.0.33",)) as (backend, recorder, metrics):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.33", 0))
        sock.setblocking(False)
        source = sock.getsockname()
        loop = asyncio.get_running_loop()

        async def exchange() -> int:
            await loop.sock_sendto(sock, spoofed("MESSAGE", "udp", source),
                                   backend.transport.local)
            return status_of(await asyncio.wait_for(loop.sock_recv(sock, 65535), 5))

        try:
            assert await exchange() == 202
            assert (await recorder.next()).get("from") == "ceo@sip.example/sip"
            await backend.apply(SipSettings(backend="sip", trusted_sources=()))
            assert await exchange() == 403
            assert recorder.queue.empty() and untrusted_count(metrics, "source") == 1
        finally:
            sock.close()


# ---------------------------------------------------------------------- mutual TLS


def client_context(pki, certificate: tuple[Path, Path] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.root / "ca.crt"))
    if certificate is not None:
        context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    return context


def unrelated_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate naming localhost, issued by a CA the gateway does not trust."""
    ca, ca_key = devcerts.make_ca("attacker CA", key_type="ec")
    cert, key = devcerts.issue_certificate(ca, ca_key, ["localhost"], key_type="ec")
    crt_path, key_path = directory / "rogue.crt", directory / "rogue.key"
    devcerts.write_key_and_cert(crt_path, key_path, cert, key)
    return crt_path, key_path


@pytest.mark.parametrize("presented", ["none", "wrong-name", "unrelated-ca", "proxy"])
async def test_mutual_tls_requires_the_proxys_certificate(pki, tmp_path: Path,
                                                          presented: str) -> None:
    """From the trusted address itself: only the certificate decides."""
    tls = pki.tls_settings("localhost")
    certificates = {
        "none": None,
        "wrong-name": (pki.tls_settings("attacker.example").certificate,
                       pki.tls_settings("attacker.example").key),
        "unrelated-ca": unrelated_certificate(tmp_path),
        "proxy": (tls.certificate, tls.key),
    }
    async with sip_backend("tls", proxy_host="localhost", tls=tls,
                           require_client_certificate=True) as (backend, recorder, metrics):
        try:
            answers, closed = await stream_exchange(
                "127.0.0.1", backend.transport.local,
                lambda port: spoofed("MESSAGE", "tls", ("127.0.0.1", port)),
                context=client_context(pki, certificates[presented]),
                second=presented != "proxy")
        except (ssl.SSLError, ConnectionError):
            answers, closed = [], True  # the handshake itself failed
        if presented == "proxy":
            assert [status_of(a) for a in answers] == [202]
            assert (await recorder.next()).get("from") == "ceo@sip.example/sip"
            return
        assert recorder.queue.empty() and closed
        if presented == "unrelated-ca":
            assert answers == []  # the certificate does not verify: no TLS session at all
        else:
            assert [status_of(a) for a in answers] == [403]
            assert untrusted_count(metrics, "certificate") == 1


async def test_mutual_tls_both_ways(pki) -> None:
    """Two backends, each the other's proxy, each requiring the other's client
    certificate: a message goes A → B over a connection where both presented one."""
    tls = pki.tls_settings("localhost")
    b_port = free_port(kind=socket.SOCK_STREAM)
    settings_b = SipSettings(backend="sip", transport="tls", proxy_host="localhost",
                             proxy_port=9, local_host="127.0.0.1", local_port=b_port,
                             require_client_certificate=True)
    b = SipBackend.from_settings(settings_b, ["xmpp.example"], tls)
    received = Recorder()
    await b.start(received)
    settings_a = SipSettings(backend="sip", transport="tls", proxy_host="localhost",
                             proxy_port=b_port, local_host="127.0.0.1", local_port=0,
                             require_client_certificate=True)
    a = SipBackend.from_settings(settings_a, [SIP_DOMAIN], tls)
    answers = Recorder()
    await a.start(answers)
    try:
        await a.deliver(message("bob@xmpp.example/p", "alice@sip.example", "mutual"))
        stanza = await received.next()
        assert stanza.findtext("{jabber:server}body") == "mutual"
        inbound = next(s for s in b.transport.streams.values())
        assert inbound.transport is not None
        peer_cert = inbound.transport.get_extra_info("ssl_object").getpeercert()
        assert ("DNS", "localhost") in peer_cert["subjectAltName"]
        assert answers.queue.empty() and b.untrusted == 0
    finally:
        await a.stop(grace=0.5)
        await b.stop(grace=0.5)


# ---------------------------------------------------------------------- P-Asserted-Identity


@pytest.mark.parametrize(("trust", "asserted", "status", "sender"), [
    (True, "<sip:cfo@sip.example>", 202, "cfo@sip.example/sip"),
    (True, '"Tel" <tel:+15551234>, <sip:cfo@sip.example>', 202, "cfo@sip.example/sip"),
    (False, "<sip:cfo@sip.example>", 202, "ceo@sip.example/sip"),
    (True, "<sip:cfo@elsewhere.example>", 403, ""),
])
async def test_asserted_identity_from_the_proxy(trust: bool, asserted: str, status: int,
                                                sender: str) -> None:
    async with sip_backend(trust_asserted_identity=trust) as (backend, recorder, _):
        answers = await udp_exchange(PROXY, backend.transport.local, lambda port: spoofed(
            "MESSAGE", "udp", (PROXY, port), extra=f"P-Asserted-Identity: {asserted}"),
            listen=0.5)
        assert [status_of(a) for a in answers] == [status]
        if sender:
            assert (await recorder.next()).get("from") == sender
        else:
            assert recorder.queue.empty()


async def test_asserted_identity_does_not_excuse_a_foreign_from() -> None:
    async with sip_backend(trust_asserted_identity=True) as (backend, recorder, _):
        answers = await udp_exchange(PROXY, backend.transport.local, lambda port: spoofed(
            "MESSAGE", "udp", (PROXY, port), sender="x",
            extra="P-Asserted-Identity: <sip:cfo@sip.example>").replace(
                b"@sip.example>;tag", b"@evil.example>;tag", 1), listen=0.5)
        assert [status_of(a) for a in answers] == [403]
        assert recorder.queue.empty()


async def test_a_repeating_sender_is_named_by_each_request() -> None:
    """The gateway remembers how it named the parties of a (From URI, Request-URI) pair;
    with P-Asserted-Identity trusted the sender depends on that header too, so the same
    pair must not be answered from memory."""
    flow = ("udp", (PROXY, 5060))
    async with sip_backend(trust_asserted_identity=True) as (backend, recorder, _):
        for extra, sender in (("", "ceo"), ("P-Asserted-Identity: <sip:cfo@sip.example>",
                                            "cfo"), ("", "ceo")):
            backend.endpoint._on_bytes(spoofed("MESSAGE", "udp", flow[1], extra=extra),
                                       flow, flow[1])
            assert (await recorder.next()).get("from") == f"{sender}@sip.example/sip"


def _presence(sender: str, recipient: str, kind: str):
    from gateway.sip.development import presence

    return presence(sender, recipient, kind)
