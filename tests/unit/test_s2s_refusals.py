"""Every refusal of the sans-I/O core, with the exact bytes it answers (no sockets).

The test plays the remote server with literal bytes (``RawPeer``); over TLS the bytes are
the cleartext inside the TLS session, since the peer end runs a real TLS engine. Stream
ids are fixed so whole answers can be compared byte for byte. Inbound = we are the
receiving server (b.example); outbound = we are the initiating server (a.example).
"""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import pytest

from gateway.auth.tls_provider import OpenSslTlsProvider
from gateway.config.model import Limits, PartnerPolicy
from gateway.sip.development import message
from gateway.xmpp.events import PairAuthenticated, PairFailed, StreamClosed, TlsEstablished
from gateway.xmpp.inbound import InboundStream
from gateway.xmpp.outbound import NotAuthenticated, OutboundStream
from testbed.pki import Pki
from tests.unit.s2s_world import CoreServer, RawPeer, partner

NS_STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"
PEER_HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    b"from='a.example' to='b.example' version='1.0'>"
)
OUR_HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    b"from='b.example' to='a.example' id='sid-1' version='1.0'>"
)
ERROR_HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    b"from='b.example' version='1.0'>"
)
FEATURES_DIALBACK = (
    b'<stream:features><dialback xmlns="urn:xmpp:features:dialback"><errors/></dialback>'
    b"</stream:features>"
)
FEATURES_STARTTLS_DIALBACK = (
    b'<stream:features><starttls xmlns="urn:ietf:params:xml:ns:xmpp-tls"/>'
    b'<dialback xmlns="urn:xmpp:features:dialback"><errors/></dialback></stream:features>'
)
FEATURES_STARTTLS_REQUIRED = (
    b'<stream:features><starttls xmlns="urn:ietf:params:xml:ns:xmpp-tls"><required/>'
    b"</starttls></stream:features>"
)
FEATURES_EXTERNAL_DIALBACK = (
    b'<stream:features><mechanisms xmlns="urn:ietf:params:xml:ns:xmpp-sasl">'
    b"<mechanism>EXTERNAL</mechanism></mechanisms>"
    b'<dialback xmlns="urn:xmpp:features:dialback"><errors/></dialback></stream:features>'
)
STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
PROCEED = b'<proceed xmlns="urn:ietf:params:xml:ns:xmpp-tls"/>'
AUTH_EXTERNAL = b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>"
SASL_NS = b'xmlns="urn:ietf:params:xml:ns:xmpp-sasl"'


def stream_error(condition: str, text: str) -> bytes:
    """What the core sends for a stream error: the error, then its closing tag."""
    return (
        f'<stream:error><{condition} xmlns="{NS_STREAMS_ERR}"/>'
        f'<text xmlns="{NS_STREAMS_ERR}">{text}</text></stream:error></stream:stream>'
    ).encode()


def db_error(tag: str, from_: str, to: str, condition: str, text: str, id_: str = "") -> bytes:
    id_attr = f' id="{id_}"' if id_ else ""
    return (
        f'<db:{tag} from="{from_}" to="{to}" type="error"{id_attr}><error type="cancel">'
        f'<{condition} xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/>'
        f'<text xmlns="urn:ietf:params:xml:ns:xmpp-stanzas">{text}</text></error></db:{tag}>'
    ).encode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(Path(tmp_path_factory.mktemp("pki")))


def fixed_ids(server: CoreServer) -> CoreServer:
    server.ctx = dataclasses.replace(server.ctx, new_stream_id=lambda: "sid-1")
    return server


def inbound(
    pki: Pki | None,
    *partners: PartnerPolicy,
    limits: Limits | None = None,
    trusts_peers: bool = True,
) -> RawPeer:
    tls = pki.tls_settings("b.example", trusts_peers=trusts_peers) if pki else None
    server = fixed_ids(CoreServer("b.example", list(partners), tls, limits=limits))
    return RawPeer(InboundStream(server.ctx, now=0.0))


