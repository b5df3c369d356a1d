"""Contact rules (docs/configuration.md, "Partner types"): every cell of the table, for
every partner type, unlisted domains and the per-user switch.

The expectations are written out literally below (not derived from the code under test):
D = delivered, E = service-unavailable error, U = answered with presence unsubscribed,
I = silently ignored (see gateway/policy/contacts.py for the RFC 6121 §8.5.1 reasoning).
"""

from __future__ import annotations

from xml.etree.ElementTree import Element, SubElement

import pytest

from gateway.config.model import PartnerType
from gateway.policy.contacts import (
    ContactDecision,
    Refusal,
    SideEffect,
    StanzaKind,
    inbound_decision,
    outbound_decision,
    stanza_kind,
    strip_status,
)

F, PV, PU = PartnerType.FEDERATED, PartnerType.PUBLIC_VERIFIED, PartnerType.PUBLIC_UNVERIFIED
K = StanzaKind

KINDS = [
    K.MESSAGE,
    K.PRESENCE,
    K.UNAVAILABLE,
    K.SUBSCRIBE,
    K.SUBSCRIBED,
    K.UNSUBSCRIBE,
    K.UNSUBSCRIBED,
    K.PROBE,
    K.IQ_REQUEST,
    K.IQ_RESPONSE,
    K.ERROR,
]

# What a remote XMPP contact may do to an *enabled* local user. Columns in KINDS order:
#            msg  pres unav sub  subd unsb unsd prob iq   iqr  err
ALL_DELIVERED = "D    D    D    D    D    D    D    D    D    D    D"
REFUSED_UNAUTHORIZED = "E    I    I    U    I    D    D    U    E    D    D"
UNIFORM_REFUSAL = "E    I    I    U    I    I    I    U    E    I    I"

INBOUND_TABLE: dict[tuple[PartnerType | None, bool], str] = {
    # (partner type, contact authorized by the local user)
    (F, False): ALL_DELIVERED,  # federated: "yes, without authorization"
    (F, True): ALL_DELIVERED,
    (PV, False): ALL_DELIVERED,  # public-verified: "yes, without authorization"
    (PV, True): ALL_DELIVERED,
    (PU, False): REFUSED_UNAUTHORIZED,  # public-unverified: "only after authorization"
    (PU, True): ALL_DELIVERED,
    (None, False): UNIFORM_REFUSAL,  # unlisted: "no"
    (None, True): UNIFORM_REFUSAL,
}


def _cells(row: str) -> dict[StanzaKind, str]:
    symbols = row.split()
    assert len(symbols) == len(KINDS)
    return dict(zip(KINDS, symbols, strict=True))


def _symbol(decision: ContactDecision) -> str:
    if decision.allowed:
        assert decision.refusal is Refusal.NONE
        return "D"
    return {
        Refusal.ERROR: "E",
        Refusal.UNSUBSCRIBED: "U",
        Refusal.IGNORE: "I",
    }[decision.refusal]


INBOUND_CASES = [
    (partner, authorized, kind, expected)
    for (partner, authorized), row in INBOUND_TABLE.items()
    for kind, expected in _cells(row).items()
]


@pytest.mark.parametrize(("partner", "authorized", "kind", "expected"), INBOUND_CASES)
def test_inbound_table(
    partner: PartnerType | None, authorized: bool, kind: StanzaKind, expected: str
) -> None:
    decision = inbound_decision(kind, partner, user_enabled=True, contact_authorized=authorized)
    assert _symbol(decision) == expected, decision.reason
    assert decision.reason
    assert decision.effects == ()
    assert decision.strip_status is False  # status notes are about what XMPP sees (outbound)
    if expected == "E":
        # Same answer as for a non-existent account: reveals nothing (RFC 6121 §8.5.1).
        assert (decision.error_condition, decision.error_type) == ("service-unavailable", "cancel")
    else:
        assert decision.error_condition is None


