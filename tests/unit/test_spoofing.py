"""Spoofing and downgrade (RFC 6120 §13.7, XEP-0220 §4): nobody gets in
unauthenticated and nothing is sent in the clear when TLS is required."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from gateway.xmpp.events import (
    DialbackVerifyNeeded,
    PairAuthenticated,
    PairFailed,
    StanzaReceived,
)
from testbed.pki import Pki
from tests.unit.s2s_world import CoreServer, World, accepting_stream, partner
from tests.unit.test_s2s_dialback import db_result, key_of_a, receiving
from tests.unit.test_s2s_refusals import (
    AUTH_EXTERNAL,
    inbound,
    sasl_failure,
    stream_error,
    tls_up,
)

TCP_ONLY = ("not-supported", "not-supported")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(Path(tmp_path_factory.mktemp("pki")))


def authenticated_as_a() -> object:
    peer = receiving(partner("a.example", *TCP_ONLY), partner("c.example", *TCP_ONLY))
    peer.send(db_result("a.example", "b.example", key_of_a()))
    peer.stream.dialback_verified("a.example", "b.example", True)
    peer.pump()
    return peer


@pytest.mark.parametrize(
    "stanza, condition, text",
    [
        (b"<message from='mallory@c.example' to='y@b.example'/>", "invalid-from",
         "c.example is not authenticated for b.example on this stream"),
        (b"<message from='mallory@evil.example' to='y@b.example'/>", "invalid-from",
         "evil.example is not authenticated for b.example on this stream"),
        (b"<message from='x@a.example' to='y@z.example'/>", "host-unknown",
         "this gateway does not serve z.example"),
        (b"<message to='y@b.example'/>", "improper-addressing", "stanza without 'from' or 'to'"),
        (b"<message from='x@a.example'/>", "improper-addressing",
         "stanza without 'from' or 'to'"),
        (b"<iq from='@a.example' to='y@b.example' type='get' id='1'/>", "invalid-from",
         "JID '@a.example': empty localpart before '@'"),
        (b"<presence from='x@a.example' to='y@b..example'/>", "improper-addressing", None),
    ],
    ids=["other-partner", "unlisted", "not-served", "no-from", "no-to", "bad-from", "bad-to"],
)
def test_stanza_addressing(stanza: bytes, condition: str, text: str | None) -> None:
    peer = authenticated_as_a()
    answer = peer.send(stanza)
    if text is None:
        assert answer.startswith(
            f'<stream:error><{condition} xmlns="urn:ietf:params:xml:ns:xmpp-streams"/>'.encode())
        assert answer.endswith(b"</stream:error></stream:stream>")
    else:
        assert answer == stream_error(condition, text)
    assert not peer.of(StanzaReceived) and peer.stream.stanzas_in == 0


def test_second_domain_with_a_forged_key_cannot_send() -> None:
    peer = authenticated_as_a()
    peer.send(db_result("c.example", "b.example", "forged"))
    [_, needed] = peer.of(DialbackVerifyNeeded)
    assert needed.remote_domain == "c.example"
    peer.stream.dialback_verified("c.example", "b.example", False)
    peer.pump()
    assert peer.send(b"<message from='m@c.example' to='y@b.example'/>") == stream_error(
        "invalid-from", "c.example is not authenticated for b.example on this stream")


def test_stanza_while_dialback_is_pending() -> None:
    peer = receiving(partner("a.example", *TCP_ONLY))
    peer.send(db_result("a.example", "b.example", key_of_a()))
    assert peer.send(b"<message from='x@a.example' to='y@b.example'/>") == stream_error(
        "not-authorized", "stanza before the stream was authenticated")


def test_sasl_authzid_for_another_domain(pki: Pki) -> None:
    peer = inbound(pki, partner("a.example"), partner("c.example"))
    tls_up(peer, pki)  # a.example's genuine certificate
    answer = peer.send(AUTH_EXTERNAL + base64.b64encode(b"c.example") + b"</auth>")
    assert answer == sasl_failure(
        "invalid-authzid", "authorization identity 'c.example' is not a.example")
    assert not peer.of(PairAuthenticated)


def test_certificate_for_another_domain_claiming_a(pki: Pki) -> None:
    peer = inbound(pki, partner("a.example"), partner("c.example"))
    tls_up(peer, pki, cert="a.example", cert_domain="c.example")  # c's cert, claims a.example
    answer = peer.send(AUTH_EXTERNAL + b"=</auth>")
    assert answer.startswith(b'<failure xmlns="urn:ietf:params:xml:ns:xmpp-sasl">'
                             b"<not-authorized/><text>name mismatch")
    assert b"c.example" in answer and b"a.example" in answer
    assert not peer.of(PairAuthenticated)


def two(pki: Pki, a_policy: tuple, b_policy: tuple, *, b_cert_for: str | None = None) -> World:
    world = World()
    world.add(CoreServer("a.example", [partner("b.example", *a_policy)],
                         pki.tls_settings("a.example")))
    world.add(CoreServer("b.example", [partner("a.example", *b_policy)],
                         pki.tls_settings("b.example", cert_domain=b_cert_for)))
    return world


def test_outbound_peer_with_a_certificate_for_another_domain(pki: Pki) -> None:
    """b.example presents c.example's certificate: no SASL; dialback where permitted."""
    world = two(pki, ("optional", "optional"), ("optional", "optional"), b_cert_for="c.example")
    out = world.outbound("a.example", "b.example")
    world.run()
    assert str(out.method) == "TLS Dialback"  # the identity was proved by dialback instead


