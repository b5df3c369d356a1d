"""XEP-0198 stream management on S2S streams, fed as bytes to the sans-I/O cores.

Enabled after SASL as Prosody 0.12's mod_smacks does; counters modulo 2^32; the receiver
acknowledges a stanza only once the driver settled it; the sender keeps what is not
acknowledged for the driver to re-send or bounce when the link is lost.
"""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import pytest

from gateway.config.model import Limits
from gateway.sip.development import message
from gateway.xmpp import stream_management as sm
from gateway.xmpp.events import (
    StanzaReceived,
    StanzasAcked,
    StreamClosed,
    StreamManagementEnabled,
    StreamManagementFailed,
)
from gateway.xmpp.inbound import InboundStream
from gateway.xmpp.outbound import OutboundStream
from gateway.xmpp.stream import SETTLE_GRACE, Phase
from testbed.pki import Pki
from tests.unit.s2s_world import CoreServer, RawPeer, World, accepting_stream, partner
from tests.unit.test_s2s_refusals import (
    AUTH_EXTERNAL,
    OUR_HEADER,
    PEER_HEADER,
    inbound,
    tls_up,
)

SASL = ("optional", "optional")
TCP_ONLY = ("not-supported", "not-supported")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(Path(tmp_path_factory.mktemp("pki")))


def world_of(pki: Pki | None, policy: tuple[str, str] = SASL, *,
             stream_management: tuple[bool, bool] = (True, True)) -> World:
    world = World()
    for (here, there), enabled in zip((("a.example", "b.example"), ("b.example", "a.example")),
                                      stream_management, strict=True):
        tls = pki.tls_settings(here) if pki else None
        server = CoreServer(here, [partner(there, *policy)], tls, limits=Limits())
        if not enabled:
            server.ctx = dataclasses.replace(server.ctx, stream_management=False)
        world.add(server)
    return world


def linked(pki: Pki) -> tuple[World, OutboundStream, InboundStream]:
    world = world_of(pki)
    out = world.outbound("a.example", "b.example")
    world.run()
    return world, out, accepting_stream(world, out)


def received(world: World, stream: object) -> list[StanzaReceived]:
    return [e for _o, s, e in world.events if s is stream and isinstance(e, StanzaReceived)]


def acked(world: World, stream: object) -> list[StanzasAcked]:
    return [e for _o, s, e in world.events if s is stream and isinstance(e, StanzasAcked)]


def body(n: int) -> object:
    return message("x@a.example/r", "y@b.example", f"m{n}")


# ---------------------------------------------------------------------------- enabling


def test_enabled_both_ways_after_sasl(pki: Pki) -> None:
    world, out, into = linked(pki)
    assert str(out.method) == "SASL over TLS"
    assert out.stream_management and into.stream_management
    assert out.sm_out is not None and out.sm_in is not None and into.sm_in is not None
    up = world.plaintext_to("b.example", into)
    down = world.plaintext_to("a.example", out)
    assert b'<enable xmlns="urn:xmpp:sm:3"/>' in up
    assert b'<enabled xmlns="urn:xmpp:sm:3"/>' in down
    # Offered only once authenticated: the first features (before SASL) had no <sm/>.
    assert down.count(b'<sm xmlns="urn:xmpp:sm:3"/>') == 1
    assert down.index(b"<success") < down.index(b'<sm xmlns="urn:xmpp:sm:3"/>')
    assert sorted((s is out, e.initiated_by_us) for _o, s, e in world.events
                  if isinstance(e, StreamManagementEnabled)) == [(False, False), (True, True)]
    assert out.describe_sm() == {"received": 0, "handled": 0, "acknowledged_to_peer": 0,
                                 "sent": 0, "acknowledged_by_peer": 0, "unacked": 0}


