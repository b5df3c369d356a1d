"""Server dialback (XEP-0220) in its three roles, its errors, and the attacks on it.

Receiving and authoritative roles are driven with literal bytes (``RawPeer``); the
originating role and the end-to-end attacks (forged keys, replayed keys, a secret that does
not match) run between cores in the in-memory ``World``. Keys follow XEP-0185.
"""

from __future__ import annotations

import pytest

from gateway.auth.dialback_key import DialbackKeyGenerator
from gateway.config.model import PartnerPolicy, PartnerType
from gateway.policy.negotiation import Support
from gateway.sip.development import message
from gateway.xmpp.events import (
    DialbackVerifyAnswered,
    DialbackVerifyNeeded,
    PairAuthenticated,
    PairFailed,
    StanzaReceived,
    StreamClosed,
)
from gateway.xmpp.inbound import MAX_PENDING_DIALBACK, InboundStream
from gateway.xmpp.outbound import OutboundStream
from tests.unit.s2s_world import CoreServer, RawPeer, World, accepting_stream, partner
from tests.unit.test_s2s_refusals import (
    B_FEATURES_DIALBACK,
    B_HEADER,
    PEER_HEADER,
    db_error,
    fixed_ids,
    stream_error,
)

TCP_ONLY = ("not-supported", "not-supported")
A_SECRET = "secret-of-a"
B_SECRET = "secret-of-b"


def receiving(*partners: PartnerPolicy, header: bytes = PEER_HEADER) -> RawPeer:
    server = fixed_ids(CoreServer("b.example", list(partners), None, secret=B_SECRET))
    peer = RawPeer(InboundStream(server.ctx, now=0.0))
    peer.send(header)
    return peer


def key_of_a(receiving: str = "b.example", originating: str = "a.example",
             stream_id: str = "sid-1") -> str:
    return DialbackKeyGenerator(A_SECRET).generate(receiving, originating, stream_id)


def db_result(from_: str, to: str, key: str) -> bytes:
    return f"<db:result from='{from_}' to='{to}'>{key}</db:result>".encode()


# ---------------------------------------------------------------------------- receiving role


def test_receiving_valid_key() -> None:
    peer = receiving(partner("a.example", *TCP_ONLY))
    assert peer.send(db_result("a.example", "b.example", key_of_a())) == b""
    [needed] = peer.of(DialbackVerifyNeeded)
    assert needed == DialbackVerifyNeeded("a.example", "b.example", "sid-1", key_of_a())
    peer.stream.dialback_verified("a.example", "b.example", True)
    assert peer.pump() == b'<db:result from="b.example" to="a.example" type="valid"/>'
    [auth] = peer.of(PairAuthenticated)
    assert (auth.remote_domain, auth.local_domain, str(auth.method)) == (
        "a.example", "b.example", "TCP Dialback")


def test_receiving_invalid_key_answers_invalid_and_closes() -> None:
    peer = receiving(partner("a.example", *TCP_ONLY))
    peer.send(db_result("a.example", "b.example", "forged"))
    peer.stream.dialback_verified("a.example", "b.example", False)
    assert peer.pump() == (b'<db:result from="b.example" to="a.example" type="invalid"/>'
                           b"</stream:stream>")
    [event] = peer.of(StreamClosed)
    assert event.reason == "dialback key for a.example declared invalid by its authoritative server"
    assert not peer.of(PairAuthenticated)


def test_receiving_invalid_key_for_a_second_domain_keeps_the_stream() -> None:
    peer = receiving(partner("a.example", *TCP_ONLY, additional_domains=("a2.example",)))
    peer.send(db_result("a.example", "b.example", key_of_a()))
    peer.stream.dialback_verified("a.example", "b.example", True)
    peer.pump()
    peer.send(db_result("a2.example", "b.example", "forged"))
    peer.stream.dialback_verified("a2.example", "b.example", False)
    assert peer.pump() == db_error(
        "result", "b.example", "a2.example", "forbidden",
        "dialback key was declared invalid by the authoritative server")
    assert not peer.of(StreamClosed) and not peer.stream.closed
    assert list(peer.stream.pairs) == [("a.example", "b.example")]


def test_receiving_no_verdict_is_a_dialback_error() -> None:
    peer = receiving(partner("a.example", *TCP_ONLY))
    peer.send(db_result("a.example", "b.example", key_of_a()))
    peer.stream.dialback_verified("a.example", "b.example", None, "remote-server-timeout",
                                  "no answer from a.example")
    assert peer.pump() == db_error("result", "b.example", "a.example", "remote-server-timeout",
                                   "no answer from a.example")
    assert not peer.stream.closed


