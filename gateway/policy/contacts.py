"""The contact rules (docs/configuration.md, "Partner types") as pure functions.

The router classifies a stanza (:func:`stanza_kind`), resolves the partner type of the
remote domain, the per-user federation switch and the local user's authorization of the
remote contact (the store), and asks :func:`inbound_decision` (XMPP → local user) or
:func:`outbound_decision` (local user → XMPP). The answer is a :class:`ContactDecision`:
deliver or not, strip ``<status/>`` or not, how to refuse, why (for the log), and which
side effects to apply to the authorization store.

Refusing without revealing whether a local user exists: every inbound
refusal is made *exactly* like RFC 6121 §8.5.1's handling of a stanza to an account
that does not exist, so a remote domain cannot tell "refused" from "no such user" (nor,
for a public-unverified contact, "not authorized" from "no such user"):

* message, iq get/set → ``<service-unavailable/>`` (type cancel) — RFC 6121 §8.5.1
  allows "silently ignore or service-unavailable" for messages and requires
  service-unavailable for iq; we answer so the sender is told (the contact rules ask for an
  error back) while saying nothing specific (RFC 6120 §8.3.3.19 lists it as the
  error that protects against presence leaks);
* presence subscribe and probe → a presence of type ``unsubscribed`` from the local bare
  JID (RFC 6121 §8.5.1 option b; §3.1.3 and §4.3.2 make this the ordinary "no" to a
  subscription request, which keeps both sides' subscription state consistent);
* available/unavailable presence, subscribed, unsubscribe, unsubscribed → silently
  ignored (RFC 6121 §8.5.1 says MUST silently ignore for a non-existent account, so an
  error here would both violate it and reveal the user);
* any stanza of type error, and iq result → silently ignored (RFC 6120 §8.3.1: never
  answer an error with an error; §8.2.3: never answer a response).

Where the contact rules would give "a proper XMPP error" and RFC 6121 asks for silence, the
RFC wins; docs/sip.md records the difference.

Outbound refusals go back to our own local user, who may learn why: a disabled user gets
``<forbidden/>`` (RFC 6120 §8.3.3.6, lacks permission), an unlisted domain ``<not-allowed/>``
(RFC 6120 §8.3.3.9, whose example is exactly "sending to a blacklisted domain").

Status notes: the table's "sees status notes" column says what the *XMPP contact* sees of
the local user, so ``<status/>`` is stripped from presence going *out* to public-verified
and public-unverified contacts (and from nothing coming in).

Authorization: the local user grants it by inviting/adding the contact — an outgoing
``subscribe`` (adding them) or ``subscribed`` (approving their request) — or with the CLI;
an outgoing ``unsubscribed`` (cancelling the contact's subscription) revokes it. These side
effects are recorded for every partner type, so a later reclassification of the partner to
public-unverified keeps what the user did. A message alone does not authorize (the partner
types' table: "only once the local user added/authorized them").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from xml.etree.ElementTree import Element

from gateway.config.model import PartnerType


class StanzaKind(StrEnum):
    """What the contact rules distinguish (RFC 6121 §3, §4, §5; RFC 6120 §8.2.3)."""

    MESSAGE = "message"  # any message type except error
    PRESENCE = "presence"  # available (no type)
    UNAVAILABLE = "unavailable"
    SUBSCRIBE = "subscribe"
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBE = "unsubscribe"
    UNSUBSCRIBED = "unsubscribed"
    PROBE = "probe"
    IQ_REQUEST = "iq-request"  # get / set
    IQ_RESPONSE = "iq-response"  # result
    ERROR = "error"  # any stanza of type error


class Refusal(StrEnum):
    """How the router answers a stanza it does not deliver."""

    NONE = "none"  # delivered
    ERROR = "error"  # stanza error with ContactDecision.error_condition / error_type
    IGNORE = "ignore"  # drop silently (log only)
    UNSUBSCRIBED = "unsubscribed"  # answer with presence type=unsubscribed from the local user


class SideEffect(StrEnum):
    """Changes the router applies to the authorization store for the (local, remote) pair."""

    RECORD_AUTHORIZATION = "record-authorization"
    REVOKE_AUTHORIZATION = "revoke-authorization"


@dataclass(frozen=True, slots=True)
class ContactDecision:
    """The outcome of the contact rules for one stanza."""

    allowed: bool
    reason: str
    strip_status: bool = False
    refusal: Refusal = Refusal.NONE
    error_condition: str | None = None  # RFC 6120 §8.3.3 name when refusal is ERROR
    error_type: str | None = None  # RFC 6120 §8.3.2 type when refusal is ERROR
    effects: tuple[SideEffect, ...] = ()


_NS = "jabber:server"
_PRESENCE_KINDS = {
    None: StanzaKind.PRESENCE,
    "unavailable": StanzaKind.UNAVAILABLE,
    "subscribe": StanzaKind.SUBSCRIBE,
    "subscribed": StanzaKind.SUBSCRIBED,
    "unsubscribe": StanzaKind.UNSUBSCRIBE,
    "unsubscribed": StanzaKind.UNSUBSCRIBED,
    "probe": StanzaKind.PROBE,
}


def stanza_kind(stanza: Element) -> StanzaKind:
    """Classify a stanza (any namespace; the local name decides). Unknown presence or iq
    types are RFC 6120 §8.3.3.1-style bad requests: ``ValueError``."""
    name = stanza.tag.rpartition("}")[2]
    stanza_type = stanza.get("type")
    if stanza_type == "error":
        return StanzaKind.ERROR
    if name == "message":
        return StanzaKind.MESSAGE
    if name == "presence":
        if stanza_type not in _PRESENCE_KINDS:
            raise ValueError(f"unknown presence type {stanza_type!r}")
        return _PRESENCE_KINDS[stanza_type]
    if name == "iq":
        if stanza_type in ("get", "set"):
            return StanzaKind.IQ_REQUEST
        if stanza_type == "result":
            return StanzaKind.IQ_RESPONSE
        raise ValueError(f"unknown iq type {stanza_type!r}")
    raise ValueError(f"not a stanza: {stanza.tag}")


def strip_status(stanza: Element) -> Element:
    """A copy of a presence stanza without ``<status/>`` children (RFC 6121 §4.7.2.2)."""
    copy = Element(stanza.tag, dict(stanza.attrib))
    copy.text = stanza.text
    for child in stanza:
        if child.tag.rpartition("}")[2] != "status" or not child.tag.startswith(
            ("{jabber:server}", "{jabber:client}")
        ):
            copy.append(child)
    return copy


def effective_partner_type(
    partner_type: PartnerType | None, *, allow_unlisted: bool
) -> PartnerType | None:
    """An unlisted domain does not federate, unless the operator opted in to treating
    unlisted domains as public-unverified (docs/configuration.md, "Partner types")."""
    if partner_type is None and allow_unlisted:
        return PartnerType.PUBLIC_UNVERIFIED
    return partner_type


# Inbound kinds a public-unverified contact may send only once authorized (the partner
# types' columns "Messages" and "Subscriptions"; presence and probes follow from a
# subscription, which itself needs authorization).
_NEEDS_AUTHORIZATION = frozenset(
    {
        StanzaKind.MESSAGE,
        StanzaKind.IQ_REQUEST,
        StanzaKind.SUBSCRIBE,
        StanzaKind.SUBSCRIBED,
        StanzaKind.PRESENCE,
        StanzaKind.UNAVAILABLE,
        StanzaKind.PROBE,
    }
)

# Inbound kinds that only remove state: let them through from any federating partner so
# both sides' subscription states stay consistent (RFC 6121 §3.2-§3.3) even after a revoke.
_STATE_REMOVING = frozenset({StanzaKind.UNSUBSCRIBE, StanzaKind.UNSUBSCRIBED})


def _uniform_refusal(kind: StanzaKind, reason: str) -> ContactDecision:
    """Refuse as RFC 6121 §8.5.1 treats a non-existent account (see module docstring)."""
    if kind in (StanzaKind.MESSAGE, StanzaKind.IQ_REQUEST):
        return ContactDecision(
            False,
            reason,
            refusal=Refusal.ERROR,
            error_condition="service-unavailable",
            error_type="cancel",
        )
    if kind in (StanzaKind.SUBSCRIBE, StanzaKind.PROBE):
        return ContactDecision(False, reason, refusal=Refusal.UNSUBSCRIBED)
    return ContactDecision(False, reason, refusal=Refusal.IGNORE)


@cache  # pure over a small finite domain (kinds, partner types, flags) and runs per stanza
def inbound_decision(
    kind: StanzaKind,
    partner_type: PartnerType | None,
    *,
    user_enabled: bool,
    contact_authorized: bool,
    allow_unlisted: bool = False,
) -> ContactDecision:
    """May a stanza of ``kind`` from an XMPP contact reach a local user?

    ``partner_type`` is the remote domain's type, None when unlisted; ``user_enabled`` the
    resolved per-user federation switch; ``contact_authorized`` whether the local user has
    authorized the remote bare JID; ``allow_unlisted`` is ``federation.allow_unlisted``.
    """
    effective = effective_partner_type(partner_type, allow_unlisted=allow_unlisted)
    if effective is None:
        return _uniform_refusal(kind, "domain is not a federation partner (unlisted)")
    if not user_enabled:
        return _uniform_refusal(kind, "local user is disabled for XMPP federation")
    unlisted_note = (
        " (unlisted domain treated as public-unverified)" if partner_type is None else ""
    )
    unverified = effective is PartnerType.PUBLIC_UNVERIFIED
    if unverified and not contact_authorized and kind in _NEEDS_AUTHORIZATION:
        return _uniform_refusal(
            kind, "public-unverified contact not authorized by the local user" + unlisted_note
        )
    if kind is StanzaKind.ERROR or kind is StanzaKind.IQ_RESPONSE or kind in _STATE_REMOVING:
        return ContactDecision(True, f"{kind} from {effective} partner{unlisted_note}")
    authorization = (
        " (authorized by the local user)" if effective is PartnerType.PUBLIC_UNVERIFIED else ""
    )
    return ContactDecision(True, f"{kind} from {effective} partner{authorization}{unlisted_note}")


@cache  # pure over a small finite domain (kinds, partner types, flags) and runs per stanza
def outbound_decision(
    kind: StanzaKind,
    partner_type: PartnerType | None,
    *,
    user_enabled: bool,
    allow_unlisted: bool = False,
) -> ContactDecision:
    """May a local user's stanza of ``kind`` go to an XMPP contact, and what changes?

    Local users may write to any partner (the authorization gate protects *them* from
    unverified senders); ``<status/>`` is stripped from their presence toward
    public-verified and public-unverified partners (the partner types'
    column "Sees status notes").
    """
    effective = effective_partner_type(partner_type, allow_unlisted=allow_unlisted)
    if kind in (StanzaKind.ERROR, StanzaKind.IQ_RESPONSE):
        refusal = ContactDecision(False, "", refusal=Refusal.IGNORE)
    else:
        refusal = ContactDecision(False, "", refusal=Refusal.ERROR, error_type="cancel")
    if not user_enabled:
        return _with(refusal, "local user is disabled for XMPP federation", "forbidden")
    if effective is None:
        return _with(refusal, "domain is not a federation partner (unlisted)", "not-allowed")
    effects: tuple[SideEffect, ...] = ()
    if kind in (StanzaKind.SUBSCRIBE, StanzaKind.SUBSCRIBED):
        effects = (SideEffect.RECORD_AUTHORIZATION,)
    elif kind is StanzaKind.UNSUBSCRIBED:
        effects = (SideEffect.REVOKE_AUTHORIZATION,)
    strip = effective is not PartnerType.FEDERATED and kind in (
        StanzaKind.PRESENCE,
        StanzaKind.UNAVAILABLE,
    )
    unlisted_note = (
        " (unlisted domain treated as public-unverified)" if partner_type is None else ""
    )
    return ContactDecision(
        True,
        f"{kind} to {effective} partner{unlisted_note}",
        strip_status=strip,
        effects=effects,
    )


def _with(template: ContactDecision, reason: str, condition: str) -> ContactDecision:
    if template.refusal is Refusal.ERROR:
        return ContactDecision(
            False, reason, refusal=Refusal.ERROR, error_condition=condition, error_type="cancel"
        )
    return ContactDecision(False, reason, refusal=Refusal.IGNORE)