def test_not_with_dialback_only(pki: Pki) -> None:
    """As in Prosody: offered after SASL only; a dialback stream has no features after
    authentication, so it runs as plain S2S (today's behaviour)."""
    world = world_of(None, TCP_ONLY)
    out = world.outbound("a.example", "b.example")
    world.run()
    assert str(out.method) == "TCP Dialback"
    assert not out.stream_management and not accepting_stream(world, out).stream_management
    out.send_stanza(body(0), token="t")
    world.run()
    assert out.describe_sm() is None and out.take_unacked() == []


@pytest.mark.parametrize("which", [(False, True), (True, False)], ids=["us-off", "peer-off"])
def test_either_side_can_switch_it_off(pki: Pki, which: tuple[bool, bool]) -> None:
    world = world_of(pki, stream_management=which)
    out = world.outbound("a.example", "b.example")
    world.run()
    assert str(out.method) == "SASL over TLS"
    assert not out.stream_management and not accepting_stream(world, out).stream_management
    assert b"urn:xmpp:sm:3" not in world.plaintext_to("b.example")


def test_enable_before_authentication_fails(pki: Pki) -> None:
    peer = inbound(pki, partner("a.example"))
    tls_up(peer, pki)
    assert peer.send(b"<enable xmlns='urn:xmpp:sm:3'/>") == (
        b'<failed xmlns="urn:xmpp:sm:3"><not-authorized '
        b'xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></failed>')
    assert not peer.stream.stream_management


def sasl_peer(pki: Pki) -> RawPeer:
    """A raw a.example authenticated with SASL EXTERNAL to b.example, stream restarted."""
    peer = inbound(pki, partner("a.example"))
    tls_up(peer, pki)
    peer.send(AUTH_EXTERNAL + base64.b64encode(b"a.example") + b"</auth>")
    features = peer.send(PEER_HEADER)
    assert features.startswith(OUR_HEADER) and b'<sm xmlns="urn:xmpp:sm:3"/>' in features
    return peer


def test_enable_twice_and_resume_fail(pki: Pki) -> None:
    peer = sasl_peer(pki)
    assert peer.send(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>") == (
        b'<enabled xmlns="urn:xmpp:sm:3"/>')  # no resumption on S2S
    assert peer.send(b"<enable xmlns='urn:xmpp:sm:3'/>") == (
        b'<failed xmlns="urn:xmpp:sm:3"><unexpected-request '
        b'xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></failed>')
    assert peer.send(b"<resume xmlns='urn:xmpp:sm:3' previd='x' h='0'/>") == (
        b'<failed xmlns="urn:xmpp:sm:3"><item-not-found '
        b'xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></failed>')


def test_peer_refusing_enable_leaves_plain_s2s(pki: Pki) -> None:
    """Our <enable/> answered <failed/>: what was sent meanwhile is released as sent."""
    world, out, into = linked(pki)
    # Re-play the moment after our <enable/>, with a peer that fails it.
    out.sm_in = None
    out.sm_out = sm.SentQueue()
    out.send_stanza(body(0), token="t0")
    into._write(b"<failed xmlns='urn:xmpp:sm:3'><service-unavailable "
                b"xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>")
    world.run()
    events = [e for _o, s, e in world.events if s is out
              and isinstance(e, StreamManagementFailed | StanzasAcked)]
    assert [type(e) for e in events] == [StreamManagementFailed, StanzasAcked]
    assert events[0].condition == "service-unavailable"  # type: ignore[union-attr]
    assert events[1].tokens == ("t0",)  # type: ignore[union-attr]
    assert not out.stream_management and not out.closed


# ---------------------------------------------------------------------------- acks