def closed(peer: RawPeer) -> StreamClosed:
    [event] = peer.of(StreamClosed)
    assert peer.stream.closed or peer.stream.phase.value == "closing"
    return event


def tls_up(peer: RawPeer, pki: Pki, *, cert: str = "a.example", **cert_args: object) -> bytes:
    """Header, STARTTLS, handshake as a.example (with ``cert``), header again: the features."""
    assert peer.send(PEER_HEADER).startswith(OUR_HEADER)
    assert peer.send(STARTTLS) == PROCEED
    provider = OpenSslTlsProvider(pki.tls_settings(cert, **cert_args))  # type: ignore[arg-type]
    assert peer.start_tls_client(provider.client_engine("b.example")) == b""
    assert peer.stream.tls_active and peer.tls is not None and peer.tls.handshake_done
    answer = peer.send(PEER_HEADER)
    assert answer.startswith(OUR_HEADER)
    features = answer[len(OUR_HEADER) :]
    # XEP-0288 bidi is offered on every TLS stream before authentication (its own tests:
    # test_s2s_bidi.py); the refusals here are about the rest.
    assert BIDI_FEATURE in features
    return features.replace(BIDI_FEATURE, b"")


BIDI_FEATURE = b'<bidi xmlns="urn:xmpp:features:bidi"/>'


# ---------------------------------------------------------------------------- inbound: header


def test_unlisted_domain_policy_violation() -> None:
    peer = inbound(None, partner("c.example"))
    # The error goes out before a stream id exists (RFC 6120 §4.9.1.1: header, error, close).
    assert peer.send(PEER_HEADER) == ERROR_HEADER + stream_error(
        "policy-violation", "a.example is not a federation partner of this gateway"
    )
    event = closed(peer)
    assert (event.error, event.by_peer) == ("policy-violation", False)
    assert peer.stream.claimed_domain == "a.example"


@pytest.mark.parametrize(
    "header, text",
    [
        (PEER_HEADER.replace(b"to='b.example'", b"to='z.example'"),
         "this gateway does not serve 'z.example'"),
        (PEER_HEADER.replace(b" to='b.example'", b""), "this gateway does not serve None"),
        (PEER_HEADER.replace(b"to='b.example'", b"to='b..example'"),
         "this gateway does not serve 'b..example'"),
    ],
    ids=["other-domain", "no-to", "malformed-to"],
)
def test_host_unknown(header: bytes, text: str) -> None:
    peer = inbound(None, partner("a.example"))
    # Before we know which domain was meant, the error header names our first domain.
    assert peer.send(header) == ERROR_HEADER + stream_error("host-unknown", text)
    assert closed(peer).error == "host-unknown"


def test_malformed_from_is_invalid_from() -> None:
    peer = inbound(None, partner("a.example"))
    answer = peer.send(PEER_HEADER.replace(b"from='a.example'", b"from='a..example'"))
    assert answer.endswith(stream_error("invalid-from", "malformed 'from' domain 'a..example'"))


def test_tls_required_without_a_certificate_here() -> None:
    peer = inbound(None, partner("a.example", "required", "not-supported"))
    answer = peer.send(PEER_HEADER)
    assert answer.endswith(stream_error(
        "policy-violation", "TLS is required for a.example but no certificate is configured"))


def test_wrong_content_namespace() -> None:
    peer = inbound(None, partner("a.example"))
    answer = peer.send(PEER_HEADER.replace(b"xmlns='jabber:server'", b"xmlns='jabber:client'"))
    assert answer.endswith(stream_error(
        "invalid-namespace", "server-to-server streams use 'jabber:server', not 'jabber:client'"))