@pytest.mark.parametrize("partner", [F, PV, PU, None])
@pytest.mark.parametrize("authorized", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_inbound_to_disabled_user_is_the_uniform_refusal(
    partner: PartnerType | None, authorized: bool, kind: StanzaKind
) -> None:
    decision = inbound_decision(kind, partner, user_enabled=False, contact_authorized=authorized)
    assert _symbol(decision) == _cells(UNIFORM_REFUSAL)[kind]
    if partner is not None:
        assert "disabled" in decision.reason


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("authorized", [False, True])
def test_allow_unlisted_treats_unlisted_as_public_unverified(
    kind: StanzaKind, authorized: bool
) -> None:
    decision = inbound_decision(
        kind, None, user_enabled=True, contact_authorized=authorized, allow_unlisted=True
    )
    row = INBOUND_TABLE[(PU, authorized)]
    assert _symbol(decision) == _cells(row)[kind]
    assert "unlisted" in decision.reason or decision.allowed is False


def test_refusal_does_not_depend_on_why() -> None:
    """Unlisted, disabled and unauthorized look the same from outside (no existence leak)."""
    for kind in KINDS:
        answers = {
            (d.refusal, d.error_condition, d.error_type)
            for d in (
                inbound_decision(kind, None, user_enabled=True, contact_authorized=False),
                inbound_decision(kind, F, user_enabled=False, contact_authorized=False),
                inbound_decision(kind, PU, user_enabled=False, contact_authorized=True),
            )
        }
        assert len(answers) == 1, kind


# Outbound (local user -> XMPP contact): who may be written to, status stripping and the
# authorization side effects.
#        partner type -> strip <status/> from the local user's presence
STRIPS_STATUS = {F: False, PV: True, PU: True}


@pytest.mark.parametrize("partner", [F, PV, PU])
@pytest.mark.parametrize("kind", KINDS)
def test_outbound_to_partners(partner: PartnerType, kind: StanzaKind) -> None:
    decision = outbound_decision(kind, partner, user_enabled=True)
    assert decision.allowed and decision.refusal is Refusal.NONE
    presence_kind = kind in (K.PRESENCE, K.UNAVAILABLE)
    assert decision.strip_status is (STRIPS_STATUS[partner] and presence_kind)
    expected_effects = {
        K.SUBSCRIBE: (SideEffect.RECORD_AUTHORIZATION,),  # local user adds/invites
        K.SUBSCRIBED: (SideEffect.RECORD_AUTHORIZATION,),  # local user approves
        K.UNSUBSCRIBED: (SideEffect.REVOKE_AUTHORIZATION,),  # local user cancels
    }.get(kind, ())
    assert decision.effects == expected_effects


@pytest.mark.parametrize("kind", KINDS)
def test_outbound_to_unlisted(kind: StanzaKind) -> None:
    refused = outbound_decision(kind, None, user_enabled=True)
    assert not refused.allowed and refused.effects == ()
    if kind in (K.ERROR, K.IQ_RESPONSE):
        assert refused.refusal is Refusal.IGNORE
    else:
        assert (refused.refusal, refused.error_condition, refused.error_type) == (
            Refusal.ERROR,
            "not-allowed",
            "cancel",
        )
    opted_in = outbound_decision(kind, None, user_enabled=True, allow_unlisted=True)
    assert opted_in.allowed
    assert opted_in.strip_status is (kind in (K.PRESENCE, K.UNAVAILABLE))


@pytest.mark.parametrize("partner", [F, PV, PU, None])
@pytest.mark.parametrize("kind", KINDS)
def test_disabled_user_cannot_send(partner: PartnerType | None, kind: StanzaKind) -> None:
    decision = outbound_decision(kind, partner, user_enabled=False, allow_unlisted=True)
    assert not decision.allowed and decision.effects == ()
    if kind in (K.ERROR, K.IQ_RESPONSE):
        assert decision.refusal is Refusal.IGNORE
    else:
        assert decision.error_condition == "forbidden"
    assert "disabled" in decision.reason


def test_authorization_flow_for_public_unverified() -> None:
    """Refused until the local user subscribes (the router records it), then allowed."""
    assert not inbound_decision(K.MESSAGE, PU, user_enabled=True, contact_authorized=False).allowed
    subscribe = outbound_decision(K.SUBSCRIBE, PU, user_enabled=True)
    assert SideEffect.RECORD_AUTHORIZATION in subscribe.effects
    assert inbound_decision(K.MESSAGE, PU, user_enabled=True, contact_authorized=True).allowed
    assert inbound_decision(K.SUBSCRIBED, PU, user_enabled=True, contact_authorized=True).allowed


def _stanza(tag: str, stanza_type: str | None = None) -> Element:
    element = Element(f"{{jabber:server}}{tag}")
    if stanza_type is not None:
        element.set("type", stanza_type)
    return element


@pytest.mark.parametrize(
    ("tag", "stanza_type", "kind"),
    [
        ("message", None, K.MESSAGE),
        ("message", "chat", K.MESSAGE),
        ("message", "groupchat", K.MESSAGE),
        ("message", "error", K.ERROR),
        ("presence", None, K.PRESENCE),
        ("presence", "unavailable", K.UNAVAILABLE),
        ("presence", "subscribe", K.SUBSCRIBE),
        ("presence", "subscribed", K.SUBSCRIBED),
        ("presence", "unsubscribe", K.UNSUBSCRIBE),
        ("presence", "unsubscribed", K.UNSUBSCRIBED),
        ("presence", "probe", K.PROBE),
        ("presence", "error", K.ERROR),
        ("iq", "get", K.IQ_REQUEST),
        ("iq", "set", K.IQ_REQUEST),
        ("iq", "result", K.IQ_RESPONSE),
        ("iq", "error", K.ERROR),
    ],
)
def test_stanza_kind(tag: str, stanza_type: str | None, kind: StanzaKind) -> None:
    assert stanza_kind(_stanza(tag, stanza_type)) is kind


@pytest.mark.parametrize(("tag", "stanza_type"), [("presence", "bogus"), ("iq", None), ("x", None)])
def test_stanza_kind_rejects_unknown(tag: str, stanza_type: str | None) -> None:
    with pytest.raises(ValueError):
        stanza_kind(_stanza(tag, stanza_type))


def test_strip_status_keeps_everything_else() -> None:
    stanza = _stanza("presence")
    stanza.set("from", "alice@contoso.example/sip")
    SubElement(stanza, "{jabber:server}show").text = "away"
    SubElement(stanza, "{jabber:server}status").text = "in a meeting with the CFO"
    SubElement(stanza, "{jabber:server}status", {"xml:lang": "de"}).text = "Besprechung"
    SubElement(stanza, "{urn:example:ext}status").text = "not an RFC 6121 status"
    SubElement(stanza, "{jabber:server}priority").text = "1"
    stripped = strip_status(stanza)
    assert [child.tag for child in stripped] == [
        "{jabber:server}show",
        "{urn:example:ext}status",
        "{jabber:server}priority",
    ]
    assert stripped.get("from") == "alice@contoso.example/sip"
    assert len(stanza) == 5  # the original is untouched