def test_receiver_acknowledges_only_settled_stanzas(pki: Pki) -> None:
    world, out, into = linked(pki)
    for n in range(3):
        out.send_stanza(body(n), token=f"t{n}")
    world.run()
    got = received(world, into)
    assert [e.seq for e in got] == [0, 1, 2]
    # The sender asked (<r/> at the end of the burst); nothing settled yet: h=0.
    assert b'<r xmlns="urn:xmpp:sm:3"/>' in world.plaintext_to("b.example", into)
    assert b'<a xmlns="urn:xmpp:sm:3" h="0"/>' in world.plaintext_to("a.example", out)
    assert acked(world, out) == [] and out.unacked == 3
    into.stanza_settled(2, world.now)  # out of order: h cannot cover it yet
    into.stanza_settled(0, world.now)
    world.advance(sm.ACK_DELAY)
    assert [e.tokens for e in acked(world, out)] == [("t0",)]
    into.stanza_settled(1, world.now)
    into.stanza_settled(1, world.now)  # twice: no effect
    world.advance(sm.ACK_DELAY)
    assert [e.tokens for e in acked(world, out)] == [("t0",), ("t1", "t2")]
    assert out.unacked == 0 and into.sm_in is not None and into.sm_in.handled == 3
    assert into.describe_sm()["acknowledged_to_peer"] == 3  # type: ignore[index]


def test_unsolicited_ack_every_so_many_settled(pki: Pki) -> None:
    world, out, into = linked(pki)
    count = sm.ACK_EVERY * 2
    for n in range(count):
        out.send_stanza(body(n))
    world.run()
    before = world.plaintext_to("a.example", out).count(b"<a ")
    for event in received(world, into):
        into.stanza_settled(event.seq, world.now)
    world.run()  # no time passes: the acks went out on the count alone
    answers = world.plaintext_to("a.example", out)
    assert answers.count(b"<a ") - before == 2
    assert answers.endswith(f'<a xmlns="urn:xmpp:sm:3" h="{count}"/>'.encode())
    assert out.unacked == 0 and sum(e.count for e in acked(world, out)) == count


def test_one_request_outstanding_at_a_time(pki: Pki) -> None:
    world, out, into = linked(pki)
    out.send_stanza(body(0))
    first = out.data_to_send()
    out.send_stanza(body(1))
    second = out.data_to_send()
    assert out.sm_out is not None and out.sm_out.awaiting_since is not None
    into.receive_data(first + second, world.now)
    assert world.plaintext_to("b.example", into).count(b'<r xmlns="urn:xmpp:sm:3"/>') == 1
    # Answered: m1 was sent after that request, so it is asked for now; then nothing
    # new is unacknowledged and nobody asks again.
    world.run()
    assert world.plaintext_to("b.example", into).count(b'<r xmlns="urn:xmpp:sm:3"/>') == 2
    world.advance(1.0)
    assert world.plaintext_to("b.example", into).count(b'<r xmlns="urn:xmpp:sm:3"/>') == 2


def test_unacked_stanzas_are_handed_back_when_the_link_dies(pki: Pki) -> None:
    world, out, into = linked(pki)
    for n in range(3):
        out.send_stanza(body(n), token=n)
    world.run()
    into.stanza_settled(0, world.now)
    world.advance(sm.ACK_DELAY)
    out.connection_lost("TCP connection reset")
    left = out.take_unacked()
    assert [token for _stanza, token in left] == [1, 2]
    assert [s.findtext("{jabber:server}body") for s, _t in left] == ["m1", "m2"]
    assert out.take_unacked() == []
    # The receiver settles later: delivered, but never acknowledged (a possible duplicate).
    into.connection_lost("TCP connection reset")
    into.stanza_settled(1, world.now)
    assert into.settled_after_close == 1


def test_no_ack_within_the_timeout_closes_the_stream(pki: Pki) -> None:
    world, out, _into = linked(pki)
    out.send_stanza(body(0))
    out.data_to_send()  # the stanza and our <r/> are lost in the network
    out.handle_timer(world.now + sm.ACK_TIMEOUT - 1)
    assert not out.closed and out.get_timer() == pytest.approx(world.now + sm.ACK_TIMEOUT)
    out.handle_timer(world.now + sm.ACK_TIMEOUT)
    [closed] = [e for e in out.events() if isinstance(e, StreamClosed)]
    assert closed.error == "connection-timeout" and "XEP-0198" in closed.reason
    assert len(out.take_unacked()) == 1