def test_legacy_stream_without_version_gets_no_features() -> None:
    peer = inbound(None, partner("a.example", "not-supported", "not-supported"))
    answer = peer.send(PEER_HEADER.replace(b" version='1.0'>", b">"))
    # RFC 3920 peer: a header without 'version' (RFC 6120 §4.7.5), no <stream:features/>.
    assert answer == OUR_HEADER.replace(b" version='1.0'>", b">")


def test_legacy_stream_refused_when_tls_is_mandatory(pki: Pki) -> None:
    peer = inbound(pki, partner("a.example", "required", "optional"))
    answer = peer.send(PEER_HEADER.replace(b" version='1.0'>", b">"))
    assert answer == OUR_HEADER.replace(b" version='1.0'>", b">") + stream_error(
        "unsupported-version", "XMPP 1.0 streams are required: TLS is mandatory for a.example")


# ---------------------------------------------------------------------------- inbound: features


@pytest.mark.parametrize(
    "policy, with_cert, features",
    [
        (("not-supported", "not-supported", True), True, FEATURES_DIALBACK),
        (("optional", "optional", True), True, FEATURES_STARTTLS_DIALBACK),
        (("optional", "optional", True), False, FEATURES_DIALBACK),  # no certificate here
        (("required", "optional", True), True, FEATURES_STARTTLS_REQUIRED),
        (("optional", "required", False), True, FEATURES_STARTTLS_REQUIRED),  # SASL only
        (("optional", "not-supported", True), True, FEATURES_STARTTLS_DIALBACK),
    ],
)
def test_features_follow_policy(
    pki: Pki, policy: tuple[str, str, bool], with_cert: bool, features: bytes
) -> None:
    peer = inbound(pki if with_cert else None, partner("a.example", *policy))
    assert peer.send(PEER_HEADER) == OUR_HEADER + features


@pytest.mark.parametrize(
    "policy, trusted, features",
    [
        (("optional", "optional", True), True, FEATURES_EXTERNAL_DIALBACK),
        (("optional", "optional", True), False, FEATURES_DIALBACK),  # cert does not verify
        (("required", "required", True), True,
         b'<stream:features><mechanisms xmlns="urn:ietf:params:xml:ns:xmpp-sasl">'
         b"<mechanism>EXTERNAL</mechanism></mechanisms></stream:features>"),
        (("required", "not-supported", True), True, FEATURES_DIALBACK),
        (("optional", "optional", False), True,
         b'<stream:features><mechanisms xmlns="urn:ietf:params:xml:ns:xmpp-sasl">'
         b"<mechanism>EXTERNAL</mechanism></mechanisms></stream:features>"),
    ],
)
def test_features_after_tls(
    pki: Pki, policy: tuple[str, str, bool], trusted: bool, features: bytes
) -> None:
    peer = inbound(pki, partner("a.example", *policy), trusts_peers=trusted)
    assert tls_up(peer, pki) == features
    [tls] = peer.of(TlsEstablished)
    assert tls.version in ("TLSv1.2", "TLSv1.3") and tls.peer_certificate_present


# ---------------------------------------------------------------------------- inbound: elements


def test_stanza_before_authentication() -> None:
    peer = inbound(None, partner("a.example", "not-supported", "not-supported"))
    peer.send(PEER_HEADER)
    assert peer.send(b"<message from='x@a.example' to='y@b.example'><body>hi</body></message>") == (
        stream_error("not-authorized", "stanza before the stream was authenticated"))
    assert peer.stream.stanzas_in == 0


def test_plaintext_dialback_when_tls_is_required(pki: Pki) -> None:
    peer = inbound(pki, partner("a.example", "required", "not-supported"))
    peer.send(PEER_HEADER)
    answer = peer.send(b"<db:result from='a.example' to='b.example'>abc</db:result>")
    assert answer == stream_error(
        "policy-violation", "TLS is required for a.example before anything else")


def test_unknown_element() -> None:
    peer = inbound(None, partner("a.example"))
    peer.send(PEER_HEADER)
    assert peer.send(b"<foo xmlns='urn:example'/>") == stream_error(
        "unsupported-stanza-type", "unexpected element {urn:example}foo")


