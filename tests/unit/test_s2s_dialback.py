"""Server dialback (XEP-0220) in its three roles, its errors, and the attacks on it.

Receiving and authoritative roles are driven with literal bytes (``RawPeer``); the
originating role and the end-to-end attacks (forged keys, replayed keys, a secret that does
not match) run between cores in the in-memory ``World``. Keys follow XEP-0185.
"""

from __future__ import annotations

import dataclasses

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


def receiving(*partners: PartnerPolicy, extra: tuple[str, ...] = ()) -> RawPeer:
    server = fixed_ids(CoreServer("b.example", list(partners), None, secret=B_SECRET,
                                  extra_domains=extra))
    peer = RawPeer(InboundStream(server.ctx, now=0.0))
    peer.send(PEER_HEADER)
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


@pytest.mark.parametrize(
    "policy, text",
    [
        (("optional", "optional", False),
         "partner policy for a.example permits only SASL over TLS (dialback not allowed on an "
         "unencrypted stream)"),
    ],
)
def test_dialback_not_permitted_by_policy(policy: tuple[str, str, bool], text: str) -> None:
    # The stream's partner (c.example) allows dialback; a.example's entry does not.
    peer = receiving(partner("a.example", *policy), partner("c.example", *TCP_ONLY))
    peer.stream.partner = None  # the header named a.example: keep the checks per domain
    answer = peer.send(db_result("a.example", "b.example", "k"))
    assert answer == db_error("result", "b.example", "a.example", "not-authorized", text)


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
    [event] = peer.of(DialbackVerifyAnswered)
    assert (event.valid, event.stream_id) == (None, "in-7")
    assert event.error == "stream closed before sending: reset"


# ---------------------------------------------------------------------------- end to end


def tcp_world(a_secret: str = A_SECRET, *, piggyback: bool = False) -> World:
    world = World(piggyback=piggyback)
    world.add(CoreServer("a.example", [partner("b.example", *TCP_ONLY)], None, secret=a_secret,
                         extra_domains=("a2.example",)))
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
    world.servers["impostor"] = impostor
    client = OutboundStream(impostor.ctx, local_domain="a.example", remote_domain="b.example",
                            partner=partner("b.example", *TCP_ONLY), now=world.now)
    server = InboundStream(world.servers["b.example"].ctx, now=world.now)
    from tests.unit.s2s_world import Link

    link = Link(client, server, impostor, world.servers["b.example"])
    world.links.append(link)
    world.all_links.append(link)
    client.initiate(world.now)
    world.run()
    assert not server.pairs and server.closed
    assert b'<db:result from="b.example" to="a.example" type="invalid"/>' in b"".join(
        data for label, data in world.wire if label == "b.example->a.example")
    [failed] = [e for _o, s, e in world.events if s is client and isinstance(e, PairFailed)]
    assert failed.condition == "internal-server-error"


def test_replayed_key_from_another_stream() -> None:
    """A key sniffed from one stream is worthless on another (the stream id is in it)."""
    world = tcp_world()
    out = world.outbound("a.example", "b.example")
    world.run()
    sniffed = [e for e in world.of("b.example", DialbackVerifyNeeded)][0]
    # The attacker opens its own stream to b.example and replays the key.
    server = fixed_ids(CoreServer("b.example", [partner("a.example", *TCP_ONLY)], None,
                                  secret=B_SECRET))
    peer = RawPeer(InboundStream(dataclasses.replace(
        server.ctx, new_stream_id=lambda: "attacker-stream").__class__(
        **{f.name: getattr(server.ctx, f.name) for f in dataclasses.fields(server.ctx)}),
        now=0.0))
    peer.send(PEER_HEADER)
    assert peer.stream.stream_id != sniffed.stream_id
    peer.send(db_result("a.example", "b.example", sniffed.key))
    [needed] = peer.of(DialbackVerifyNeeded)
    # The authoritative server (a.example) judges it for the new stream id: invalid.
    keys = world.servers["a.example"].ctx.keys
    assert keys.verify(sniffed.key, "b.example", "a.example", sniffed.stream_id)
    assert not keys.verify(needed.key, "b.example", "a.example", needed.stream_id)
    assert out.method is not None


def test_secret_mismatch_between_nodes() -> None:
    """Two nodes of a.example with different secrets: the key is declared invalid."""
    world = tcp_world()
    world.servers["a.example"].ctx = dataclasses.replace(
        world.servers["a.example"].ctx, keys=DialbackKeyGenerator("node-1"))
    out = world.outbound("a.example", "b.example")
    # The authoritative answer comes from "node 2" (another secret).
    node2 = CoreServer("a.example", [partner("b.example", *TCP_ONLY)], None, secret="node-2")
    world.servers["a.example"] = node2
    world.run()
    [failed] = world.of("a.example", PairFailed)
    assert failed.reason == "b.example declared our dialback key invalid (dialback secret mismatch?)"
    assert out.closed


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
    # b.example's entry for A does not list a3.example.
    world.servers["a.example"].ctx = dataclasses.replace(
        world.servers["a.example"].ctx,
        local_domains=world.servers["a.example"].ctx.local_domains | {"a3.example"})
    out.ctx = world.servers["a.example"].ctx
    assert out.add_local_domain("a3.example")
    world.run()
    [failed] = [e for e in world.of("a.example", PairFailed) if e.local_domain == "a3.example"]
    assert failed.reason == ("b.example answered dialback with error <forbidden/>: "
                             "a3.example is not a federation partner of this gateway")
    assert not out.closed and out.can_send("a.example", "b.example")