def test_receiving_verdict_without_a_request_is_ignored() -> None:
    peer = receiving(partner("a.example", *TCP_ONLY))
    peer.stream.dialback_verified("a.example", "b.example", True)
    assert peer.pump() == b"" and not peer.stream.pairs


def test_dialback_for_an_unlisted_domain_is_forbidden() -> None:
    peer = receiving(partner("a.example", *TCP_ONLY))
    assert peer.send(db_result("c.example", "b.example", "k")) == db_error(
        "result", "b.example", "c.example", "forbidden",
        "c.example is not a federation partner of this gateway")
    assert not peer.of(DialbackVerifyNeeded) and not peer.stream.closed


def test_dialback_not_permitted_by_policy() -> None:
    # The stream is c.example's (TCP dialback allowed); a.example's entry permits only SASL.
    peer = receiving(partner("a.example", "optional", "optional", dialback=False),
                     partner("c.example", *TCP_ONLY),
                     header=PEER_HEADER.replace(b"from='a.example'", b"from='c.example'"))
    answer = peer.send(db_result("a.example", "b.example", "k"))
    assert answer == db_error(
        "result", "b.example", "a.example", "not-authorized",
        "partner policy for a.example permits only SASL over TLS (dialback not allowed on an "
        "unencrypted stream)")
    assert not peer.of(DialbackVerifyNeeded) and not peer.stream.closed


def test_dialback_over_plain_tcp_needs_tls_for_this_partner() -> None:
    """A second domain whose entry permits dialback only over TLS, asked in the clear."""
    peer = receiving(partner("a.example", *TCP_ONLY),
                     partner("tls.example", "required", "not-supported"))
    answer = peer.send(db_result("tls.example", "b.example", "k"))
    assert answer == db_error("result", "b.example", "tls.example", "policy-violation",
                              "TLS is required before dialback for tls.example")


def test_dialback_for_a_domain_not_served() -> None:
    peer = receiving(partner("a.example", *TCP_ONLY))
    assert peer.send(db_result("a.example", "z.example", "k")) == db_error(
        "result", "z.example", "a.example", "item-not-found", "'z.example' is not served here")


def test_dialback_for_an_already_authenticated_pair_is_valid_at_once() -> None:
    peer = receiving(partner("a.example", *TCP_ONLY))
    peer.send(db_result("a.example", "b.example", key_of_a()))
    peer.stream.dialback_verified("a.example", "b.example", True)
    peer.pump()
    assert peer.send(db_result("a.example", "b.example", "anything")) == (
        b'<db:result from="b.example" to="a.example" type="valid"/>')
    assert len(peer.of(DialbackVerifyNeeded)) == 1


@pytest.mark.parametrize(
    "element, condition, text",
    [
        (b"<db:result from='a.example' to='b.example' type='valid'/>",
         "unsupported-stanza-type", "typed db:result on an inbound stream (XEP-0220 §2.2)"),
        (b"<db:result from='a.example' to='b.example'/>", "bad-format",
         "db:result without a key"),
        (b"<db:result from='a..example' to='b.example'>k</db:result>", "invalid-from",
         "malformed dialback 'from' 'a..example'"),
        (b"<db:verify from='a.example' to='b.example' id='x' type='valid'/>",
         "unsupported-stanza-type", "typed db:verify on an inbound stream (XEP-0220 §2.2)"),
        (b"<db:verify from='a.example' to='b.example'>k</db:verify>", "bad-format",
         "db:verify needs from, to, id and a key"),
        (b"<db:verify from='a..example' to='b.example' id='x'>k</db:verify>", "invalid-from",
         "malformed dialback 'from' 'a..example'"),
    ],
)
def test_malformed_dialback_elements(element: bytes, condition: str, text: str) -> None:
    peer = receiving(partner("a.example", *TCP_ONLY))
    assert peer.send(element) == stream_error(condition, text)


def test_too_many_pending_dialback_requests() -> None:
    domains = tuple(f"d{i}.example" for i in range(MAX_PENDING_DIALBACK + 1))
    peer = receiving(partner("a.example", *TCP_ONLY, additional_domains=domains))
    for domain in domains[:-1]:
        assert peer.send(db_result(domain, "b.example", "k")) == b""
    assert peer.send(db_result(domains[-1], "b.example", "k")) == stream_error(
        "policy-violation", "too many pending dialback requests")


# ---------------------------------------------------------------------------- authoritative


