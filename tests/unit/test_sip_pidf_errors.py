"""PIDF ↔ XMPP presence (RFC 3863, RFC 4480, RFC 7248 §7) and the RFC 7247 §8 error
tables."""

from __future__ import annotations

from xml.etree.ElementTree import Element, SubElement

import pytest

from gateway.sip.errors import (
    SIP_TO_XMPP,
    XMPP_TO_SIP,
    sip_status_for,
    xmpp_condition_for,
)
from gateway.sip.pidf import PidfError, PresenceState, parse_pidf, to_pidf
from gateway.xmpp.errors import STANZA_CONDITION_TYPES, error_child

NS = "jabber:server"


@pytest.mark.parametrize("available", [True, False])
@pytest.mark.parametrize(("show", "expected_show"), [
    ("", ""), ("away", "away"), ("xa", "away"), ("dnd", "dnd"), ("chat", "")])
@pytest.mark.parametrize("note", ["", "in a <meeting> & more", "déjà vu ✓"])
def test_round_trip(available: bool, show: str, expected_show: str, note: str) -> None:
    state = PresenceState(available, show if available else "", note)
    again = parse_pidf(to_pidf("bob@xmpp.example", state))
    assert again == PresenceState(available, expected_show if available else "", note)


def test_document_shape() -> None:
    body = to_pidf("bob@xmpp.example", PresenceState(True, "dnd", "busy"))
    text = body.decode()
    assert 'entity="pres:bob@xmpp.example"' in text
    assert "<basic>open</basic>" in text and "<rpid:busy/>" in text
    assert "<note>busy</note>" in text


KAMAILIO_STYLE = b"""<?xml version='1.0' encoding='UTF-8'?>
<presence xmlns='urn:ietf:params:xml:ns:pidf' xmlns:dm='urn:ietf:params:xml:ns:pidf:data-model'
  xmlns:rpid='urn:ietf:params:xml:ns:pidf:rpid' entity='sip:alice@sip.example'>
  <tuple id='phone'><status><basic>closed</basic></status></tuple>
  <tuple id='desk'><status><basic>open</basic></status><note>at my desk</note></tuple>
  <dm:person id='p'><rpid:activities><rpid:%s/></rpid:activities></dm:person>
</presence>"""


@pytest.mark.parametrize(("activity", "show"), [
    ("on-the-phone", "dnd"), ("meeting", "dnd"), ("busy", "dnd"), ("away", "away"),
    ("vacation", "xa"), ("sleeping", "xa"), ("unknown-thing", "")])
def test_any_open_tuple_and_activities(activity: str, show: str) -> None:
    assert parse_pidf(KAMAILIO_STYLE % activity.encode()) == PresenceState(
        True, show, "at my desk")


def test_empty_and_hostile_documents() -> None:
    assert parse_pidf(b"") == PresenceState(False)
    assert parse_pidf(b"  \n") == PresenceState(False)
    laughs = (b'<?xml version="1.0"?><!DOCTYPE presence [<!ENTITY a "aaaaaaaaaa">'
              b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
              b'<presence xmlns="urn:ietf:params:xml:ns:pidf"><tuple id="t"><status>'
              b"<basic>open</basic></status><note>&b;</note></tuple></presence>")
    with pytest.raises(PidfError, match="DTD"):
        parse_pidf(laughs)
    with pytest.raises(PidfError, match="well-formed"):
        parse_pidf(b"<presence><tuple>")
    with pytest.raises(PidfError, match="no <basic/>"):
        parse_pidf(b"<presence xmlns='urn:ietf:params:xml:ns:pidf'/>")


