"""The pure parts of the presence mapping: PIDF per XMPP resource and its aggregation
from SIP devices (RFC 3863, RFC 4480, RFC 8048 §6), and the Subscription-State reason an
XMPP presence error becomes (RFC 6665 §4.2.2)."""

from __future__ import annotations

import pytest

from gateway.sip.notifying import termination_reason
from gateway.sip.pidf import PresenceState, parse_pidf, to_pidf


def tuples(document: bytes) -> list[str]:
    return [part.split(">", 1)[0] for part in document.decode().split("<tuple ")[1:]]


def test_one_tuple_per_available_resource_most_available_first() -> None:
    resources = {"desk": PresenceState(True, "dnd", "writing"),
                 "phone": PresenceState(True, "", "on the go"),
                 "tablet": PresenceState(True, "chat", "")}
    document = to_pidf("bob@xmpp.example", resources)
    assert document.count(b"<basic>open</basic>") == 3
    text = document.decode()
    assert text.index("on the go") < text.index("writing")  # none before dnd
    assert "<rpid:busy/>" not in text  # the person is described by the chattiest one
    assert parse_pidf(document) == PresenceState(True, "", "on the go")
    # a resource keeps its tuple id from one document to the next
    again = to_pidf("bob@xmpp.example", {"desk": resources["desk"]})
    assert tuples(again)[0] in tuples(document)


def test_no_available_resource_is_one_closed_tuple() -> None:
    for resources in ({}, {"desk": PresenceState(False, "", "gone home")}):
        document = to_pidf("bob@xmpp.example", resources)
        assert document.count(b"<tuple ") == 1
        assert parse_pidf(document) == PresenceState(False)


def test_resource_names_cannot_break_the_document() -> None:
    document = to_pidf("bob@xmpp.example", {'a"<&>\u00e9': PresenceState(True, "away", "<hi>")})
    assert parse_pidf(document) == PresenceState(True, "away", "<hi>")


def test_several_sip_devices_aggregate_to_one_state() -> None:
    document = (b'<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" '
                b'entity="pres:alice@sip.example">'
                b'<tuple id="deskphone"><status><basic>closed</basic></status>'
                b'<note>off</note></tuple>'
                b'<tuple id="softphone"><status><basic>open</basic></status>'
                b'<note>on the laptop</note></tuple></presence>')
    assert parse_pidf(document) == PresenceState(True, "", "on the laptop")


@pytest.mark.parametrize(("condition", "error_type", "reason"), [
    ("not-allowed", "cancel", "rejected"),
    ("forbidden", "auth", "rejected"),
    ("service-unavailable", "cancel", "rejected"),
    ("item-not-found", "cancel", "noresource"),
    ("remote-server-not-found", "cancel", "noresource"),
    ("remote-server-timeout", "wait", "giveup;retry-after=60"),
    ("recipient-unavailable", "", "giveup;retry-after=60"),  # its usual type is wait
    ("undefined-condition", "", "rejected"),
])
def test_presence_errors_become_subscription_reasons(condition: str, error_type: str,
                                                     reason: str) -> None:
    assert termination_reason(condition, error_type) == reason
