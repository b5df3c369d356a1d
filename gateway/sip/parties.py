"""Who speaks to whom in a SIP request from a local user toward XMPP (RFC 7247 §5).

Pure functions over a parsed request: the XMPP sender comes from ``From`` and the
recipient from the Request-URI, and each is checked before anything reaches XMPP:

* the sender's domain must be one we serve: XMPP partners trust our domain on the
  strength of our certificate or dialback, so a SIP request may only speak for users of
  our own domains (anything else is 403);
* the recipient must be outside our domains: a request for a SIP domain here was routed
  to us by mistake (404), not something to relay over S2S;
* both must map to valid JIDs (400 otherwise, with the part and the character at fault).

Domains are compared in the gateway's one normal form, so ``sip:bob@xn--bcher-kva.example``
(as SIP writes an internationalised host) is the XMPP domain ``bücher.example``.
"""

from __future__ import annotations

from collections.abc import Collection
from functools import lru_cache

from gateway.sip.addresses import AddressError, SipAddress, parse_sip_uri, sip_to_jid
from gateway.sip.message import SipParseError, SipRequest
from gateway.sip.trust import asserted_sender
from gateway.xmpp.jid import JidError


class Refused(Exception):
    """A request the gateway answers with ``status`` instead of relaying it; ``reason``
    for the log, ``phrase`` (fixed text, RFC 3261 §21.4.1) for the answer."""

    def __init__(self, status: int, reason: str, phrase: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.phrase = phrase


def request_parties(request: SipRequest, served: Collection[str], *,
                    trust_asserted_identity: bool = False) -> tuple[str, str]:
    """(full XMPP sender, XMPP recipient) of a request from a local SIP user: the
    recipient is a full JID when the Request-URI is a GRUU (RFC 7572 §5: the resource the
    gateway named in its Contact, RFC 7572 §4), else bare.

    With ``trust_asserted_identity`` a ``P-Asserted-Identity`` (RFC 3325 §9.1) names the
    sender instead of ``From``; call it so only for requests from trusted sources (the
    transport admits nothing else), and the ``From`` must still be in a served domain."""
    field = "From"
    try:
        sender_uri = request.from_uri
        sender = sip_address(sender_uri)
        field = "Request-URI"
        recipient = sip_address(request.uri)
        field = "P-Asserted-Identity"
        asserted = asserted_sender(request) if trust_asserted_identity else None
        if asserted is not None:
            if sender.domain not in served:
                raise Refused(403, f"sender domain {sender.host} is not served by this "
                                   "gateway")
            sender_uri, sender = asserted, sip_address(asserted)
    except (AddressError, SipParseError) as exc:
        raise Refused(400, str(exc), f"Bad {field}") from None
    if sender.domain not in served:
        raise Refused(403, f"sender domain {sender.host} is not served by this gateway")
    if recipient.domain in served:
        raise Refused(404, f"{recipient.host} is a SIP domain, not an XMPP one")
    try:
        return _full_jid(sender_uri), _recipient_jid(request.uri)
    except JidError as exc:  # RFC 7622 (PRECIS): the reason, in fixed words, for the phone
        raise Refused(400, str(exc), f"Not a valid XMPP address: {exc.reason}"[:200]) \
            from None
    except AddressError as exc:
        raise Refused(400, str(exc), "Not a valid XMPP address") from None


def sender_address(request: SipRequest, *, trust_asserted_identity: bool = False
                   ) -> SipAddress:
    """The SIP address :func:`request_parties` took the sender from (call it after that
    accepted the request): its user part as the SIP side spells it."""
    asserted = asserted_sender(request) if trust_asserted_identity else None
    return sip_address(asserted or request.from_uri)


# The same users talk again and again: the URI parsing and XEP-0106 escaping of an
# address are done once per address, not once per request (bounded caches).
@lru_cache(maxsize=16384)
def sip_address(uri: str) -> SipAddress:
    """:func:`parse_sip_uri`, remembered per URI."""
    return parse_sip_uri(uri)


# Keyed by the URI text, not the SipAddress: a str hashes in C, a dataclass in Python.
@lru_cache(maxsize=16384)
def _full_jid(uri: str) -> str:
    return sip_to_jid(sip_address(uri)).full


@lru_cache(maxsize=16384)
def _recipient_jid(uri: str) -> str:
    address = sip_address(uri)
    return sip_to_jid(address, resource=address.gruu).full