def test_presence_state_from_and_to_stanzas() -> None:
    stanza = Element(f"{{{NS}}}presence", {"from": "b@x/r", "to": "a@y"})
    SubElement(stanza, f"{{{NS}}}show").text = "xa"
    SubElement(stanza, f"{{{NS}}}status").text = "gone fishing"
    assert PresenceState.from_stanza(stanza) == PresenceState(True, "xa", "gone fishing")
    odd = Element(f"{{{NS}}}presence")
    SubElement(odd, f"{{{NS}}}show").text = "sleepy"
    assert PresenceState.from_stanza(odd) == PresenceState(True)
    gone = Element(f"{{{NS}}}presence", {"type": "unavailable"})
    assert PresenceState.from_stanza(gone) == PresenceState(False)
    out = PresenceState(True, "dnd", "writing").to_stanza("a@y/sip", "b@x")
    assert (out.get("type"), out.findtext(f"{{{NS}}}show"),
            out.findtext(f"{{{NS}}}status")) == (None, "dnd", "writing")
    assert PresenceState(False).to_stanza("a@y/sip", "b@x").get("type") == "unavailable"


RFC6120_CONDITIONS = (
    "bad-request", "conflict", "feature-not-implemented", "forbidden", "gone",
    "internal-server-error", "item-not-found", "jid-malformed", "not-acceptable",
    "not-allowed", "not-authorized", "policy-violation", "recipient-unavailable", "redirect",
    "registration-required", "remote-server-not-found", "remote-server-timeout",
    "resource-constraint", "service-unavailable", "subscription-required",
    "undefined-condition", "unexpected-request")


def test_every_xmpp_condition_has_a_sip_status() -> None:
    assert set(XMPP_TO_SIP) == set(RFC6120_CONDITIONS)
    assert all(300 <= sip_status_for(c) <= 699 for c in RFC6120_CONDITIONS)
    assert sip_status_for("no-such-condition") == 400


@pytest.mark.parametrize(("condition", "status"), [
    ("item-not-found", 404), ("forbidden", 403), ("not-allowed", 403),
    ("service-unavailable", 503), ("recipient-unavailable", 480),
    ("remote-server-timeout", 408), ("remote-server-not-found", 404)])
def test_xmpp_to_sip_pairs(condition: str, status: int) -> None:
    assert sip_status_for(condition) == status


@pytest.mark.parametrize(("status", "condition"), [
    (404, "item-not-found"), (480, "recipient-unavailable"), (486, "recipient-unavailable"),
    (408, "remote-server-timeout"), (503, "service-unavailable"),
    (603, "service-unavailable"), (302, "redirect"), (399, "redirect"),
    (499, "bad-request"), (599, "internal-server-error"), (699, "service-unavailable")])
def test_sip_to_xmpp_pairs_and_class_fallback(status: int, condition: str) -> None:
    assert xmpp_condition_for(status) == condition


def test_sip_table_conditions_are_real_conditions() -> None:
    assert set(SIP_TO_XMPP.values()) <= set(RFC6120_CONDITIONS)


@pytest.mark.parametrize(("condition", "error_type"), [
    ("recipient-unavailable", "wait"), ("bad-request", "modify"), ("forbidden", "auth"),
    ("item-not-found", "cancel"), ("service-unavailable", "cancel")])
def test_error_types(condition: str, error_type: str) -> None:
    """The SIP side's errors use the gateway's one condition → type table."""
    assert STANZA_CONDITION_TYPES[condition] == error_type
    assert error_child(condition).get("type") == error_type


@pytest.mark.parametrize("encoding", ["base64", "rot13", "x-unknown", "utf-7", "utf-32",
                                      "idna", "punycode"])
def test_a_declared_encoding_expat_cannot_use_is_the_documents_fault(encoding: str) -> None:
    """pyexpat looks a declared encoding up among Python's codecs, and raises LookupError
    or ValueError (not ExpatError) for one it cannot use: still a PidfError, since a
    phone publishes the document and the presence server passes it on."""
    document = (f'<?xml version="1.0" encoding="{encoding}"?><presence xmlns="urn:ietf:'
                'params:xml:ns:pidf"><tuple id="t"><status><basic>open</basic></status>'
                "<note>d\u00e9j\u00e0 vu</note></tuple></presence>").encode()
    with pytest.raises(PidfError):
        parse_pidf(document)
    assert parse_pidf(document.replace(encoding.encode(), b"UTF-8")).available