@pytest.mark.parametrize("h, words", [("5", "only 1 were sent"), ("x", "invalid 'h'"),
                                      ("4294967296", "outside")])
def test_impossible_h_is_a_stream_error(pki: Pki, h: str, words: str) -> None:
    """Prosody closes with <undefined-condition/> on an impossible h; so do we."""
    world, out, into = linked(pki)
    out.send_stanza(body(0))
    world.run()
    into._write(f"<a xmlns='urn:xmpp:sm:3' h='{h}'/>".encode())  # a peer gone wrong
    world.run()
    [closed] = [e for _o, s, e in world.events if s is out and isinstance(e, StreamClosed)]
    assert closed.error == "undefined-condition" and words in closed.reason
    assert b"<undefined-condition" in world.plaintext_to("b.example", into)


def test_h_going_backwards_is_a_stream_error(pki: Pki) -> None:
    queue = sm.SentQueue()
    for _ in range(3):
        queue.push(body(0), None)  # type: ignore[arg-type]
    assert len(queue.ack("2")) == 2
    with pytest.raises(sm.AckError, match="less than the 2"):
        queue.ack("1")
    with pytest.raises(sm.AckError, match="only 3 were sent"):
        queue.ack("4")


def test_h_wraps_at_2_to_the_32() -> None:
    """XEP-0198 §4: h is an unsignedInt; after 2^32 - 1 comes 0."""
    queue = sm.SentQueue()
    queue.sent = queue.acked = queue.requested_at_count = sm.H_MODULUS - 2
    for n in range(4):
        queue.push(body(n), n)  # type: ignore[arg-type]
    assert [t for _s, t in queue.ack("0")] == [0, 1]
    assert [t for _s, t in queue.ack("2")] == [2, 3]
    counter = sm.ReceivedCounter()
    counter.received = counter.handled = sm.H_MODULUS - 1
    seq = counter.receive()
    assert counter.settle(seq)
    assert counter.ack().get("h") == "0"


# ---------------------------------------------------------------------------- closing


def test_graceful_close_waits_for_settlement_and_leaves_late_stanzas_with_the_peer(
        pki: Pki) -> None:
    world, out, into = linked(pki)
    out.send_stanza(body(0), token=0)
    world.run()
    into.close(text="draining")
    assert not into.closed and into.data_to_send() == b""  # waits for stanza 0
    assert not into.can_send("b.example", "a.example")
    out.send_stanza(body(1), token=1)  # in flight: the receiver no longer takes it
    world.run()
    assert [e.seq for e in received(world, into)] == [0] and into.stanzas_left_with_peer == 1
    into.stanza_settled(0, world.now)
    world.run()
    wire = world.plaintext_to("a.example", out)
    assert wire.endswith(b'<a xmlns="urn:xmpp:sm:3" h="1"/></stream:stream>')
    assert into.closed and out.closed
    assert [e.tokens for e in acked(world, out)] == [(0,)]
    assert [t for _s, t in out.take_unacked()] == [1]  # to re-send elsewhere or bounce


def test_graceful_close_does_not_wait_forever(pki: Pki) -> None:
    world, out, into = linked(pki)
    out.send_stanza(body(0))
    world.run()
    into.close(text="draining")
    world.advance(SETTLE_GRACE)
    [closed] = [e for _o, s, e in world.events if s is into and isinstance(e, StreamClosed)]
    assert "1 received stanzas still unsettled" in closed.reason
    into.stanza_settled(0, world.now)
    assert into.settled_after_close == 1