def db_verify(key: str, id_: str = "sid-9", from_: str = "a.example") -> bytes:
    return f"<db:verify from='{from_}' to='b.example' id='{id_}'>{key}</db:verify>".encode()


def test_authoritative_valid_and_invalid() -> None:
    peer = receiving(partner("a.example", *TCP_ONLY))
    # b.example minted this key as originating server towards a.example on stream sid-9.
    good = DialbackKeyGenerator(B_SECRET).generate("a.example", "b.example", "sid-9")
    assert peer.send(db_verify(good)) == (
        b'<db:verify from="b.example" to="a.example" id="sid-9" type="valid"/>')
    # Forged (another secret), replayed (another stream id), for another domain pair.
    forged = DialbackKeyGenerator("guess").generate("a.example", "b.example", "sid-9")
    assert peer.send(db_verify(forged)) == (
        b'<db:verify from="b.example" to="a.example" id="sid-9" type="invalid"/>')
    assert peer.send(db_verify(good, id_="sid-10")) == (
        b'<db:verify from="b.example" to="a.example" id="sid-10" type="invalid"/>')
    assert peer.send(db_verify(good, from_="c.example")) == (
        b'<db:verify from="b.example" to="c.example" id="sid-9" type="invalid"/>')
    assert not peer.stream.closed and not peer.stream.pairs  # verifying authenticates nobody


def test_authoritative_domain_not_served() -> None:
    peer = receiving(partner("a.example", *TCP_ONLY))
    answer = peer.send(b"<db:verify from='a.example' to='z.example' id='s'>k</db:verify>")
    assert answer == db_error("verify", "z.example", "a.example", "item-not-found",
                              "'z.example' is not served here", id_="s")


# ---------------------------------------------------------------------------- originating role


def originating(policy: PartnerPolicy | None = None) -> RawPeer:
    server = CoreServer("a.example", [policy or partner("b.example", *TCP_ONLY)], None,
                        secret=A_SECRET)
    stream = OutboundStream(server.ctx, local_domain="a.example", remote_domain="b.example",
                            partner=policy or partner("b.example", *TCP_ONLY), now=0.0)
    peer = RawPeer(stream)
    stream.initiate(0.0)
    peer.pump()
    return peer


def test_originating_sends_the_xep0185_key() -> None:
    peer = originating()
    answer = peer.send(B_HEADER + B_FEATURES_DIALBACK)
    assert answer == f'<db:result from="a.example" to="b.example">{key_of_a(stream_id="b-1")}' \
                     f"</db:result>".encode()
    peer.send(b"<db:result from='b.example' to='a.example' type='valid'/>")
    [auth] = peer.of(PairAuthenticated)
    assert str(auth.method) == "TCP Dialback"
    assert peer.stream.can_send("a.example", "b.example")


def test_originating_key_declared_invalid() -> None:
    peer = originating()
    peer.send(B_HEADER + B_FEATURES_DIALBACK)
    assert peer.send(b"<db:result from='b.example' to='a.example' type='invalid'/>") == (
        b"</stream:stream>")
    [event] = peer.of(PairFailed)
    assert event.condition == "internal-server-error"
    assert event.reason == ("b.example declared our dialback key invalid "
                            "(dialback secret mismatch?)")


def test_originating_dialback_error() -> None:
    peer = originating()
    peer.send(B_HEADER + B_FEATURES_DIALBACK)
    answer = peer.send(
        b"<db:result from='b.example' to='a.example' type='error'><error type='cancel'>"
        b"<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>")
    assert answer == b"</stream:stream>"
    [event] = peer.of(PairFailed)
    assert event.condition == "remote-server-timeout"
    assert event.reason == "b.example answered dialback with error <item-not-found/>"


@pytest.mark.parametrize(
    "answer",
    [
        b"<db:result from='b.example' to='a.example' type='valid'/>",  # before we asked
        b"<db:result from='c.example' to='a.example' type='valid'/>",  # for another domain
    ],
)
def test_unsolicited_dialback_result_is_not_authorized(answer: bytes) -> None:
    peer = originating()
    peer.send(B_HEADER)  # no features yet: no db:result was sent
    assert peer.send(answer) == stream_error("not-authorized", "unsolicited dialback result")
    assert not peer.of(PairAuthenticated)


def test_unsolicited_result_for_another_domain_after_ours() -> None:
    peer = originating()
    peer.send(B_HEADER + B_FEATURES_DIALBACK)
    answer = peer.send(b"<db:result from='c.example' to='a.example' type='valid'/>")
    assert answer == stream_error("not-authorized", "unsolicited dialback result")
    assert not peer.stream.pairs