# STARTTLS --------------------------------------------------------------------------------


def test_starttls_refused_when_policy_says_not_supported(pki: Pki) -> None:
    peer = inbound(pki, partner("a.example", "not-supported", "not-supported"))
    assert peer.send(PEER_HEADER) == OUR_HEADER + FEATURES_DIALBACK
    assert peer.send(STARTTLS) == (
        b'<failure xmlns="urn:ietf:params:xml:ns:xmpp-tls"/></stream:stream>')
    event = closed(peer)
    assert (event.error, event.reason) == ("", "STARTTLS refused: TLS not offered to this peer")


def test_starttls_refused_without_a_certificate() -> None:
    peer = inbound(None, partner("a.example"))
    peer.send(PEER_HEADER)
    assert peer.send(STARTTLS) == (
        b'<failure xmlns="urn:ietf:params:xml:ns:xmpp-tls"/></stream:stream>')


def test_starttls_twice_is_refused(pki: Pki) -> None:
    peer = inbound(pki, partner("a.example"))
    tls_up(peer, pki)
    assert peer.send(STARTTLS) == (
        b'<failure xmlns="urn:ietf:params:xml:ns:xmpp-tls"/></stream:stream>')
    assert closed(peer).reason == "STARTTLS refused: already encrypted"


def test_starttls_command_injection(pki: Pki) -> None:
    """Data after <starttls/> in the same read must not be taken as TLS-protected."""
    peer = inbound(pki, partner("a.example"))
    peer.send(PEER_HEADER)
    answer = peer.send(STARTTLS + b"<db:result from='a.example' to='b.example'>k</db:result>")
    # <proceed/> went out, TLS started; the injected element kills the connection without
    # any XML (nothing may be written in the clear any more, and TLS is not up).
    assert answer == PROCEED
    event = closed(peer)
    assert event.error == "" and "<policy-violation/> during TLS handshake" in event.reason
    assert "data after STARTTLS before TLS" in event.reason
    assert peer.stream.closed and not peer.stream.tls_active


def test_tls_garbage_after_proceed(pki: Pki) -> None:
    peer = inbound(pki, partner("a.example"))
    peer.send(PEER_HEADER)
    assert peer.send(STARTTLS) == PROCEED
    assert peer.send(b"<db:result from='a.example' to='b.example'>k</db:result>") == b""
    event = closed(peer)
    assert event.reason.startswith("TLS handshake failed") and peer.stream.closed


# SASL EXTERNAL -------------------------------------------------------------------------------


def sasl_failure(condition: str, text: str = "") -> bytes:
    body = f"<{condition}/>" + (f"<text>{text}</text>" if text else "")
    return f'<failure xmlns="urn:ietf:params:xml:ns:xmpp-sasl">{body}</failure>'.encode()


def test_sasl_without_tls(pki: Pki) -> None:
    peer = inbound(pki, partner("a.example"))
    peer.send(PEER_HEADER)
    assert peer.send(AUTH_EXTERNAL + b"=</auth>") == sasl_failure(
        "encryption-required", "SASL EXTERNAL needs TLS")


def test_sasl_wrong_mechanism(pki: Pki) -> None:
    peer = inbound(pki, partner("a.example"))
    tls_up(peer, pki)
    assert peer.send(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                     b"AGEAYg==</auth>") == sasl_failure(
        "invalid-mechanism", "mechanism 'PLAIN' is not offered")


