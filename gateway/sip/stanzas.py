"""The XMPP stanzas the SIP side reads and builds (RFC 6120 §8, RFC 6121 §5): messages with
their bodies, subject and thread, and the extensions chat clients send along — chat
states (XEP-0085), receipts (XEP-0184), chat markers (XEP-0333), delayed delivery
(XEP-0203), XHTML-IM (XEP-0071).

:func:`read_message` takes what :mod:`gateway.sip.messaging` maps out of a stanza (and
what it cannot: :attr:`MessageParts.unmapped`); :func:`chat_message` builds the stanza
for a SIP user's message. Whether its text can be written at all (XML 1.0 characters) is
checked once the stanza is built (:func:`gateway.sip.messaging.valid_for_xmpp`: a 400 naming
the character, not an altered message).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.etree.ElementTree import Element, SubElement

from gateway.xmpp.errors import parse_error_child
from gateway.xmpp.xml import PreparedStanza, escape_attr, escape_text

NS = "jabber:server"
MESSAGE = f"{{{NS}}}message"
PRESENCE = f"{{{NS}}}presence"
IQ = f"{{{NS}}}iq"
BODY = f"{{{NS}}}body"
SUBJECT = f"{{{NS}}}subject"
THREAD = f"{{{NS}}}thread"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
NS_RECEIPTS = "urn:xmpp:receipts"
NS_MARKERS = "urn:xmpp:chat-markers:0"
NS_DELAY = "urn:xmpp:delay"
NS_XHTML_IM = "http://jabber.org/protocol/xhtml-im"
CHAT_STATES = ("active", "composing", "paused", "inactive", "gone")
# Payloads that say nothing a SIP user would miss (hints to servers, ids, our own echo):
# not counted as "could not cross".
_IGNORED = frozenset({NS, NS_XHTML_IM, "urn:xmpp:hints", "urn:xmpp:sid:0", NS_DELAY,
                      "http://jabber.org/protocol/address", "urn:xmpp:carbons:2"})


@dataclass(slots=True)
class MessageParts:
    """What one XMPP ``<message/>`` says, as far as SIP can carry it."""

    bodies: list[tuple[str, str]] = field(default_factory=list)  # (xml:lang or "", text)
    subjects: list[tuple[str, str]] = field(default_factory=list)
    thread: str = ""
    language: str = ""  # the stanza's xml:lang
    chat_state: str = ""
    receipt_request: bool = False  # XEP-0184 <request/>
    markable: bool = False  # XEP-0333 <markable/>
    received: str = ""  # id of a XEP-0184 <received/> (or a XEP-0333 received marker)
    displayed: str = ""  # id of a XEP-0333 <displayed/>
    unmapped: list[str] = field(default_factory=list)  # "namespace element" of the rest

    @property
    def body(self) -> str | None:
        """The body in the stanza's own language (RFC 6120 §8.1.5 default), else the first."""
        for language, text in self.bodies:
            if not language or language == self.language:
                return text
        return self.bodies[0][1] if self.bodies else None

    @property
    def subject(self) -> str:
        for language, text in self.subjects:
            if not language or language == self.language:
                return text
        return self.subjects[0][1] if self.subjects else ""


def read_message(stanza: Element) -> MessageParts:
    parts = MessageParts(language=stanza.get(XML_LANG, ""))
    for child in stanza:
        tag = child.tag
        namespace, _, name = tag[1:].partition("}") if tag[:1] == "{" else ("", "", tag)
        if tag == BODY:
            parts.bodies.append((child.get(XML_LANG, ""), child.text or ""))
        elif tag == SUBJECT:
            parts.subjects.append((child.get(XML_LANG, ""), child.text or ""))
        elif tag == THREAD:
            parts.thread = (child.text or "").strip()
        elif namespace == NS_CHATSTATES and name in CHAT_STATES:
            parts.chat_state = name
        elif namespace == NS_RECEIPTS and name == "request":
            parts.receipt_request = True
        elif namespace == NS_RECEIPTS and name == "received" and child.get("id"):
            parts.received = child.get("id", "")
        elif namespace == NS_MARKERS and name == "markable":
            parts.markable = True
        elif namespace == NS_MARKERS and name == "displayed" and child.get("id"):
            parts.displayed = child.get("id", "")
        elif namespace == NS_MARKERS and name == "received" and child.get("id"):
            parts.received = parts.received or child.get("id", "")
        elif namespace not in _IGNORED:
            parts.unmapped.append(f"{namespace} {name}".strip())
    return parts


