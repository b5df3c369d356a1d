"""The inbound (receiving/authoritative) core driven by literal bytes, as a peer sends them.

Byte-level expectations for the features offered per policy and for every refusal: no
sockets, no clock — ``now`` is a number.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.auth.dialback_key import DialbackKeyGenerator
from gateway.config.model import Limits
from gateway.xmpp.events import (
    DialbackVerifyNeeded,
    PairAuthenticated,
    StanzaReceived,
    StreamClosed,
)
from gateway.xmpp.inbound import InboundStream
from testbed.pki import Pki
from tests.unit.s2s_world import CoreServer, partner

HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
          b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
          b"from='a.example' to='b.example' version='1.0'>")
KEYS = DialbackKeyGenerator("secret-of-a")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(Path(tmp_path_factory.mktemp("pki")))


def inbound(pki: Pki | None, *partners, limits: Limits | None = None) -> InboundStream:
    tls = pki.tls_settings("b.example") if pki else None
    server = CoreServer("b.example", list(partners), tls, limits=limits)
    return InboundStream(server.ctx, now=0.0)


def feed(stream: InboundStream, data: bytes, now: float = 0.0) -> bytes:
    stream.receive_data(data, now)
    return stream.data_to_send()


def events(stream: InboundStream, kind: type) -> list:
    return [e for e in stream.events() if isinstance(e, kind)]


def test_features_tcp_dialback_only(pki: Pki) -> None:
    stream = inbound(None, partner("a.example", "not-supported", "not-supported"))
    out = feed(stream, HEADER)
    assert b"from='b.example' to='a.example'" in out
    assert out.endswith(b"<stream:features><dialback xmlns=\"urn:xmpp:features:dialback\">"
                        b"<errors/></dialback></stream:features>")


def test_features_starttls_required_when_no_plaintext_method(pki: Pki) -> None:
    stream = inbound(pki, partner("a.example", "required", "optional"))
    out = feed(stream, HEADER)
    assert out.endswith(b"<stream:features><starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\">"
                        b"<required/></starttls></stream:features>")


def test_features_optional_tls_offers_starttls_and_dialback(pki: Pki) -> None:
    stream = inbound(pki, partner("a.example"))
    out = feed(stream, HEADER)
    assert b"<starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\"/>" in out
    assert b"urn:xmpp:features:dialback" in out


def test_unlisted_domain_is_refused_with_policy_violation() -> None:
    stream = inbound(None, partner("c.example"))
    out = feed(stream, HEADER)
    assert out.endswith(
        b"<stream:error><policy-violation xmlns=\"urn:ietf:params:xml:ns:xmpp-streams\"/>"
        b"<text xmlns=\"urn:ietf:params:xml:ns:xmpp-streams\">a.example is not a federation "
        b"partner of this gateway</text></stream:error></stream:stream>")
    [closed] = events(stream, StreamClosed)
    assert closed.error == "policy-violation" and not closed.by_peer


def test_host_unknown() -> None:
    stream = inbound(None, partner("a.example"))
    out = feed(stream, HEADER.replace(b"to='b.example'", b"to='z.example'"))
    assert b"<host-unknown xmlns=\"urn:ietf:params:xml:ns:xmpp-streams\"/>" in out


def test_wrong_content_namespace() -> None:
    stream = inbound(None, partner("a.example"))
    out = feed(stream, HEADER.replace(b"xmlns='jabber:server'", b"xmlns='jabber:client'"))
    assert b"<invalid-namespace xmlns=" in out


def test_stanza_before_authentication() -> None:
    stream = inbound(None, partner("a.example", "not-supported", "not-supported"))
    feed(stream, HEADER)
    out = feed(stream, b"<message from='x@a.example' to='y@b.example'/>")
    assert b"<not-authorized xmlns=\"urn:ietf:params:xml:ns:xmpp-streams\"/>" in out


def test_plaintext_dialback_when_tls_is_required(pki: Pki) -> None:
    stream = inbound(pki, partner("a.example", "required", "not-supported"))
    feed(stream, HEADER)
    out = feed(stream, b"<db:result from='a.example' to='b.example'>abc</db:result>")
    assert b"<policy-violation xmlns=" in out
    assert b"TLS is required for a.example before anything else" in out


def test_starttls_refused_when_policy_says_not_supported(pki: Pki) -> None:
    stream = inbound(pki, partner("a.example", "not-supported", "not-supported"))
    out = feed(stream, HEADER)
    assert b"starttls" not in out
    out = feed(stream, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert out.startswith(b"<failure xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\"/>")
    assert out.endswith(b"</stream:stream>")


def test_starttls_command_injection_is_refused(pki: Pki) -> None:
    stream = inbound(pki, partner("a.example"))
    feed(stream, HEADER)
    out = feed(stream, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
                       b"<db:result from='a.example' to='b.example'>k</db:result>")
    assert out.startswith(b"<proceed xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\"/>")
    [closed] = events(stream, StreamClosed)
    assert "data after STARTTLS" in closed.reason


def test_sasl_without_tls_is_refused(pki: Pki) -> None:
    stream = inbound(pki, partner("a.example"))
    feed(stream, HEADER)
    out = feed(stream, b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>"
                       b"=</auth>")
    assert out == (b"<failure xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\"><encryption-required/>"
                   b"<text>SASL EXTERNAL needs TLS</text></failure>")


def test_dialback_request_then_verified_then_stanza() -> None:
    stream = inbound(None, partner("a.example", "not-supported", "not-supported"))
    feed(stream, HEADER)
    stream_id = stream.stream_id
    assert stream_id
    key = KEYS.generate("b.example", "a.example", stream_id)
    assert feed(stream, f"<db:result from='a.example' to='b.example'>{key}</db:result>"
                .encode()) == b""
    [needed] = events(stream, DialbackVerifyNeeded)
    assert (needed.remote_domain, needed.local_domain, needed.key) == ("a.example", "b.example",
                                                                       key)
    stream.dialback_verified("a.example", "b.example", True)
    assert stream.data_to_send() == (b"<db:result from=\"b.example\" to=\"a.example\" "
                                     b"type=\"valid\"/>")
    [auth] = events(stream, PairAuthenticated)
    assert str(auth.method) == "TCP Dialback"
    feed(stream, b"<message from='x@a.example/r' to='y@b.example' type='chat'><body>hi</body>"
                 b"</message>")
    [received] = events(stream, StanzaReceived)
    assert received.stanza.findtext("{jabber:server}body") == "hi"
    out = feed(stream, b"<message from='x@evil.example' to='y@b.example'/>")
    assert b"<invalid-from xmlns=" in out


def test_dialback_key_declared_invalid_closes_the_stream() -> None:
    stream = inbound(None, partner("a.example", "not-supported", "not-supported"))
    feed(stream, HEADER)
    feed(stream, b"<db:result from='a.example' to='b.example'>forged</db:result>")
    stream.dialback_verified("a.example", "b.example", False)
    out = stream.data_to_send()
    assert out.startswith(b"<db:result from=\"b.example\" to=\"a.example\" type=\"invalid\"/>")
    assert out.endswith(b"</stream:stream>")


def test_tls_mandatory_policy_without_a_certificate_is_refused_at_the_header() -> None:
    # dialback=false leaves only SASL over TLS: nothing may happen in the clear, and with
    # no certificate configured TLS cannot happen either.
    stream = inbound(None, partner("a.example", "optional", "optional", dialback=False))
    out = feed(stream, HEADER)
    assert b"<policy-violation xmlns=" in out
    assert b"TLS is required for a.example but no certificate is configured" in out
    assert feed(stream, b"<db:result from='a.example' to='b.example'>k</db:result>") == b""


def test_dialback_for_unlisted_domain_is_forbidden() -> None:
    stream = inbound(None, partner("a.example", "not-supported", "not-supported"))
    feed(stream, HEADER)
    out = feed(stream, b"<db:result from='c.example' to='b.example'>k</db:result>")
    assert b"type=\"error\"" in out and b"<forbidden xmlns=" in out


def test_dialback_for_domain_not_served() -> None:
    stream = inbound(None, partner("a.example", "not-supported", "not-supported"))
    feed(stream, HEADER)
    out = feed(stream, b"<db:result from='a.example' to='z.example'>k</db:result>")
    assert b"<item-not-found xmlns=" in out


def test_authoritative_role_answers_db_verify() -> None:
    # We are b.example, asked whether a key we (as originating server) made is genuine.
    server = CoreServer("b.example", [partner("a.example", "not-supported", "not-supported")],
                        None, secret="b-secret")
    stream = InboundStream(server.ctx, now=0.0)
    feed(stream, HEADER)
    good = DialbackKeyGenerator("b-secret").generate("a.example", "b.example", "sid1")
    out = feed(stream, f"<db:verify from='a.example' to='b.example' id='sid1'>{good}"
                       f"</db:verify>".encode())
    assert out == (b"<db:verify from=\"b.example\" to=\"a.example\" id=\"sid1\" "
                   b"type=\"valid\"/>")
    out = feed(stream, f"<db:verify from='a.example' to='b.example' id='sid2'>{good}"
                       f"</db:verify>".encode())
    assert b"type=\"invalid\"" in out  # the same key replayed for another stream id


def test_negotiation_timeout() -> None:
    stream = inbound(None, partner("a.example"), limits=Limits(negotiation_timeout=5))
    feed(stream, HEADER)
    assert stream.get_timer() == 5
    stream.handle_timer(5.0)
    assert b"<connection-timeout xmlns=" in stream.data_to_send()


def test_oversized_stanza(pki: Pki) -> None:
    stream = inbound(None, partner("a.example"), limits=Limits(max_stanza_bytes=1000))
    feed(stream, HEADER)
    out = feed(stream, b"<message><body>" + b"x" * 5000 + b"</body></message>")
    assert b"<policy-violation xmlns=" in out and b"stanza larger than 1000 bytes" in out


@pytest.mark.parametrize("payload, condition", [
    (b"<!DOCTYPE x [<!ENTITY a 'b'>]>", b"not-well-formed"),  # a DTD inside the root
    (b"<!-- hello -->", b"restricted-xml"),
    (b"<?pi x?>", b"restricted-xml"),
    (b"<a>&lol;</a>", b"not-well-formed"),
    (b"<a>\xff\xfe</a>", b"not-well-formed"),
    (b"<x:a/>", b"invalid-namespace"),
    (b"<a>" * 100, b"policy-violation"),
])
def test_hostile_xml_after_the_header(payload: bytes, condition: bytes) -> None:
    stream = inbound(None, partner("a.example"))
    feed(stream, HEADER)
    out = feed(stream, payload)
    assert b"<" + condition + b" xmlns=" in out
    assert out.endswith(b"</stream:stream>")
    assert [e for e in stream.events() if isinstance(e, StreamClosed)]


def test_billion_laughs_before_the_header_is_restricted_xml() -> None:
    stream = inbound(None, partner("a.example"))
    laughs = (b"<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>"
              b"<!ENTITY lol2 '&lol;&lol;&lol;&lol;'>]>")
    out = feed(stream, laughs + HEADER[len(b"<?xml version='1.0'?>"):])
    assert b"<restricted-xml xmlns=" in out
    assert out.startswith(b"<?xml version='1.0'?><stream:stream")  # header sent first