def test_verify_answers_must_match_a_request() -> None:
    peer = originating()
    peer.send(B_HEADER + B_FEATURES_DIALBACK)
    peer.stream.request_verify("a.example", "b.example", "in-7", "k1")
    assert peer.pump() == b'<db:verify from="a.example" to="b.example" id="in-7">k1</db:verify>'
    # From a server that is not the authoritative one we asked:
    answer = peer.send(b"<db:verify from='c.example' to='a.example' id='in-7' type='valid'/>")
    assert answer == stream_error("not-authorized", "unsolicited db:verify answer")
    assert not peer.of(DialbackVerifyAnswered) or all(
        e.valid is None for e in peer.of(DialbackVerifyAnswered))


def test_verify_answer_for_another_stream_id_is_unsolicited() -> None:
    peer = originating()
    peer.send(B_HEADER + B_FEATURES_DIALBACK)
    peer.stream.request_verify("a.example", "b.example", "in-7", "k1")
    peer.pump()
    answer = peer.send(b"<db:verify from='b.example' to='a.example' id='in-8' type='valid'/>")
    assert answer == stream_error("not-authorized", "unsolicited db:verify answer")


@pytest.mark.parametrize(
    "answer, valid, error",
    [
        (b"<db:verify from='b.example' to='a.example' id='in-7' type='valid'/>", True, ""),
        (b"<db:verify from='b.example' to='a.example' id='in-7' type='invalid'/>", False, ""),
        (b"<db:verify from='b.example' to='a.example' id='in-7' type='error'>"
         b"<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
         b"</error></db:verify>", None, "<item-not-found/> "),
    ],
)
def test_verify_answers(answer: bytes, valid: bool | None, error: str) -> None:
    peer = originating()
    peer.send(B_HEADER + B_FEATURES_DIALBACK)
    peer.stream.request_verify("a.example", "b.example", "in-7", "k1")
    peer.pump()
    assert peer.send(answer) == b""
    assert peer.of(DialbackVerifyAnswered) == [
        DialbackVerifyAnswered("b.example", "a.example", "in-7", valid, error)]


def test_verify_requests_wait_for_the_dialback_channel_and_fail_on_close() -> None:
    peer = originating()
    peer.stream.request_verify("a.example", "b.example", "in-7", "k1")
    assert peer.pump() == b""  # no header from b.example yet: queued
    peer.stream.connection_lost("reset")
    peer.pump()
    [event] = peer.of(DialbackVerifyAnswered)
    assert (event.valid, event.stream_id) == (None, "in-7")
    assert event.error == "stream closed before sending: reset"


# ---------------------------------------------------------------------------- end to end


def tcp_world(a_secret: str = A_SECRET, *, piggyback: bool = False) -> World:
    world = World(piggyback=piggyback)
    world.add(CoreServer("a.example", [partner("b.example", *TCP_ONLY)], None, secret=a_secret,
                         extra_domains=("a2.example", "a3.example")))
    b_policy = PartnerPolicy("a.example", PartnerType.FEDERATED, Support.NOT_SUPPORTED,
                             Support.NOT_SUPPORTED, True, ("a2.example",))
    world.add(CoreServer("b.example", [b_policy], None, secret=B_SECRET))
    return world


def test_three_roles_end_to_end() -> None:
    world = tcp_world()
    out = world.outbound("a.example", "b.example")
    world.run()
    inbound = accepting_stream(world, out)
    assert str(out.method) == str(inbound.method) == "TCP Dialback"
    # b.example (receiving) asked a.example (authoritative) over its own outbound stream.
    [verify_out] = [link.client for link in world.all_links if link.client is not out]
    assert (verify_out.local_domain, verify_out.remote_domain) == ("b.example", "a.example")
    assert world.of("b.example", DialbackVerifyAnswered)[0].valid is True


def test_forged_key_from_an_impostor() -> None:
    """Someone claiming a.example without a.example's secret is declared invalid."""
    world = tcp_world()
    impostor = CoreServer("a.example", [partner("b.example", *TCP_ONLY)], None, secret="guess")
    client = OutboundStream(impostor.ctx, local_domain="a.example", remote_domain="b.example",
                            partner=partner("b.example", *TCP_ONLY), now=world.now)
    link = world.connect(impostor, client, world.servers["b.example"])
    world.run()
    assert not link.server.pairs and link.server.closed
    assert world.plaintext_to("a.example", client).startswith(
        b"<?xml version='1.0'?><stream:stream")
    assert b'<db:result from="b.example" to="a.example" type="invalid"/></stream:stream>' in (
        world.plaintext_to("a.example", client))
    [failed] = [e for _o, s, e in world.events if s is client and isinstance(e, PairFailed)]
    assert failed.condition == "internal-server-error"
    # The genuine a.example's authoritative answer was "invalid":
    assert [e.valid for e in world.of("b.example", DialbackVerifyAnswered)
            if e.stream_id == link.server.stream_id] == [False]


