"""Two gateway instances federating over loopback, found through a real DNS server.

Every pairing of valid matrix rows (gateway A's policy for B x B's
policy for A x certificates trusted or not) either succeeds with the method an
independent oracle predicts — asserted on both sides' session records — and carries
messages both ways, or fails with the bounce and log reason the oracle predicts. DNS is a
real dnsmasq holding the SRV records of both domains; the gateways are real ``Gateway``
objects with real sockets, TLS and the SQLite store.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from xml.etree.ElementTree import Element

import pytest

from gateway.config.model import (
    DialbackSettings,
    FederationSettings,
    GatewayConfig,
    ListenAddress,
    PartnerPolicy,
    PartnerType,
    StoreSettings,
)
from gateway.daemon import Gateway
from gateway.dns.resolver import DnsPythonResolver
from gateway.policy.negotiation import Support
from gateway.sip.development import DevelopmentBackend, message
from testbed.pki import Pki
from tests.support.matrix import MatrixRow, expected_method, matrix_rows

SASL = "SASL over TLS"


ROWS = [r for r in matrix_rows() if r.valid]


def oracle(row_a: MatrixRow, row_b: MatrixRow, trusted: bool) -> str | None:
    return expected_method(row_a, row_b, trusted)


def _label(row: MatrixRow) -> str:
    return row.label


def _policy(tls: Support, sasl: Support, dialback: bool) -> MatrixRow:
    return MatrixRow(tls, sasl, dialback, True, (), "")


def partner(domain: str, row: MatrixRow) -> PartnerPolicy:
    return PartnerPolicy(domain, PartnerType.FEDERATED, row.tls, row.sasl, row.dialback)


class Pair:
    """Gateways A (a.example) and B (b.example), started per test."""

    def __init__(self, tmp: Path, pki: Pki, dns: str, ports: dict[str, int]) -> None:
        self.tmp, self.pki, self.dns, self.ports = tmp, pki, dns, ports
        self.gateways: dict[str, Gateway] = {}

    async def start(
        self,
        policy_a: PartnerPolicy | None,
        policy_b: PartnerPolicy | None,
        *,
        trusted: bool = True,
        b_cert_for: str | None = None,
        a_trusts_b: bool = True,
        federation: FederationSettings | None = None,
        backend_b: DevelopmentBackend | None = None,
    ) -> None:
        for domain, policy in (("a.example", policy_a), ("b.example", policy_b)):
            tls = self.pki.tls_settings(
                domain,
                trusts_peers=trusted and (a_trusts_b or domain != "a.example"),
                cert_domain=b_cert_for if domain == "b.example" else None,
            )
            config = GatewayConfig(
                domains=(domain,),
                partners=(policy,) if policy else (),
                listen=(ListenAddress("127.0.0.1", self.ports[domain]),),
                tls=tls,
                dialback=DialbackSettings(f"secret-of-{domain}"),
                store=StoreSettings(self.tmp / domain / "store.sqlite3"),
                admin_socket=self.tmp / domain / "admin.sock",
                federation=federation or FederationSettings(),
            )
            resolver = DnsPythonResolver(nameservers=(self.dns,), timeout=2.0)
            backend = backend_b if domain == "b.example" else None
            gateway = Gateway(config, backend=backend, resolver=resolver)
            await gateway.start()
            self.gateways[domain] = gateway

    @property
    def a(self) -> Gateway:
        return self.gateways["a.example"]

    @property
    def b(self) -> Gateway:
        return self.gateways["b.example"]

    async def stop(self) -> None:
        for gateway in self.gateways.values():
            await gateway.stop()
        self.gateways.clear()

    def methods(self, gateway: Gateway, direction: str) -> set[str]:
        return {
            s["method"]
            for s in gateway.status()["sessions"]
            if s["direction"] == direction and s["method"]
        }


class HoldsAfterDelivering(DevelopmentBackend):
    """B's users, who keep the router busy with the stanza whose body is ``body`` once it
    is delivered, until :attr:`released`: it is not settled meanwhile, so B does not
    acknowledge it (XEP-0198 §4)."""

    def __init__(self, body: str) -> None:
        super().__init__(("b.example",))
        self.body = body
        self.released = asyncio.Event()

    async def deliver(self, stanza: Element) -> None:
        await super().deliver(stanza)
        if stanza.findtext("{jabber:server}body") == self.body:
            await self.released.wait()


@pytest.fixture
async def pair(tmp_path: Path, pki: Pki, dns_for_pair: tuple[str, dict[str, int]]):
    dns, ports = dns_for_pair
    p = Pair(tmp_path, pki, dns, ports)
    try:
        yield p
    finally:
        await p.stop()


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted", "untrusted"])
@pytest.mark.parametrize("row_b", ROWS, ids=_label)
@pytest.mark.parametrize("row_a", ROWS, ids=_label)
async def test_pairing(pair: Pair, row_a: MatrixRow, row_b: MatrixRow, trusted: bool) -> None:
    expected = oracle(row_a, row_b, trusted)
    # Each direction negotiates on its own stream here (no XEP-0288 bidi, which would
    # carry B's answer over A's stream: test_bidi_between_gateways).
    await pair.start(partner("b.example", row_a), partner("a.example", row_b), trusted=trusted,
                     federation=FederationSettings(bidi=False))
    await pair.a.backend.inject(message("alice@a.example/pc", "echo@b.example", "ping"))
    if expected is None:
        bounce = await pair.a.backend.next_delivered(10)
        assert bounce.get("type") == "error", "a refused pairing must bounce the message"
        assert bounce.get("from") == "echo@b.example"
        assert not pair.b.backend.delivered
        return
    delivered = await pair.b.backend.next_delivered(10)
    assert (delivered.get("from"), delivered.findtext("{jabber:server}body")) == (
        "alice@a.example/pc",
        "ping",
    )
    echo = await pair.a.backend.next_delivered(10)
    assert echo.get("type") != "error", f"echo bounced: {echo}"
    assert (echo.get("from"), echo.get("to")) == ("echo@b.example/dev", "alice@a.example/pc")
    assert pair.methods(pair.a, "outbound") == {expected}
    assert expected in pair.methods(pair.b, "inbound")
    # The echo went B→A on B's own outbound stream, negotiated with the mirrored policies.
    assert pair.methods(pair.b, "outbound") == {oracle(row_b, row_a, trusted)}


async def _bounce_and_logs(pair: Pair, caplog: pytest.LogCaptureFixture) -> tuple[str, str]:
    caplog.set_level(logging.INFO, logger="gateway")
    await pair.a.backend.inject(message("alice@a.example/pc", "echo@b.example", "ping"))
    bounce = await pair.a.backend.next_delivered(10)
    assert bounce.get("type") == "error"
    error = bounce.find("{jabber:server}error")
    assert error is not None
    condition = next(c.tag.rpartition("}")[2] for c in error if not c.tag.endswith("}text"))
    if condition == "policy-violation":
        # RFC 6120 §8.3.3.12: the policy is named in the error's text.
        assert (error.findtext("{urn:ietf:params:xml:ns:xmpp-stanzas}text") or "").startswith(
            "the server policies of a.example and b.example do not allow a connection: ")
    await asyncio.sleep(0.05)  # let the peer log its side of the close
    return condition, "\n".join(
        r.getMessage() + " " + str(getattr(r, "gw_fields", "")) for r in caplog.records
    )


async def test_tls_required_against_tls_not_supported(pair: Pair, caplog) -> None:
    await pair.start(
        partner("b.example", _policy(Support.REQUIRED, Support.OPTIONAL, True)),
        partner("a.example", _policy(Support.NOT_SUPPORTED, Support.NOT_SUPPORTED, True)),
    )
    condition, logs = await _bounce_and_logs(pair, caplog)
    assert condition == "policy-violation"  # a policy mismatch, not a missing server
    assert "b.example does not offer STARTTLS; partner policy requires TLS" in logs
    assert "sent stream error <policy-violation/>" in logs
    # B, whose incoming stream A gave up on, says which of its settings is in the way.
    assert ("our policy for a.example is tls=not-supported sasl=not-supported dialback=true "
            "while a.example requires encryption: xmpp-gateway partner set a.example --tls "
            "optional (or required)") in logs


async def test_sasl_required_against_untrusted_certificate(pair: Pair, caplog) -> None:
    policy = _policy(Support.REQUIRED, Support.REQUIRED, False)
    await pair.start(partner("b.example", policy), partner("a.example", policy), a_trusts_b=False)
    condition, logs = await _bounce_and_logs(pair, caplog)
    assert condition == "policy-violation"
    assert "certificate of b.example: issuer not trusted" in logs


async def test_sasl_required_when_the_peer_does_not_trust_us(pair: Pair, caplog) -> None:
    policy = _policy(Support.REQUIRED, Support.REQUIRED, False)
    await pair.start(partner("b.example", policy), partner("a.example", policy), trusted=False)
    condition, logs = await _bounce_and_logs(pair, caplog)
    assert condition == "policy-violation"
    assert "b.example did not offer SASL EXTERNAL" in logs


async def test_sasl_required_against_certificate_for_another_domain(pair: Pair, caplog) -> None:
    policy = _policy(Support.REQUIRED, Support.REQUIRED, False)
    await pair.start(
        partner("b.example", policy), partner("a.example", policy), b_cert_for="other.example"
    )
    condition, logs = await _bounce_and_logs(pair, caplog)
    assert condition == "policy-violation"
    assert "name mismatch (presented: other.example; expected: b.example)" in logs


async def test_unlisted_domain_is_refused(pair: Pair, caplog) -> None:
    await pair.start(partner("b.example", _policy(Support.OPTIONAL, Support.OPTIONAL, True)), None)
    condition, logs = await _bounce_and_logs(pair, caplog)
    assert condition == "policy-violation"
    assert "a.example is not a federation partner of this gateway" in logs
    assert "a.example is not a federation partner: xmpp-gateway partner add a.example" in logs
    assert "sent stream error <policy-violation/>" in logs  # B's side
    assert "peer sent stream error <policy-violation/>" in logs  # A's side


async def test_dialback_disabled_on_a_dialback_only_path(pair: Pair, caplog) -> None:
    await pair.start(
        partner("b.example", _policy(Support.REQUIRED, Support.NOT_SUPPORTED, True)),
        partner("a.example", _policy(Support.REQUIRED, Support.REQUIRED, False)),
    )
    condition, logs = await _bounce_and_logs(pair, caplog)
    assert condition == "policy-violation"
    assert (
        "answered dialback with error <not-authorized/>: partner policy for a.example "
        "permits only SASL over TLS (dialback not allowed)"
    ) in logs


async def test_status_reports_tls_version_and_counters(pair: Pair) -> None:
    policy = _policy(Support.REQUIRED, Support.REQUIRED, False)
    await pair.start(partner("b.example", policy), partner("a.example", policy))
    for index in range(3):
        await pair.a.backend.inject(message("alice@a.example/pc", "bob@b.example", f"m{index}"))
    for _ in range(3):
        await pair.b.backend.next_delivered(10)
    outbound = [s for s in pair.a.status()["sessions"] if s["direction"] == "outbound"]
    assert len(outbound) == 1
    session = outbound[0]
    assert session["peer_domain"] == "b.example" and session["method"] == SASL
    assert session["tls_version"] in ("TLSv1.2", "TLSv1.3") and session["cipher"]
    assert session["stanzas_out"] == 3


async def test_direct_tls_and_sni_certificate_choice(tmp_path: Path, pki: Pki) -> None:
    """XEP-0368: B publishes only _xmpps-server._tcp and listens with direct TLS; B serves
    two domains with a certificate each (chosen by SNI), and A reaches both."""
    import socket

    from gateway.config.model import CertificateFiles, ListenAddress
    from testbed.dnsmasq import DnsmasqServer, free_port

    port_a, port_b = free_port(kind=socket.SOCK_STREAM), free_port(kind=socket.SOCK_STREAM)
    dns = DnsmasqServer(
        tmp_path / "dns",
        host_records={"xmpp.a.example": "127.0.0.1", "xmpp.b.example": "127.0.0.1"},
        srv_records=[("_xmpp-server._tcp.a.example", "xmpp.a.example", port_a, 0, 5),
                     ("_xmpps-server._tcp.b.example", "xmpp.b.example", port_b, 0, 5),
                     ("_xmpps-server._tcp.b2.example", "xmpp.b.example", port_b, 0, 5)],
    )
    sasl_only = _policy(Support.REQUIRED, Support.REQUIRED, False)
    with dns:
        tls_b = pki.tls_settings("b.example")
        tls_b2 = pki.tls_settings("b2.example")
        import dataclasses

        tls_b = dataclasses.replace(tls_b, per_domain={
            "b2.example": CertificateFiles(tls_b2.certificate, tls_b2.key)})
        config_b = GatewayConfig(
            domains=("b.example", "b2.example"), partners=(partner("a.example", sasl_only),),
            listen=(ListenAddress("127.0.0.1", port_b, direct_tls=True),), tls=tls_b,
            dialback=DialbackSettings("b"), store=StoreSettings(tmp_path / "b.sqlite3"),
            admin_socket=tmp_path / "b.sock")
        config_a = GatewayConfig(
            domains=("a.example",),
            partners=(PartnerPolicy("b.example", PartnerType.FEDERATED, Support.REQUIRED,
                                    Support.REQUIRED, False, ("b2.example",)),),
            listen=(ListenAddress("127.0.0.1", port_a),), tls=pki.tls_settings("a.example"),
            dialback=DialbackSettings("a"), store=StoreSettings(tmp_path / "a.sqlite3"),
            admin_socket=tmp_path / "a.sock")
        resolver = DnsPythonResolver(nameservers=(dns.nameserver,), timeout=2.0)
        a, b = Gateway(config_a, resolver=resolver), Gateway(config_b, resolver=resolver)
        await a.start()
        await b.start()
        try:
            for domain in ("b.example", "b2.example"):
                await a.backend.inject(message("alice@a.example/pc", f"bob@{domain}", domain))
                delivered = await b.backend.next_delivered(10)
                assert delivered.get("to") == f"bob@{domain}"
            outbound = [s for s in a.status()["sessions"] if s["direction"] == "outbound"]
            assert {s["method"] for s in outbound} == {SASL}
            assert {s["peer_domain"] for s in outbound} == {"b.example", "b2.example"}
            # SASL EXTERNAL succeeded for b2.example: its own certificate was presented.
            # A's certificate check for b2.example would have failed on b.example's cert.
        finally:
            await a.stop()
            await b.stop()


async def test_bidi_between_gateways(pair: Pair) -> None:
    """XEP-0288 and XEP-0198 between two gateways: A's stream carries B's answer too (one
    TCP connection), and each side acknowledges what the other sent."""
    await pair.start(partner("b.example", _policy("optional", "optional", True)),
                     partner("a.example", _policy("optional", "optional", True)))
    await pair.a.backend.inject(message("alice@a.example/pc", "echo@b.example", "ping"))
    assert (await pair.b.backend.next_delivered(10)).findtext("{jabber:server}body") == "ping"
    echo = await pair.a.backend.next_delivered(10)
    assert echo.get("type") != "error" and echo.get("from") == "echo@b.example/dev"
    rows = pair.a.status()["sessions"] + pair.b.status()["sessions"]
    assert len(pair.a.s2s.connections) == 1 and len(pair.b.s2s.connections) == 1  # type: ignore[union-attr]
    assert all(row["bidi"] and row["stream_management"] for row in rows), rows
    for _ in range(100):  # acknowledgements go out within ACK_DELAY of delivery
        rows = pair.a.status()["sessions"] + pair.b.status()["sessions"]
        if all(row["stream_management"]["unacked"] == 0 for row in rows):
            break
        await asyncio.sleep(0.02)
    assert all(row["stream_management"]["unacked"] == 0 for row in rows), rows


async def test_resent_stanza_already_delivered_is_not_delivered_twice(pair: Pair) -> None:
    """A's link to B dies after B delivered a stanza but before B's acknowledgement left:
    A sends it again over a new link, marked as re-sent (XEP-0203 delay); B recognises
    it and delivers it once."""
    holding = HoldsAfterDelivering("once")
    await pair.start(partner("b.example", _policy("optional", "optional", True)),
                     partner("a.example", _policy("optional", "optional", True)),
                     federation=FederationSettings(bidi=False), backend_b=holding)
    await pair.a.backend.inject(message("alice@a.example/pc", "bob@b.example", "warm-up"))
    await pair.b.backend.next_delivered(10)
    b_s2s = pair.b.s2s
    assert b_s2s is not None and pair.a.s2s is not None
    [link] = [c for c in b_s2s.connections if c.stream.direction == "in"]
    stanza = message("alice@a.example/pc", "bob@b.example", "once")
    stanza.set("id", "once-1")
    await pair.a.backend.inject(stanza)
    assert (await pair.b.backend.next_delivered(10)).findtext("{jabber:server}body") == "once"
    [out] = [c for c in pair.a.s2s.connections if c.stream.direction == "out"]
    assert out.stream.unacked == 1
    out.abort()  # the link dies (RST), B's acknowledgement never came
    for _ in range(500):
        if link not in b_s2s.connections:
            break
        await asyncio.sleep(0.01)
    holding.released.set()  # settled now, on a link that is gone: nothing acknowledged
    await pair.a.backend.inject(message("alice@a.example/pc", "bob@b.example", "after"))
    assert (await pair.b.backend.next_delivered(10)).findtext("{jabber:server}body") == "after"
    assert b_s2s.recent.duplicates == 1
    bodies = [s.findtext("{jabber:server}body") for s in pair.b.backend.delivered]
    assert bodies.count("once") == 1, bodies  # it came again, and was not delivered twice
