"""A SIP user whose message was refused by a policy reads the policy: in a Warning header
(RFC 3261 §20.43) when the refusal beats the answer, in the delivery notice when it comes
after the 202. The real MessageRelay over a real, unstarted endpoint."""

from __future__ import annotations

import time
from collections.abc import Callable
from xml.etree.ElementTree import Element

from gateway.sip.endpoint import SipEndpoint
from gateway.sip.message import parse_message
from gateway.sip.messaging import MessageRelay, warning_header
from gateway.sip.transaction import RequestReceived
from gateway.xmpp.errors import make_error_reply

POLICY = ("the server policies of contoso.example and fabrikam.example do not allow a "
          "connection: fabrikam.example requires TLS but partner policy tls=not-supported")
MESSAGE = ("MESSAGE sip:alice@fabrikam.example SIP/2.0\r\n"
           "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKrefusal{n}\r\n"
           "From: <sip:carol@contoso.example>;tag=1\r\nTo: <sip:alice@fabrikam.example>\r\n"
           "Call-ID: refusal{n}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n"
           "Content-Length: 5\r\n\r\nhello")


class Relay:
    def __init__(self) -> None:
        self.endpoint = SipEndpoint(transport="udp", proxy=("127.0.0.1", 5060),
                                    local=("127.0.0.1", 5062))
        self.sent: list[bytes] = []
        self.endpoint.transport.send = lambda _flow, data: self.sent.append(data)
        self.relay = MessageRelay(self.endpoint, frozenset({"contoso.example"}),
                                  self._to_xmpp)
        self.stanza: Element | None = None
        self.decided: Callable[[], None] | None = None

    def _to_xmpp(self, stanza: Element, on_decided: Callable[[], None] | None) -> None:
        self.stanza, self.decided = stanza, on_decided

    def receive(self, n: int) -> None:
        [event] = self.endpoint.layer.receive(parse_message(MESSAGE.format(n=n).encode()),
                                              ("udp", ("127.0.0.1", 5060)), time.monotonic())
        assert isinstance(event, RequestReceived)
        self.relay.incoming(event)

    def refuse(self) -> None:
        assert self.stanza is not None
        error = make_error_reply(self.stanza, "policy-violation", POLICY)
        assert error is not None
        self.relay.error_reply(error, "carol@contoso.example")

    def decide(self) -> None:
        assert self.decided is not None
        self.decided()
        self.endpoint._flush()


def test_a_refusal_before_the_answer_is_in_the_answer() -> None:
    relay = Relay()
    relay.receive(1)
    relay.refuse()
    relay.decide()
    [answer] = [parse_message(data) for data in relay.sent]
    assert (answer.status, answer.reason) == (403, "Policy Violation")  # RFC 7247 §8.1
    assert answer.get("warning") == f'399 contoso.example "{POLICY}"'


def test_a_refusal_after_the_answer_is_in_the_notice() -> None:
    relay = Relay()
    relay.receive(2)
    relay.decide()
    relay.refuse()
    relay.endpoint._flush()
    answer, notice = (parse_message(data) for data in relay.sent)
    assert answer.status == 202
    assert notice.body.decode() == (
        f"[message to alice@fabrikam.example not delivered: policy-violation] {POLICY}. "
        "Your message: hello")


def test_warning_text_is_a_quoted_string() -> None:
    assert warning_header("gw.example", "") == []
    assert warning_header("gw.example", 'say "hi"\r\nand \\ go') == [
        ("Warning", '399 gw.example "say \\"hi\\" and \\\\ go"')]