def test_replayed_key_from_another_stream() -> None:
    """A key sniffed from one stream is worthless on another (the stream id is in it)."""
    world = tcp_world()
    world.outbound("a.example", "b.example")
    world.run()
    [sniffed] = world.of("b.example", DialbackVerifyNeeded)
    # The attacker opens its own stream to b.example and replays the key.
    b_server = world.servers["b.example"]
    attacked = InboundStream(b_server.ctx, now=world.now)
    peer = RawPeer(attacked, now=world.now)
    peer.send(PEER_HEADER)
    assert attacked.stream_id != sniffed.stream_id
    assert peer.send(db_result("a.example", "b.example", sniffed.key)) == b""
    [needed] = peer.of(DialbackVerifyNeeded)
    assert needed.key == sniffed.key
    world.request_verification(b_server, attacked, needed)
    world.run()
    assert peer.pump() == (b'<db:result from="b.example" to="a.example" type="invalid"/>'
                           b"</stream:stream>")
    assert not attacked.pairs


def test_secret_mismatch_between_nodes() -> None:
    """Two nodes of a.example with different secrets: the key is declared invalid."""
    world = tcp_world()
    out = world.outbound("a.example", "b.example")
    # The authoritative answer comes from another node of a.example (another secret).
    world.servers["a.example"] = CoreServer("a.example", [partner("b.example", *TCP_ONLY)],
                                            None, secret="node-2")
    world.run()
    [failed] = world.of("a.example", PairFailed)
    assert failed.reason == (
        "b.example declared our dialback key invalid (dialback secret mismatch?)")
    assert out.closed
    # b.example closed right after "invalid": the db:verify a.example had sent it on the
    # same stream in the meantime gets no answer after </stream:stream> (RFC 6120 §4.4).
    to_a = world.plaintext_to("a.example", out)
    assert to_a.endswith(b'<db:result from="b.example" to="a.example" type="invalid"/>'
                         b"</stream:stream>")
    [closed] = [e for _o, s, e in world.events if s is out and isinstance(e, StreamClosed)]
    assert closed.error == ""


def test_piggybacking_a_second_local_domain() -> None:
    """XEP-0220 §2.4: a2.example authenticates on the stream a.example opened."""
    world = tcp_world(piggyback=True)
    out = world.outbound("a.example", "b.example")
    world.run()
    again = world.outbound("a2.example", "b.example")
    assert again is out
    world.run()
    inbound = accepting_stream(world, out)
    assert set(out.pairs) == {("b.example", "a.example"), ("b.example", "a2.example")}
    assert set(inbound.pairs) == {("a.example", "b.example"), ("a2.example", "b.example")}
    out.send_stanza(message("x@a2.example/r", "y@b.example", "from the second domain"))
    out.send_stanza(message("x@a.example/r", "y@b.example", "from the first"))
    world.run()
    got = [(e.remote_domain, e.stanza.findtext("{jabber:server}body"))
           for e in world.of("b.example", StanzaReceived)]
    assert got == [("a2.example", "from the second domain"), ("a.example", "from the first")]


def test_piggybacked_domain_rejected_keeps_the_first_pair() -> None:
    world = tcp_world(piggyback=True)
    out = world.outbound("a.example", "b.example")
    world.run()
    assert out.add_local_domain("a3.example")  # served by A, unknown to B's entry
    world.run()
    [failed] = [e for e in world.of("a.example", PairFailed) if e.local_domain == "a3.example"]
    assert failed.condition == "remote-server-timeout"
    assert failed.reason == ("b.example answered dialback with error <forbidden/>: "
                             "a3.example is not a federation partner of this gateway")
    assert not out.closed and out.can_send("a.example", "b.example")


def test_piggybacking_refused_where_it_cannot_work() -> None:
    world = tcp_world(piggyback=True)
    out = world.outbound("a.example", "b.example")
    assert not out.add_local_domain("a2.example")  # not open yet
    world.run()
    assert not out.add_local_domain("z.example")  # not a domain we serve
    assert out.add_local_domain("a.example")  # already authenticated: nothing to do