@pytest.mark.parametrize(
    "cert_args, reason_start",
    [
        ({"trusts": False}, "issuer not trusted"),
        ({"cert": "a.example", "cert_domain": "c.example"}, "name mismatch"),
        ({"cert": "a.example", "expired": True}, "certificate expired"),
    ],
    ids=["untrusted", "wrong-name", "expired"],
)
def test_sasl_refused_when_the_certificate_does_not_verify(
    pki: Pki, cert_args: dict, reason_start: str
) -> None:
    trusts = cert_args.pop("trusts", True)
    peer = inbound(pki, partner("a.example"), trusts_peers=trusts)
    features = tls_up(peer, pki, **cert_args)
    assert features == FEATURES_DIALBACK  # EXTERNAL is not even offered
    answer = peer.send(AUTH_EXTERNAL + b"YS5leGFtcGxl</auth>")
    assert answer.startswith(b'<failure xmlns="urn:ietf:params:xml:ns:xmpp-sasl">'
                             b"<not-authorized/><text>" + reason_start.encode())
    assert not peer.of(PairAuthenticated)


def test_sasl_not_permitted_by_policy(pki: Pki) -> None:
    peer = inbound(pki, partner("a.example", "optional", "not-supported"))
    assert tls_up(peer, pki) == FEATURES_DIALBACK
    assert peer.send(AUTH_EXTERNAL + b"=</auth>") == sasl_failure(
        "not-authorized", "SASL is not permitted for a.example by partner policy")


def test_sasl_authzid_for_another_domain(pki: Pki) -> None:
    peer = inbound(pki, partner("a.example"))
    tls_up(peer, pki)
    authzid = base64.b64encode(b"c.example")
    assert peer.send(AUTH_EXTERNAL + authzid + b"</auth>") == sasl_failure(
        "invalid-authzid", "authorization identity 'c.example' is not a.example")
    assert not peer.of(PairAuthenticated)


def test_sasl_bad_base64(pki: Pki) -> None:
    peer = inbound(pki, partner("a.example"))
    tls_up(peer, pki)
    assert peer.send(AUTH_EXTERNAL + b"!!notbase64</auth>") == sasl_failure(
        "incorrect-encoding")


def test_sasl_with_authzid_succeeds_and_restarts(pki: Pki) -> None:
    peer = inbound(pki, partner("a.example"))
    tls_up(peer, pki)
    assert peer.send(AUTH_EXTERNAL + base64.b64encode(b"a.example") + b"</auth>") == (
        b'<success xmlns="urn:ietf:params:xml:ns:xmpp-sasl"/>')
    [auth] = peer.of(PairAuthenticated)
    assert (auth.remote_domain, auth.local_domain, str(auth.method)) == (
        "a.example", "b.example", "SASL over TLS")
    # RFC 6120 §6.4.6: the restarted stream offers no SASL any more; stream management
    # now that the peer is authenticated (XEP-0198 §2).
    assert peer.send(PEER_HEADER) == OUR_HEADER + FEATURES_DIALBACK.replace(
        b"<stream:features>", b'<stream:features><sm xmlns="urn:xmpp:sm:3"/>')


def test_sasl_empty_response_after_challenge(pki: Pki) -> None:
    """XEP-0178 §3: no initial response → empty challenge → '=' response → success."""
    peer = inbound(pki, partner("a.example"))
    tls_up(peer, pki)
    assert peer.send(AUTH_EXTERNAL + b"</auth>") == (
        b'<challenge xmlns="urn:ietf:params:xml:ns:xmpp-sasl"/>')
    assert peer.send(b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>=</response>") == (
        b'<success xmlns="urn:ietf:params:xml:ns:xmpp-sasl"/>')
    assert [str(e.method) for e in peer.of(PairAuthenticated)] == ["SASL over TLS"]


def test_sasl_response_with_another_authzid_after_challenge(pki: Pki) -> None:
    peer = inbound(pki, partner("a.example"))
    tls_up(peer, pki)
    peer.send(AUTH_EXTERNAL + b"</auth>")
    answer = peer.send(b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
                       + base64.b64encode(b"evil.example") + b"</response>")
    assert answer == sasl_failure(
        "invalid-authzid", "authorization identity 'evil.example' is not a.example")


