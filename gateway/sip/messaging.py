"""Messages between XMPP and SIP users (RFC 7572, error mapping RFC 7247 §8).

* XMPP ``<message/>`` with a ``<body/>`` → SIP ``MESSAGE`` (``text/plain;charset=UTF-8``)
  to ``sip:user@domain``; a failure response (or a timeout) comes back to the XMPP sender
  as a stanza error mapped by RFC 7247 §8.2. Bodiless messages (chat states, receipts)
  have no SIP equivalent (RFC 7572 §4) and are not sent (logged at debug).
* SIP ``MESSAGE`` → XMPP ``<message type='chat'/>``, answered once the router has
  decided: ``202 Accepted`` when the stanza is on its way (XMPP has no delivery receipts,
  so "accepted, final disposition unknown" is the truthful answer, RFC 3428 §7), or the
  refusal mapped by RFC 7247 §8.1. An XMPP error that arrives later (the remote server
  is unreachable) is told to the SIP user as a MESSAGE from the contact's address.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from functools import lru_cache
from xml.etree.ElementTree import Element

from gateway.logs import log_event
from gateway.sip.addresses import jid_to_sip
from gateway.sip.endpoint import SipEndpoint
from gateway.sip.errors import sip_status_for, xmpp_condition_for
from gateway.sip.message import SipRequest, SipResponse, unique_token
from gateway.sip.parties import Refused, request_parties
from gateway.sip.stanzas import BODY, chat_message, error_condition
from gateway.sip.transaction import RequestReceived
from gateway.xmpp.errors import make_error_reply, parse_error_child
from gateway.xmpp.jid import Jid
from gateway.xmpp.xml import XmlCharacterError, XmlOutputError, check_element

log = logging.getLogger("gateway.sip")

ToXmpp = Callable[[Element, Callable[[], None] | None], None]
TEXT_PLAIN = "text/plain;charset=UTF-8"


@lru_cache(maxsize=65536)
def _sip_uri(jid: str) -> str:
    """``sip:user@domain`` of a (bare or full) JID; cached: users repeat, and the
    percent-encoding of RFC 3261 §25.1 is the slow part."""
    return jid_to_sip(jid).uri


class MessageRelay:
    """Both directions of one-to-one messages."""

    def __init__(self, endpoint: SipEndpoint, served: frozenset[str], to_xmpp: ToXmpp) -> None:
        self.endpoint = endpoint
        self.served = served
        self.trust_asserted_identity = False  # set by the backend (issue 13)
        self.to_xmpp = to_xmpp
        self._ids = itertools.count(1)
        # SIP→XMPP message id → the error condition the router answered with, if any:
        # filled while the router decides (RFC 7247 §8.1 answer instead of a blind 202).
        self.inflight: dict[str, str | None] = {}

    # ------------------------------------------------------------------ SIP → XMPP

    def incoming(self, event: RequestReceived) -> None:
        request = event.request
        try:
            sender, recipient = request_parties(request, self.served,
                                             trust_asserted_identity=self.trust_asserted_identity)
        except Refused as refusal:
            refuse(self.endpoint, event, refusal)
            return
        if request.content_type not in ("", "text/plain"):
            self.endpoint.reply(event, 415, headers=[("Accept", "text/plain")])
            return
        try:
            text = request.body.decode("utf-8")
        except UnicodeDecodeError:
            self.endpoint.reply(event, 400, "Body is not UTF-8")
            return
        stanza_id = f"sip-{next(self._ids)}"
        stanza = chat_message(sender, recipient, text, stanza_id)
        if not valid_for_xmpp(self.endpoint, event, stanza):
            return
        self.inflight[stanza_id] = None
        self.to_xmpp(stanza, lambda: self._answer(event, stanza_id))

    def _answer(self, event: RequestReceived, stanza_id: str) -> None:
        condition = self.inflight.pop(stanza_id, None)
        if condition:
            self.endpoint.reply(event, sip_status_for(condition),
                                condition.replace("-", " ").title())
        else:
            self.endpoint.reply(event, 202)

    def failed(self, stanza: Element) -> None:
        """Routing ``stanza`` failed inside the gateway: its SIP answer is a 500."""
        stanza_id = stanza.get("id", "")
        if stanza_id in self.inflight:
            self.inflight[stanza_id] = "internal-server-error"

    def error_reply(self, stanza: Element, local_user: str) -> None:
        """An XMPP error addressed to a local user about a message they sent."""
        stanza_id = stanza.get("id", "")
        if stanza_id in self.inflight:
            self.inflight[stanza_id] = error_condition(stanza)
            return
        self._late_error(stanza, local_user)

    def _late_error(self, stanza: Element, local_user: str) -> None:
        """An XMPP error for a message our SIP user sent, after we answered 202."""
        condition = error_condition(stanza)
        contact = Jid.parse(stanza.get("from", "")).bare
        text = stanza.findtext(BODY) or ""
        note = f"[message to {contact} not delivered: {condition}]"
        # The error's own words (RFC 6120 §8.3.2 <text/>): which policy, which failure.
        reason = parse_error_child(stanza)[1]
        if reason:
            note += f" {reason}" + ("" if reason.endswith(".") else ".")
        if text:
            note += f" Your message: {text}" if reason else f" {text}"
        log_event(log, logging.INFO, "sip.delivery_failure_notice", recipient=local_user,
                  contact=contact, condition=condition)
        self.endpoint.send(self.request_to(local_user, contact, note), _ignore)

    # ------------------------------------------------------------------ XMPP → SIP

    def outgoing(self, stanza: Element, sender: str, local_user: str) -> None:
        body = stanza.findtext(BODY)
        if body is None:
            log_event(log, logging.DEBUG, "sip.message_without_body", sender=sender,
                      recipient=local_user, reason="no SIP equivalent (RFC 7572 §4)")
            return
        self.endpoint.send(self.request_to(local_user, sender, body),
                           lambda response: self._outcome(stanza, response))

    def request_to(self, local_user: str, sender: str, text: str) -> SipRequest:
        """A text/plain MESSAGE (RFC 3428) to a local SIP user from an XMPP address."""
        user_uri = _sip_uri(local_user)
        token = unique_token()  # branch, From tag and Call-ID in one
        request = self.endpoint.new_request(
            "MESSAGE", user_uri, f"<{_sip_uri(sender)}>;tag={token}", f"<{user_uri}>",
            token=token)
        request.headers.append(("Content-Type", TEXT_PLAIN))
        request.body = text.encode("utf-8")
        return request

    def _outcome(self, stanza: Element, response: SipResponse | None) -> None:
        if response is not None and response.status < 300:
            return
        if response is None:
            status, reason = 408, "no answer from the SIP side (Timer F)"
        else:
            status, reason = response.status, response.reason
        condition = xmpp_condition_for(status)
        log_event(log, logging.INFO, "sip.message_failed", sender=stanza.get("from"),
                  recipient=stanza.get("to"), status=status, condition=condition)
        reply = make_error_reply(stanza, condition, f"SIP {status} {reason}")
        if reply is not None:
            self.to_xmpp(reply, None)


def refuse(endpoint: SipEndpoint, event: RequestReceived, refusal: Refused,
           phrase: str | None = None) -> None:
    log_event(log, logging.INFO, "sip.refused", method=event.request.method,
              status=refusal.status, reason=refusal.reason,
              sender=event.request.get("from"), uri=event.request.uri)
    endpoint.reply(event, refusal.status, phrase or refusal.phrase or None)


def valid_for_xmpp(endpoint: SipEndpoint, event: RequestReceived, stanza: Element) -> bool:
    """Whether ``stanza`` can be written to a partner as it is; if not, the request is
    answered ``400`` naming the character (before any 202: a character XML 1.0 forbids
    would make the partner close the stream every other user's messages travel on, and
    the serialiser would otherwise replace it, altering what the user wrote)."""
    try:
        check_element(stanza)
    except XmlOutputError as exc:
        refuse(endpoint, event, Refused(400, str(exc)), _xml_phrase(exc))
        return False
    return True


def _xml_phrase(exc: XmlOutputError) -> str:
    if isinstance(exc, XmlCharacterError):
        return f"U+{exc.code_point:04X} in {exc.where} is not allowed in XML"
    return "Not representable in XML"


def _ignore(_response: SipResponse | None) -> None:
    """A notice to a SIP user: nobody to tell if it fails (it is itself the report)."""
