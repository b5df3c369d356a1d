"""Presence documents: XMPP ``<presence/>`` ↔ PIDF (RFC 3863) with RPID (RFC 4480),
as RFC 8048 §6 (notifications of presence information) maps them.

* availability: XMPP available ↔ a tuple with ``<basic>open</basic>``; unavailable ↔
  ``closed``; toward SIP one tuple per available XMPP resource (:func:`to_pidf`); from
  SIP the tuples are aggregated (:func:`parse_pidf`);
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

import hashlib
from collections.abc import Mapping
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


# How available each <show/> is, most first (RFC 6121 §4.7.2.1): the order in which
# resources are listed, and which one the person-level activity describes.
SHOW_RANK = {"chat": 0, "": 1, "away": 2, "xa": 3, "dnd": 4}


def most_available(resources: Mapping[str, PresenceState]) -> list[tuple[str, PresenceState]]:
    """The available resources, most available first (ties: the order they came in)."""
    available = [(name, state) for name, state in resources.items() if state.available]
    return sorted(available, key=lambda item: SHOW_RANK.get(item[1].show, 5))


def _tuple_id(resource: str) -> str:
    """A PIDF tuple id (an XML ``ID``, RFC 3863 §4.1.2) for an XMPP resource: the same
    resource keeps its tuple id across notifications, whatever characters it has."""
    return "r" + hashlib.blake2s(resource.encode("utf-8"), digest_size=5).hexdigest()


def to_pidf(entity: str, state: PresenceState | Mapping[str, PresenceState],
            tuple_id: str = "xmpp") -> bytes:
    """A PIDF document for ``entity`` (an AOR like ``bob@fabrikam.example``).

    Given one state, one tuple (``tuple_id``). Given the contact's resources (XMPP
    resource → presence), one tuple per available resource, most available first, each
    with its own ``<basic>open</basic>`` and ``<note>`` (a PIDF tuple is one point of
    contact of the presentity, RFC 3863 §3.1; an XMPP resource is one), and one person
    element whose RPID activity is the most
    available resource's (RFC 4480 activities describe the person, not a device). No
    available resource: a single closed tuple. A watcher that reads only the first tuple
    therefore sees the most available resource."""
    if isinstance(state, PresenceState):
        tuples = [(tuple_id, state)]
    else:
        tuples = [(_tuple_id(name), value) for name, value in most_available(state)]
        if not tuples:
            tuples = [(tuple_id, UNAVAILABLE)]
    lead = tuples[0][1]
    activity = _SHOW_TO_ACTIVITY.get(lead.show, "") if lead.available else ""
    person = ""
    if activity:
        person = (f'<dm:person id="p-{escape(tuples[0][0])}"><rpid:activities>'
                  f"<rpid:{activity}/></rpid:activities></dm:person>")
    body = "".join(
        f"<tuple id={quoteattr(ident)}><status><basic>"
        f"{'open' if value.available else 'closed'}</basic></status>"
        f"{f'<note>{escape(value.note)}</note>' if value.note else ''}</tuple>"
        for ident, value in tuples)
    document = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<presence xmlns="{NS_PIDF}" xmlns:dm="{NS_DM}" xmlns:rpid="{NS_RPID}" '
        f"entity={quoteattr('pres:' + entity)}>{body}{person}</presence>"
    )
    return document.encode("utf-8")


class _Reader:
    """Collects what we map from a PIDF document; expat callbacks, no tree kept."""

    def __init__(self) -> None:
        self.path: list[str] = []
        self.text: list[str] = []
        self.basics: list[str] = []
        self.notes: list[str] = []
        self.open_notes: list[str] = []  # notes of open tuples (one per SIP device)
        self.activities: list[str] = []
        self._tuple_basic = ""
        self._tuple_notes: list[str] = []

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
            self._tuple_basic = value.lower()
        elif name == f"{NS_PIDF}}}note" and value:
            self.notes.append(value)
            self._tuple_notes.append(value)
        elif name == f"{NS_PIDF}}}tuple":
            if self._tuple_basic == "open":
                self.open_notes.extend(self._tuple_notes)
            self._tuple_basic, self._tuple_notes = "", []
        self.text = []

    def data(self, text: str) -> None:
        self.text.append(text)


def _refuse_dtd(*_args: object) -> None:
    raise PidfError("PIDF document has a DTD (refused: no entities allowed)")


def parse_pidf(body: bytes) -> PresenceState:
    """The aggregated state a PIDF document describes, as one XMPP resource.

    A SIP user with several devices (registrations) publishes a tuple per device, and the
    presence server notifies them in one document. They are aggregated rather than shown
    as several XMPP resources because SIP gives no identity that stays the same across
    publications (tuple ids are the publisher's choice, and Kamailio's documents merge
    the publications it holds): a resource that changed name at every PUBLISH would look
    to XMPP like devices coming and going. The rule: available if any tuple is open
    (RFC 3863 §4.1.4), ``show`` from the first RPID activity we know, the note of the
    first open tuple (else the first note)."""
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
    except PidfError:
        raise
    except expat.ExpatError as exc:
        raise PidfError(f"PIDF document is not well-formed XML: {exc}") from None
    except (LookupError, ValueError) as exc:
        # a declared encoding pyexpat cannot use (it asks Python's codecs): LookupError
        # for "rot13" or "x-unknown", ValueError for multi-byte ones such as "utf-7"
        raise PidfError(f"PIDF document has an unusable encoding: {exc}") from None
    if not reader.basics and not reader.activities:
        raise PidfError("PIDF document has no <basic/> status")
    available = "open" in reader.basics or (not reader.basics and bool(reader.activities))
    show = ""
    if available:
        for activity in reader.activities:
            if activity in _ACTIVITY_TO_SHOW:
                show = _ACTIVITY_TO_SHOW[activity]
                break
    notes = (reader.open_notes if available else []) or reader.notes
    return PresenceState(available, show, notes[0] if notes else "")