def test_sasl_response_without_challenge(pki: Pki) -> None:
    peer = inbound(pki, partner("a.example"))
    tls_up(peer, pki)
    assert peer.send(b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>=</response>") == (
        stream_error("not-authorized", "SASL response without a pending challenge"))


def test_sasl_abort(pki: Pki) -> None:
    peer = inbound(pki, partner("a.example"))
    tls_up(peer, pki)
    peer.send(AUTH_EXTERNAL + b"</auth>")
    assert peer.send(b"<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>") == sasl_failure(
        "aborted")


def test_sasl_too_many_attempts(pki: Pki) -> None:
    peer = inbound(pki, partner("a.example"))
    tls_up(peer, pki)
    bad = AUTH_EXTERNAL + base64.b64encode(b"c.example") + b"</auth>"
    assert peer.send(bad).startswith(b'<failure xmlns="urn:ietf:params:xml:ns:xmpp-sasl">'
                                     b"<invalid-authzid/>")
    assert peer.send(bad).startswith(b'<failure xmlns="urn:ietf:params:xml:ns:xmpp-sasl">'
                                     b"<invalid-authzid/>")
    assert peer.send(bad) == stream_error("policy-violation", "too many SASL attempts")
    assert closed(peer).error == "policy-violation"


def test_sasl_again_after_success(pki: Pki) -> None:
    peer = inbound(pki, partner("a.example"))
    tls_up(peer, pki)
    peer.send(AUTH_EXTERNAL + b"=</auth>")
    peer.send(PEER_HEADER)
    assert peer.send(AUTH_EXTERNAL + b"=</auth>") == sasl_failure(
        "not-authorized", "already authenticated")


def test_sasl_on_a_header_without_from(pki: Pki) -> None:
    peer = inbound(pki, partner("a.example"))
    anonymous = PEER_HEADER.replace(b" from='a.example'", b"")
    peer.send(anonymous)
    peer.send(STARTTLS)
    provider = OpenSslTlsProvider(pki.tls_settings("a.example"))
    peer.start_tls_client(provider.client_engine("b.example"))
    features = peer.send(anonymous)
    assert b"EXTERNAL" not in features
    assert peer.send(AUTH_EXTERNAL + b"=</auth>") == sasl_failure(
        "not-authorized", "the stream header named no 'from' domain")


# ---------------------------------------------------------------------------- outbound


def outbound(
    pki: Pki | None, policy: PartnerPolicy, *, limits: Limits | None = None
) -> tuple[RawPeer, bytes]:
    tls = pki.tls_settings("a.example") if pki else None
    server = CoreServer("a.example", [policy], tls, limits=limits)
    stream = OutboundStream(server.ctx, local_domain="a.example", remote_domain="b.example",
                            partner=policy, now=0.0)
    peer = RawPeer(stream)
    stream.initiate(0.0)
    return peer, peer.pump()


OUT_HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    b"from='a.example' to='b.example' version='1.0'>"
)
# What b.example (played by the test) answers.
B_HEADER = (
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
    b"xmlns:db='jabber:server:dialback' from='b.example' to='a.example' id='b-1' "
    b"version='1.0'>"
)
B_FEATURES_DIALBACK = (
    b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>"
    b"</stream:features>"
)


def failed(peer: RawPeer) -> PairFailed:
    [event] = peer.of(PairFailed)
    assert (event.remote_domain, event.local_domain) == ("b.example", "a.example")
    return event


def test_outbound_opens_with_our_header() -> None:
    _peer, opened = outbound(None, partner("b.example"))
    assert opened == OUT_HEADER


def test_outbound_tls_required_but_not_offered(pki: Pki) -> None:
    peer, _ = outbound(pki, partner("b.example", "required", "optional"))
    text = ("b.example does not offer STARTTLS; partner policy requires TLS "
            "(tls=required, permits SASL over TLS; TLS Dialback)")
    assert peer.send(B_HEADER + B_FEATURES_DIALBACK) == stream_error("policy-violation", text)
    event = failed(peer)
    assert (event.condition, event.reason) == ("remote-server-not-found", text)


