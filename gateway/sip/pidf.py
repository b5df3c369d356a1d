"""Presence documents: XMPP ``<presence/>`` ↔ PIDF (RFC 3863) with RPID (RFC 4480),
as RFC 7248 §7 (presence notifications) maps them.

* availability: XMPP available ↔ a tuple with ``<basic>open</basic>``; unavailable ↔
  ``closed`` (RFC 7248 §7.2, §7.3);
* ``<show/>``: ``away``/``xa`` ↔ RPID ``<rpid:away/>``, ``dnd`` ↔ ``<rpid:busy/>``;
  ``chat`` has no RPID activity and maps to plain ``open``. From SIP,
  ``on-the-phone``/``meeting``/``busy`` read as ``dnd``, ``vacation``/``sleeping`` as
  ``xa``, ``away``/``meal``/``appointment`` as ``away``;
* ``<status/>`` text ↔ PIDF ``<note>`` (the router has already removed it where the
  contact rules say the partner may not see it).

PIDF bodies come from the network: they are parsed by expat with no DTD allowed (so no
entities), bounded by the SIP body limit, and anything unreadable counts as "closed".
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree.ElementTree import Element, SubElement
from xml.parsers import expat
from xml.sax.saxutils import escape, quoteattr

NS_PIDF = "urn:ietf:params:xml:ns:pidf"
NS_RPID = "urn:ietf:params:xml:ns:pidf:rpid"
NS_DM = "urn:ietf:params:xml:ns:pidf:data-model"
NS_CLIENT = "jabber:server"
PIDF_TYPE = "application/pidf+xml"

_SHOW_TO_ACTIVITY = {"away": "away", "xa": "away", "dnd": "busy"}
_ACTIVITY_TO_SHOW = {
    "busy": "dnd", "on-the-phone": "dnd", "meeting": "dnd", "performance": "dnd",
    "presentation": "dnd", "away": "away", "meal": "away", "appointment": "away",
    "vacation": "xa", "sleeping": "xa", "holiday": "xa",
}


class PidfError(ValueError):
    """A presence document we cannot read."""


@dataclass(frozen=True, slots=True)
class PresenceState:
    available: bool
    show: str = ""  # "", "away", "xa", "dnd", "chat" (RFC 6121 §4.7.2.1)
    note: str = ""

    @classmethod
    def from_stanza(cls, stanza: Element) -> PresenceState:
        if stanza.get("type") == "unavailable":
            return cls(False, "", stanza.findtext(f"{{{NS_CLIENT}}}status") or "")
        show = (stanza.findtext(f"{{{NS_CLIENT}}}show") or "").strip()
        if show not in ("away", "xa", "dnd", "chat"):
            show = ""
        return cls(True, show, stanza.findtext(f"{{{NS_CLIENT}}}status") or "")

    def to_stanza(self, sender: str, recipient: str) -> Element:
        stanza = Element(f"{{{NS_CLIENT}}}presence", {"from": sender, "to": recipient})
        if not self.available:
            stanza.set("type", "unavailable")
        elif self.show:
            SubElement(stanza, f"{{{NS_CLIENT}}}show").text = self.show
        if self.note:
            SubElement(stanza, f"{{{NS_CLIENT}}}status").text = self.note
        return stanza


UNAVAILABLE = PresenceState(False)


def to_pidf(entity: str, state: PresenceState, tuple_id: str = "xmpp") -> bytes:
    """A PIDF document for ``entity`` (an AOR like ``bob@fabrikam.example``)."""
    basic = "open" if state.available else "closed"
    activity = _SHOW_TO_ACTIVITY.get(state.show, "") if state.available else ""
    person = ""
    if activity:
        person = (f'<dm:person id="p-{escape(tuple_id)}"><rpid:activities>'
                  f"<rpid:{activity}/></rpid:activities></dm:person>")
    note = f"<note>{escape(state.note)}</note>" if state.note else ""
    document = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<presence xmlns="{NS_PIDF}" xmlns:dm="{NS_DM}" xmlns:rpid="{NS_RPID}" '
        f"entity={quoteattr('pres:' + entity)}>"
        f'<tuple id={quoteattr(tuple_id)}><status><basic>{basic}</basic></status>{note}</tuple>'
        f"{person}</presence>"
    )
    return document.encode("utf-8")


class _Reader:
    """Collects what we map from a PIDF document; expat callbacks, no tree kept."""

    def __init__(self) -> None:
        self.path: list[str] = []
        self.text: list[str] = []
        self.basics: list[str] = []
        self.notes: list[str] = []
        self.activities: list[str] = []

    def start(self, name: str, _attrs: dict[str, str]) -> None:
        if len(self.path) > 32:
            raise PidfError("PIDF nested too deeply")
        if self.path and self.path[-1] == f"{NS_RPID}}}activities":
            self.activities.append(name.rpartition("}")[2])
        self.path.append(name)
        self.text = []

    def end(self, name: str) -> None:
        self.path.pop()
        value = "".join(self.text).strip()
        if name == f"{NS_PIDF}}}basic":
            self.basics.append(value.lower())
        elif name == f"{NS_PIDF}}}note" and value:
            self.notes.append(value)
        self.text = []

    def data(self, text: str) -> None:
        self.text.append(text)


def _refuse_dtd(*_args: object) -> None:
    raise PidfError("PIDF document has a DTD (refused: no entities allowed)")


def parse_pidf(body: bytes) -> PresenceState:
    """The aggregated state a PIDF document describes: available if any tuple is open
    (RFC 3863 §4.1.4), ``show`` from the first RPID activity we know, the first note."""
    if not body.strip():
        return UNAVAILABLE
    reader = _Reader()
    parser = expat.ParserCreate(namespace_separator="}")
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    parser.ProcessingInstructionHandler = None
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    parser.CharacterDataHandler = reader.data
    try:
        parser.Parse(body, True)
    except expat.ExpatError as exc:
        raise PidfError(f"PIDF document is not well-formed XML: {exc}") from None
    if not reader.basics and not reader.activities:
        raise PidfError("PIDF document has no <basic/> status")
    available = "open" in reader.basics or (not reader.basics and bool(reader.activities))
    show = ""
    if available:
        for activity in reader.activities:
            if activity in _ACTIVITY_TO_SHOW:
                show = _ACTIVITY_TO_SHOW[activity]
                break
    return PresenceState(available, show, reader.notes[0] if reader.notes else "")