def test_outbound_peer_with_a_certificate_for_another_domain_sasl_only(pki: Pki) -> None:
    world = two(pki, ("required", "required"), ("optional", "optional"),
                b_cert_for="c.example")
    out = world.outbound("a.example", "b.example")
    world.run()
    assert out.method is None and out.closed
    [failed] = world.of("a.example", PairFailed)
    assert "certificate of b.example: name mismatch" in failed.reason
    assert b'<stream:error><policy-violation xmlns="urn:ietf:params:xml:ns:xmpp-streams"/>' in (
        world.plaintext_to("b.example"))


def strip_starttls(label: str, data: bytes) -> bytes:
    """A man in the middle removing STARTTLS from b.example's features."""
    if label == "b.example->a.example" and b"<stream:features>" in data:
        data = data.replace(b'<starttls xmlns="urn:ietf:params:xml:ns:xmpp-tls"/>', b"")
        data = data.replace(b'<starttls xmlns="urn:ietf:params:xml:ns:xmpp-tls"><required/>'
                            b"</starttls>", b"")
    return data


@pytest.mark.parametrize("a_policy", [("required", "optional"), ("required", "not-supported"),
                                      ("optional", "required", False)])
def test_starttls_stripped_when_our_policy_requires_tls(pki: Pki, a_policy: tuple) -> None:
    world = two(pki, a_policy, ("optional", "optional"))
    world.tamper = strip_starttls
    out = world.outbound("a.example", "b.example")
    world.run()
    to_b = world.plaintext_to("b.example", accepting_stream(world, out))
    # Never a downgrade: no key, no stanza in the clear; a policy-violation instead.
    assert b"db:result" not in to_b and b"<auth" not in to_b
    assert b'<stream:error><policy-violation xmlns="urn:ietf:params:xml:ns:xmpp-streams"/>' \
           b'<text xmlns="urn:ietf:params:xml:ns:xmpp-streams">b.example does not offer ' \
           b"STARTTLS; partner policy requires TLS" in to_b
    [failed] = world.of("a.example", PairFailed)
    assert failed.reason.startswith("b.example does not offer STARTTLS")
    assert not world.of("a.example", PairAuthenticated)


def test_starttls_stripped_where_policy_allows_plain_dialback(pki: Pki) -> None:
    """tls=optional with TCP dialback permitted: the downgrade is what the policy allows,
    and the session is recorded honestly as TCP Dialback."""
    world = two(pki, ("optional", "optional"), ("optional", "optional"))
    world.tamper = strip_starttls
    out = world.outbound("a.example", "b.example")
    world.run()
    assert str(out.method) == "TCP Dialback" and not out.tls_active


def test_stripped_required_starttls_at_the_receiving_end(pki: Pki) -> None:
    """b.example requires TLS of a.example: whatever a MITM does to the features, b.example
    accepts nothing in the clear."""
    world = two(pki, ("optional", "optional"), ("required", "optional"))
    world.tamper = strip_starttls
    out = world.outbound("a.example", "b.example")
    world.run()
    inbound = accepting_stream(world, out)
    assert not inbound.pairs and inbound.closed
    assert b"<policy-violation" in world.plaintext_to("a.example", out)
    assert b"TLS is required for a.example before anything else" in world.plaintext_to(
        "a.example", out)