def test_outbound_peer_requires_tls_but_policy_is_not_supported(pki: Pki) -> None:
    peer, _ = outbound(pki, partner("b.example", "not-supported", "not-supported"))
    answer = peer.send(B_HEADER + FEATURES_STARTTLS_REQUIRED)
    assert answer == b"</stream:stream>"  # never sends <starttls/>
    assert failed(peer).reason == (
        "b.example requires TLS but partner policy tls=not-supported")


def test_outbound_peer_requires_tls_but_no_certificate_here() -> None:
    peer, _ = outbound(None, partner("b.example"))
    assert peer.send(B_HEADER + FEATURES_STARTTLS_REQUIRED) == b"</stream:stream>"
    assert failed(peer).reason == "b.example requires TLS but no certificate is configured here"


def test_outbound_starttls_refused_by_peer(pki: Pki) -> None:
    peer, _ = outbound(pki, partner("b.example"))
    assert peer.send(B_HEADER + FEATURES_STARTTLS_DIALBACK) == (
        b'<starttls xmlns="urn:ietf:params:xml:ns:xmpp-tls"/>')
    assert peer.send(b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>") == (
        b"</stream:stream>")
    assert failed(peer).reason == "b.example refused STARTTLS"


def test_outbound_peer_without_dialback(pki: Pki) -> None:
    peer, _ = outbound(None, partner("b.example", "not-supported", "not-supported"))
    no_db = B_HEADER.replace(b"xmlns:db='jabber:server:dialback' ", b"")
    text = "cannot authenticate: b.example does not support dialback"
    assert peer.send(no_db + b"<stream:features/>") == stream_error("policy-violation", text)
    assert failed(peer).reason == text


def test_outbound_peer_without_stream_id() -> None:
    peer, _ = outbound(None, partner("b.example", "not-supported", "not-supported"))
    answer = peer.send(B_HEADER.replace(b" id='b-1'", b"") + B_FEATURES_DIALBACK)
    assert answer == stream_error(
        "policy-violation", "cannot authenticate: b.example sent no stream id for dialback")


def test_outbound_peer_with_an_empty_stream_id() -> None:
    """Found by the fuzzer: id='' reached the key generation (AssertionError)."""
    peer, _ = outbound(None, partner("b.example", "not-supported", "not-supported"))
    answer = peer.send(B_HEADER.replace(b"id='b-1'", b"id=''") + B_FEATURES_DIALBACK)
    assert answer == stream_error(
        "policy-violation", "cannot authenticate: b.example sent no stream id for dialback")


def test_outbound_stanza_from_peer_is_refused() -> None:
    peer, _ = outbound(None, partner("b.example", "not-supported", "not-supported"))
    peer.send(B_HEADER + B_FEATURES_DIALBACK)
    answer = peer.send(b"<message from='y@b.example' to='x@a.example'/>")
    assert answer == stream_error(
        "unsupported-stanza-type", "stanza on an outbound stream (no XEP-0288 negotiated)")


def test_outbound_unknown_element() -> None:
    peer, _ = outbound(None, partner("b.example", "not-supported", "not-supported"))
    peer.send(B_HEADER)
    assert peer.send(b"<foo xmlns='urn:example'/>") == stream_error(
        "unsupported-stanza-type", "unexpected element {urn:example}foo")


def test_outbound_second_header() -> None:
    peer, _ = outbound(None, partner("b.example", "not-supported", "not-supported"))
    peer.send(B_HEADER)
    assert peer.send(B_HEADER) == stream_error("invalid-xml", "unexpected second stream header")