def test_stanzas_after_our_close_tag_are_not_delivered_under_stream_management(
        pki: Pki) -> None:
    world, out, into = linked(pki)
    into.close(text="maintenance")  # nothing unsettled: closes at once
    farewell = into.data_to_send()  # on its way; a.example has not seen it yet
    out.send_stanza(body(0), token=0)
    into.receive_data(out.data_to_send(), world.now)
    assert not [e for e in into.events() if isinstance(e, StanzaReceived)]
    assert into.stanzas_left_with_peer == 1
    out.receive_data(farewell, world.now)
    assert out.closed and [t for _s, t in out.take_unacked()] == [0]


def test_final_ack_from_the_peer_is_taken_while_closing(pki: Pki) -> None:
    world, out, into = linked(pki)
    out.send_stanza(body(0), token="x")
    world.run()
    out.close()
    out.data_to_send()
    into.stanza_settled(0, world.now)  # the receiver's ack races our close
    out.receive_data(into.data_to_send(), world.now)
    world.advance(sm.ACK_DELAY)
    assert [e.tokens for e in acked(world, out)] + [
        e.tokens for e in out.events() if isinstance(e, StanzasAcked)] == [("x",)]


def test_inbound_answers_requests_with_what_is_settled(pki: Pki) -> None:
    peer = sasl_peer(pki)
    peer.send(b"<enable xmlns='urn:xmpp:sm:3'/>")
    answer = peer.send(b"<a xmlns='urn:xmpp:sm:3' h='3'/>")
    # b.example sent nothing on this inbound stream (no bidi): no queue, nothing to ack.
    assert answer == b""
    assert peer.send(b"<r xmlns='urn:xmpp:sm:3'/>") == b'<a xmlns="urn:xmpp:sm:3" h="0"/>'
    peer.send(b"<message from='u@a.example' to='v@b.example'><body>1</body></message>")
    assert peer.send(b"<r xmlns='urn:xmpp:sm:3'/>") == b'<a xmlns="urn:xmpp:sm:3" h="0"/>'
    [got] = peer.of(StanzaReceived)
    peer.stream.stanza_settled(got.seq, 0.0)
    assert peer.send(b"<r xmlns='urn:xmpp:sm:3'/>") == b'<a xmlns="urn:xmpp:sm:3" h="1"/>'


def test_out_of_order_settlement_counter() -> None:
    counter = sm.ReceivedCounter()
    seqs = [counter.receive() for _ in range(5)]
    assert seqs == [0, 1, 2, 3, 4]
    assert not counter.settle(3) and not counter.settle(1) and counter.handled == 0
    assert counter.settle(0) and counter.handled == 2
    assert counter.settle(2) and counter.handled == 4
    assert not counter.settle(9) and counter.unsettled == 1
    assert counter.settle(4) and counter.unsettled == 0 and counter._early is None


def test_outbound_prosody_shaped_negotiation(pki: Pki) -> None:
    """Bytes as Prosody 0.12 sends them: <sm/> with sm:2 and sm:3 after the SASL
    restart; we enable urn:xmpp:sm:3 before anything else is sent."""
    a = CoreServer("a.example", [partner("b.example")], pki.tls_settings("a.example"))
    out = OutboundStream(a.ctx, local_domain="a.example", remote_domain="b.example",
                         partner=partner("b.example"), now=0.0)
    # Where a SASL EXTERNAL success leaves it: TLS on, waiting for the restarted header.
    out._sasl_done = True
    out._tls_active = True
    out.phase = Phase.WAIT_HEADER
    out._header_sent = True
    out.receive_data(
        b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
        b" from='b.example' to='a.example' id='s1' version='1.0'>"
        b"<stream:features><sm xmlns='urn:xmpp:sm:2'><optional/></sm>"
        b"<sm xmlns='urn:xmpp:sm:3'><optional/></sm></stream:features>", 0.0)
    assert out._out.startswith(b'<enable xmlns="urn:xmpp:sm:3"/>')
    assert out.sm_out is not None and out.pairs
