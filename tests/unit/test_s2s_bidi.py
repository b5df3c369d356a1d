"""XEP-0288 bidirectional S2S streams, fed as bytes to the sans-I/O cores: one connection
carries both directions for its authenticated domain pairs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.sip.development import message
from gateway.xmpp.events import BidiNegotiated, StanzaReceived, StanzasAcked, StreamClosed
from gateway.xmpp.outbound import NotAuthenticated
from testbed.pki import Pki
from tests.unit.s2s_world import CoreServer, World, accepting_stream, partner

SASL = ("optional", "optional")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(Path(tmp_path_factory.mktemp("pki")))


def world_of(pki: Pki | None, policy: tuple[str, str] = SASL, *, bidi: tuple[bool, bool] =
             (True, True), trusts: bool = True) -> World:
    world = World()
    for (here, there), on in zip((("a.example", "b.example"), ("b.example", "a.example")),
                                 bidi, strict=True):
        tls = pki.tls_settings(here, trusts_peers=trusts) if pki else None
        server = CoreServer(here, [partner(there, *policy)], tls)
        server.ctx = dataclasses.replace(server.ctx, bidi=on)
        world.add(server)
    return world


def test_one_stream_both_ways(pki: Pki) -> None:
    world = world_of(pki)
    out = world.outbound("a.example", "b.example")
    world.run()
    into = accepting_stream(world, out)
    assert out.bidi and into.bidi and str(out.method) == "SASL over TLS"
    assert b'<bidi xmlns="urn:xmpp:bidi"/>' in world.plaintext_to("b.example", into)
    assert len([e for _o, _s, e in world.events if isinstance(e, BidiNegotiated)]) == 2
    # b.example answers over the stream a.example opened: no second connection.
    assert into.can_send("b.example", "a.example")
    into.send_stanza(message("y@b.example/r", "x@a.example", "back"), token="reply")
    out.send_stanza(message("x@a.example/r", "y@b.example", "there"), token="there")
    world.run()
    [back] = [e for o, s, e in world.events if s is out and isinstance(e, StanzaReceived)]
    [there] = [e for o, s, e in world.events if s is into and isinstance(e, StanzaReceived)]
    assert back.stanza.findtext("{jabber:server}body") == "back"
    assert (back.remote_domain, back.local_domain) == ("b.example", "a.example")
    assert there.stanza.findtext("{jabber:server}body") == "there"
    assert len(world.links) == 1
    # Stream management covers both directions.
    assert back.seq == 0 and there.seq == 0
    out.stanza_settled(back.seq, world.now)
    into.stanza_settled(there.seq, world.now)
    world.advance(0.1)
    tokens = {(s is out, e.tokens) for _o, s, e in world.events if isinstance(e, StanzasAcked)}
    assert tokens == {(True, ("there",)), (False, ("reply",))}


def test_only_for_the_authenticated_pairs(pki: Pki) -> None:
    world = world_of(pki)
    out = world.outbound("a.example", "b.example")
    world.run()
    into = accepting_stream(world, out)
    with pytest.raises(NotAuthenticated):
        into.send_stanza(message("y@b.example/r", "x@c.example", "elsewhere"))
    # A spoofed 'from' on the reverse direction ends the stream (RFC 6120 §8.1.1.2).
    into._write(b"<message from='z@c.example' to='x@a.example'><body>x</body></message>")
    world.run()
    [closed] = [e for _o, s, e in world.events if s is out and isinstance(e, StreamClosed)]
    assert closed.error == "invalid-from"


@pytest.mark.parametrize("bidi", [(False, True), (True, False)], ids=["us-off", "peer-off"])
def test_not_negotiated_when_either_side_declines(pki: Pki, bidi: tuple[bool, bool]) -> None:
    world = world_of(pki, bidi=bidi)
    out = world.outbound("a.example", "b.example")
    world.run()
    into = accepting_stream(world, out)
    assert not out.bidi and not into.bidi and str(out.method) == "SASL over TLS"
    assert not into.can_send("b.example", "a.example")


def test_not_without_tls() -> None:
    world = world_of(None, ("not-supported", "not-supported"))
    out = world.outbound("a.example", "b.example")
    world.run()
    assert str(out.method) == "TCP Dialback" and not out.bidi
    assert b"bidi" not in world.plaintext_to("a.example")


def test_not_requested_when_the_peer_certificate_does_not_verify(pki: Pki) -> None:
    """Stanzas on our outbound stream would be believed on the certificate alone; one
    that does not verify (dialback over TLS here) gets no reverse direction."""
    world = world_of(pki, ("optional", "optional"), trusts=False)
    out = world.outbound("a.example", "b.example")
    world.run()
    assert str(out.method) == "TLS Dialback" and not out.bidi
    assert b"<bidi" in world.plaintext_to("a.example")  # offered, declined


def test_bidi_request_when_not_offered_is_a_stream_error(pki: Pki) -> None:
    world = world_of(None, ("not-supported", "not-supported"))
    out = world.outbound("a.example", "b.example")
    world.run()
    into = accepting_stream(world, out)
    out._write(b"<bidi xmlns='urn:xmpp:bidi'/>")
    world.run()
    [closed] = [e for _o, s, e in world.events if s is into and isinstance(e, StreamClosed)]
    assert closed.error == "unsupported-stanza-type"