def test_outbound_send_before_authentication() -> None:
    peer, _ = outbound(None, partner("b.example", "not-supported", "not-supported"))
    peer.send(B_HEADER + B_FEATURES_DIALBACK)
    assert not peer.stream.can_send("a.example", "b.example")
    with pytest.raises(NotAuthenticated):
        peer.stream.send_stanza(message("x@a.example", "y@b.example", "too early"))
    assert peer.stream.stanzas_out == 0


def test_outbound_sasl_refused_falls_back_to_dialback(pki: Pki) -> None:
    """XEP-0178 §3: a failed SASL falls back to dialback where policy permits it."""
    peer, _ = outbound(pki, partner("b.example"))
    peer.send(B_HEADER + FEATURES_STARTTLS_DIALBACK)
    engine = OpenSslTlsProvider(pki.tls_settings("b.example")).server_engine()
    assert peer.send(PROCEED.replace(b'"', b"'"), then_tls=engine) == OUT_HEADER
    assert peer.stream.tls_active
    answer = peer.send(B_HEADER + FEATURES_EXTERNAL_DIALBACK.replace(b'"', b"'"))
    assert answer == (b'<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="EXTERNAL">'
                      + base64.b64encode(b"a.example") + b"</auth>")
    answer = peer.send(b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/>"
                       b"</failure>")
    key = peer.stream.ctx.keys.generate("b.example", "a.example", "b-1")
    assert answer == f'<db:result from="a.example" to="b.example">{key}</db:result>'.encode()
    peer.send(b"<db:result from='b.example' to='a.example' type='valid'/>")
    [auth] = peer.of(PairAuthenticated)
    assert str(auth.method) == "TLS Dialback"


def test_outbound_sasl_refused_and_dialback_not_permitted(pki: Pki) -> None:
    peer, _ = outbound(pki, partner("b.example", "optional", "optional", dialback=False))
    peer.send(B_HEADER + FEATURES_STARTTLS_DIALBACK)
    engine = OpenSslTlsProvider(pki.tls_settings("b.example")).server_engine()
    peer.send(PROCEED, then_tls=engine)
    peer.send(B_HEADER + FEATURES_EXTERNAL_DIALBACK)
    answer = peer.send(b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/>"
                       b"</failure>")
    text = ("cannot authenticate: b.example refused SASL EXTERNAL &lt;not-authorized/&gt;; "
            "dialback over TLS not permitted (partner policy permits SASL over TLS)")
    assert answer == stream_error("policy-violation", text)
    assert failed(peer).reason == text.replace("&lt;", "<").replace("&gt;", ">")


# ---------------------------------------------------------------------------- timeouts


def test_inbound_negotiation_timeout() -> None:
    peer = inbound(None, partner("a.example"), limits=Limits(negotiation_timeout=5))
    peer.send(PEER_HEADER)
    assert peer.stream.get_timer() == 5.0
    peer.stream.handle_timer(4.9)
    assert peer.pump() == b""
    peer.stream.handle_timer(5.0)
    assert peer.pump() == stream_error(
        "connection-timeout", "stream negotiation did not complete within 5s")
    assert closed(peer).error == "connection-timeout"
    # Then the close grace period: our end gives up waiting for the peer's </stream:stream>.
    deadline = peer.stream.get_timer()
    assert deadline == 10.0
    peer.stream.handle_timer(deadline)
    assert peer.stream.closed and peer.stream.get_timer() is None


def test_outbound_negotiation_timeout_bounces_with_remote_server_timeout() -> None:
    peer, _ = outbound(None, partner("b.example"), limits=Limits(negotiation_timeout=7))
    peer.send(B_HEADER)  # and then silence: no features
    peer.stream.handle_timer(7.0)
    assert peer.pump() == stream_error(
        "connection-timeout", "stream negotiation did not complete within 7s")
    event = failed(peer)
    assert event.condition == "remote-server-timeout"
    assert event.reason == "sent stream error <connection-timeout/>: stream negotiation did " \
                           "not complete within 7s"
