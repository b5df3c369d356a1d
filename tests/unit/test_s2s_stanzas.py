"""After authentication: stanzas both ways, counters, keepalives, idle close, the closing
handshake and stream errors from the peer (RFC 6120 §4.4, §4.6.1, §4.9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.model import Limits
from gateway.sip.development import message, presence
from gateway.xmpp.events import PairAuthenticated, StanzaReceived, StreamClosed
from gateway.xmpp.outbound import NotAuthenticated
from gateway.xmpp.stream import CLOSE_GRACE, RELEASE_IDLE_AFTER
from testbed.pki import Pki
from tests.unit.s2s_world import CoreServer, World, accepting_stream, partner
from tests.unit.test_s2s_dialback import originating
from tests.unit.test_s2s_refusals import B_FEATURES_DIALBACK, B_HEADER, stream_error

TCP_ONLY = ("not-supported", "not-supported")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(Path(tmp_path_factory.mktemp("pki")))


def world_of(pki: Pki | None, policy: tuple[str, str] = TCP_ONLY,
             limits: Limits | None = None) -> World:
    world = World()
    for here, there in (("a.example", "b.example"), ("b.example", "a.example")):
        tls = pki.tls_settings(here) if pki else None
        world.add(CoreServer(here, [partner(there, *policy)], tls, limits=limits))
    return world


def closed_events(world: World, stream: object) -> list[StreamClosed]:
    return [e for _o, s, e in world.events if s is stream and isinstance(e, StreamClosed)]


@pytest.mark.parametrize("secure", [False, True], ids=["tcp-dialback", "sasl"])
def test_stanzas_both_ways(pki: Pki, secure: bool) -> None:
    world = world_of(pki if secure else None, ("optional", "optional") if secure else TCP_ONLY)
    a_to_b = world.outbound("a.example", "b.example")
    b_to_a = world.outbound("b.example", "a.example")
    world.run()
    expected = "SASL over TLS" if secure else "TCP Dialback"
    assert str(a_to_b.method) == str(b_to_a.method) == expected
    for i in range(3):
        a_to_b.send_stanza(message("x@a.example/r", "y@b.example", f"a{i}"))
    b_to_a.send_stanza(presence("y@b.example/r", "x@a.example"))
    world.run()
    into_b = [e.stanza for e in world.of("b.example", StanzaReceived)]
    into_a = [e.stanza for e in world.of("a.example", StanzaReceived)]
    assert [s.findtext("{jabber:server}body") for s in into_b] == ["a0", "a1", "a2"]
    assert [s.tag for s in into_a] == ["{jabber:server}presence"]
    assert a_to_b.stanzas_out == 3 and accepting_stream(world, a_to_b).stanzas_in == 3
    assert b_to_a.stanzas_out == 1 and accepting_stream(world, b_to_a).stanzas_in == 1
    # Outbound streams carry no stanzas from the peer (no XEP-0288).
    assert a_to_b.stanzas_in == 0


def test_stanza_bytes_on_the_wire() -> None:
    world = world_of(None)
    out = world.outbound("a.example", "b.example")
    world.run()
    stanza = message("x@a.example/r", "y@b.example", "<&>'\"")
    out.send_stanza(stanza)
    world.run()
    assert world.plaintext_to("b.example", accepting_stream(world, out)).endswith(
        b'<message from="x@a.example/r" to="y@b.example" type="chat"><body>&lt;&amp;&gt;\'"'
        b"</body></message>")


def test_cannot_send_for_a_pair_that_is_not_authenticated() -> None:
    world = world_of(None)
    out = world.outbound("a.example", "b.example")
    world.run()
    with pytest.raises(NotAuthenticated):
        out.send_stanza(message("x@other.example", "y@b.example", "spoof"))
    with pytest.raises(NotAuthenticated):
        out.send_stanza(message("x@a.example", "y@c.example", "misrouted"))
    assert out.stanzas_out == 0


def test_closing_handshake_initiated_by_us() -> None:
    world = world_of(None)
    out = world.outbound("a.example", "b.example")
    world.run()
    inbound = accepting_stream(world, out)
    out.close()
    world.run()
    assert out.closed and inbound.closed
    assert world.plaintext_to("b.example", inbound).endswith(b"</stream:stream>")
    assert world.plaintext_to("a.example", out).endswith(b"</stream:stream>")
    [ours] = closed_events(world, out)
    [theirs] = closed_events(world, inbound)
    assert (ours.error, ours.by_peer, ours.reason) == ("", False, "closed locally")
    assert (theirs.error, theirs.by_peer, theirs.reason) == ("", True, "peer closed the stream")


def test_closing_handshake_initiated_by_the_peer() -> None:
    peer = originating()
    peer.send(B_HEADER + B_FEATURES_DIALBACK)
    peer.send(b"<db:result from='b.example' to='a.example' type='valid'/>")
    assert peer.send(b"</stream:stream>") == b"</stream:stream>"
    [event] = peer.of(StreamClosed)
    assert (event.error, event.by_peer) == ("", True)
    assert peer.stream.closed and peer.stream.get_timer() is None


def test_stanzas_arriving_while_closing_are_delivered_and_nothing_follows_our_close() -> None:
    world = world_of(None)
    out = world.outbound("a.example", "b.example")
    world.run()
    inbound = accepting_stream(world, out)
    # b.example closes; a.example's stanza already in flight arrives after that.
    inbound.close(text="maintenance")
    farewell = inbound.data_to_send()
    assert farewell == b"</stream:stream>"
    out.send_stanza(message("x@a.example/r", "y@b.example", "in flight"))
    inbound.receive_data(out.data_to_send(), world.now)
    assert inbound.data_to_send() == b""  # nothing after our closing tag
    [got] = [e for e in inbound.events() if isinstance(e, StanzaReceived)]
    assert got.stanza.findtext("{jabber:server}body") == "in flight"
    inbound.receive_data(b"</stream:stream>", world.now)
    assert inbound.closed


def test_close_grace_when_the_peer_never_answers() -> None:
    peer = originating()
    peer.send(B_HEADER + B_FEATURES_DIALBACK)
    peer.send(b"<db:result from='b.example' to='a.example' type='valid'/>")
    peer.stream.close()
    assert peer.pump() == b"</stream:stream>"
    assert peer.stream.get_timer() == CLOSE_GRACE
    peer.stream.handle_timer(CLOSE_GRACE)
    assert peer.stream.closed
    assert [e.reason for e in peer.of(StreamClosed)] == ["closed locally"]


@pytest.mark.parametrize(
    "error, condition, reason",
    [
        (b"<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
         b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>going down</text></stream:error>",
         "system-shutdown", "peer sent stream error <system-shutdown/>: going down"),
        (b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
         b"<app-specific xmlns='urn:example'/></stream:error>",
         "conflict", "peer sent stream error <conflict/>"),
        (b"<stream:error/>", "undefined-condition",
         "peer sent stream error <undefined-condition/>"),
    ],
)
def test_peer_stream_error(error: bytes, condition: str, reason: str) -> None:
    peer = originating()
    peer.send(B_HEADER + B_FEATURES_DIALBACK)
    assert peer.send(error) == b"</stream:stream>"
    closed = [e for e in peer.of(StreamClosed)]
    assert [(e.error, e.reason, e.by_peer) for e in closed] == [(condition, reason, True)]
    assert peer.stream.closed


def test_peer_stream_error_on_the_inbound_side() -> None:
    from tests.unit.test_s2s_refusals import PEER_HEADER, inbound

    peer = inbound(None, partner("a.example", *TCP_ONLY))
    peer.send(PEER_HEADER)
    answer = peer.send(b"<stream:error><host-gone xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                       b"</stream:error></stream:stream>")
    assert answer == b"</stream:stream>"
    assert [(e.error, e.by_peer) for e in peer.of(StreamClosed)] == [("host-gone", True)]


def test_keepalive_and_idle_close() -> None:
    limits = Limits(keepalive_interval=60, idle_timeout=600)
    world = world_of(None, limits=limits)
    out = world.outbound("a.example", "b.example")
    world.run()
    inbound = accepting_stream(world, out)
    start = world.now
    # First the idle check that frees the parser and TLS buffers, then the keepalive.
    assert out.get_timer() == start + RELEASE_IDLE_AFTER
    world.advance(RELEASE_IDLE_AFTER)
    assert out.get_timer() == start + 60
    world.wire.clear()
    world.advance(60 - RELEASE_IDLE_AFTER)
    # RFC 6120 §4.6.1: a single space on each stream that had been silent (this world
    # has two links, a.example's and the one b.example opened for db:verify).
    assert sorted(world.wire) == [("a.example->b.example", b" ")] * 2 + [
        ("b.example->a.example", b" ")] * 2
    assert world.plaintext_to("b.example", inbound).endswith(b" ")
    assert not out.closed
    # A stanza resets the idle clock of both ends.
    world.advance(500)
    out.send_stanza(message("x@a.example/r", "y@b.example", "still here"))
    world.run()
    world.advance(500)
    assert not out.closed and not inbound.closed
    for _ in range(3):
        world.advance(60)
    assert out.closed and inbound.closed
    [ours] = closed_events(world, out)
    assert ours.reason == "idle for 600s" and not ours.by_peer


def test_keepalives_do_not_count_as_activity() -> None:
    world = world_of(None, limits=Limits(keepalive_interval=60, idle_timeout=300))
    out = world.outbound("a.example", "b.example")
    world.run()
    for _ in range(5):
        world.advance(60)
    assert out.closed
    assert b" " in b"".join(d for label, d in world.wire if label == "a.example->b.example")


def test_pair_authenticated_is_reported_once_per_pair() -> None:
    world = world_of(None)
    world.outbound("a.example", "b.example")
    world.run()
    assert len(world.of("a.example", PairAuthenticated)) == 2  # A outbound + A inbound (verify)
    assert len(world.of("b.example", PairAuthenticated)) == 2


def test_stream_error_text_is_escaped() -> None:
    peer = originating()
    peer.send(B_HEADER)
    peer.stream.close("policy-violation", "a <b> & c")
    assert peer.pump() == stream_error("policy-violation", "a &lt;b&gt; &amp; c")