def chat_message(sender: str, recipient: str, text: str | None, stanza_id: str, *,
                 bodies: list[tuple[str, str]] | None = None, language: str = "",
                 subject: str = "", thread: str = "", chat_state: str = "",
                 request_receipt: bool = False, markable: bool = False,
                 xhtml: Element | None = None, delay: str = "",
                 delay_from: str = "") -> Element:
    """A ``type='chat'`` message from a SIP user. ``text`` is the body in ``language``;
    ``bodies`` adds (language, text) bodies for other languages."""
    attributes = {"from": sender, "to": recipient, "type": "chat", "id": stanza_id}
    if language:
        attributes[XML_LANG] = language
    stanza = Element(MESSAGE, attributes)
    if subject:
        SubElement(stanza, SUBJECT).text = subject
    if text is not None:
        SubElement(stanza, BODY).text = text
    for body_language, body_text in bodies or ():
        attributes = {XML_LANG: body_language} if body_language else {}
        SubElement(stanza, BODY, attributes).text = body_text
    if thread:
        SubElement(stanza, THREAD).text = thread
    if chat_state:
        SubElement(stanza, f"{{{NS_CHATSTATES}}}{chat_state}")
    if request_receipt:
        SubElement(stanza, f"{{{NS_RECEIPTS}}}request")
    if markable:
        SubElement(stanza, f"{{{NS_MARKERS}}}markable")
    if xhtml is not None:
        stanza.append(xhtml)
    if delay:
        SubElement(stanza, f"{{{NS_DELAY}}}delay", {"stamp": delay, "from": delay_from}
                   if delay_from else {"stamp": delay})
    return stanza


def text_message(sender: str, recipient: str, text: str, stanza_id: str, *,
                 language: str = "", subject: str = "", thread: str = "",
                 active: bool = False) -> PreparedStanza:
    """:func:`chat_message` for a plain text message (one body, no receipt request, no
    XHTML, no delay; ``active``: an XEP-0085 ``<active/>``), built with its wire form
    (:class:`gateway.xmpp.xml.PreparedStanza`): the stanza of almost every message a SIP
    user sends, written once from these strings instead of by walking the tree again."""
    attributes = {"from": sender, "to": recipient, "type": "chat", "id": stanza_id}
    head = (f'<message from="{escape_attr(sender)}" to="{escape_attr(recipient)}" '
            f'type="chat" id="{escape_attr(stanza_id)}"')
    if language:
        attributes[XML_LANG] = language
        head += f' xml:lang="{escape_attr(language)}"'
    parts = [head, ">"]
    if subject:
        parts.append(f"<subject>{escape_text(subject)}</subject>")
    parts.append(f"<body>{escape_text(text)}</body>" if text else "<body/>")
    if thread:
        parts.append(f"<thread>{escape_text(thread)}</thread>")
    if active:
        parts.append(_ACTIVE_WIRE)
    parts.append("</message>")
    # The same tree as chat_message builds, built here: going through chat_message (its
    # keyword arguments and the branches this shape never takes) cost about 0.7 µs more
    # per message (``python -m bench.tools.sip_micro from-sip``: 20.6-21.1 against
    # 19.9-20.4, six runs each); the property tests hold the two to the same tree.
    stanza = PreparedStanza(MESSAGE, attributes, "".join(parts).encode())
    if subject:
        SubElement(stanza, SUBJECT).text = subject
    SubElement(stanza, BODY).text = text
    if thread:
        SubElement(stanza, THREAD).text = thread
    if active:
        SubElement(stanza, f"{{{NS_CHATSTATES}}}active")
    return stanza


_ACTIVE_WIRE = f'<active xmlns="{NS_CHATSTATES}"/>'


def chat_state(sender: str, recipient: str, state: str, stanza_id: str) -> Element:
    """A bodiless message carrying only a chat state (XEP-0085 §5.5)."""
    stanza = Element(MESSAGE, {"from": sender, "to": recipient, "type": "chat",
                               "id": stanza_id})
    SubElement(stanza, f"{{{NS_CHATSTATES}}}{state}")
    return stanza


def receipt(sender: str, recipient: str, acknowledged_id: str, stanza_id: str, *,
            displayed: bool) -> Element:
    """An XEP-0184 ``<received/>`` (delivered) or XEP-0333 ``<displayed/>`` for the
    message with id ``acknowledged_id``."""
    stanza = Element(MESSAGE, {"from": sender, "to": recipient, "type": "chat",
                               "id": stanza_id})
    namespace = NS_MARKERS if displayed else NS_RECEIPTS
    SubElement(stanza, f"{{{namespace}}}{'displayed' if displayed else 'received'}",
               {"id": acknowledged_id})
    return stanza


def presence(sender: str, recipient: str, kind: str) -> Element:
    """A presence stanza of ``type`` ``kind`` (subscribe, subscribed, unsubscribed …)."""
    return Element(PRESENCE, {"from": sender, "to": recipient, "type": kind})


def error_condition(stanza: Element) -> str:
    """The defined condition of an error stanza (RFC 6120 §8.3.3)."""
    return parse_error_child(stanza)[0] or "undefined-condition"
