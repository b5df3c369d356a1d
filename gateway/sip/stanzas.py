"""The few XMPP stanzas the SIP side builds (RFC 6120 §8, RFC 6121 §3-4)."""

from __future__ import annotations

from xml.etree.ElementTree import Element, SubElement

from gateway.xmpp.errors import parse_error_child

NS = "jabber:server"
MESSAGE = f"{{{NS}}}message"
PRESENCE = f"{{{NS}}}presence"
IQ = f"{{{NS}}}iq"
BODY = f"{{{NS}}}body"


def chat_message(sender: str, recipient: str, text: str, stanza_id: str) -> Element:
    stanza = Element(MESSAGE, {"from": sender, "to": recipient, "type": "chat",
                               "id": stanza_id})
    SubElement(stanza, BODY).text = text
    return stanza


def presence(sender: str, recipient: str, kind: str) -> Element:
    """A presence stanza of ``type`` ``kind`` (subscribe, subscribed, unsubscribed …)."""
    return Element(PRESENCE, {"from": sender, "to": recipient, "type": kind})


def error_condition(stanza: Element) -> str:
    """The defined condition of an error stanza (RFC 6120 §8.3.3)."""
    return parse_error_child(stanza)[0] or "undefined-condition"
