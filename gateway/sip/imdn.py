"""Instant Message Disposition Notifications, ``message/imdn+xml`` (RFC 5438 §7), sans-I/O.

What a phone sends when a message it was asked about was delivered or displayed, and what
the gateway sends for an XMPP receipt (XEP-0184) or displayed marker (XEP-0333)::

    <imdn xmlns="urn:ietf:params:xml:ns:imdn">
      <message-id>34jk324j</message-id>            the imdn.Message-ID (or, from
      <datetime>2026-12-04T18:00:00Z</datetime>      Linphone's basic chat, the Call-ID)
      <recipient-uri>sip:bob@fabrikam.example</recipient-uri>
      <delivery-notification><status><delivered/></status></delivery-notification>
    </imdn>

:func:`parse_imdn` is total (an :class:`Imdn` or :class:`ImdnError`); :func:`build_imdn`
writes only valid XML 1.0 (text is escaped, characters XML cannot carry are replaced).
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape

from gateway.sip.xmldoc import XmlDocumentError, child_text, parse_document, xml_text

IMDN_TYPE = "message/imdn+xml"
NS = "urn:ietf:params:xml:ns:imdn"
# RFC 5438 §7.2.1.1-3: the notification kinds and the statuses each may carry
STATUSES = {
    "delivery": ("delivered", "failed", "forbidden", "error"),
    "display": ("displayed", "forbidden", "error"),
    "processing": ("processed", "stored", "forbidden", "error"),
}


class ImdnError(ValueError):
    """A body that is not an IMDN document we can read."""


@dataclass(frozen=True, slots=True)
class Imdn:
    message_id: str
    kind: str  # "delivery" | "display" | "processing"
    status: str  # one of STATUSES[kind]
    datetime: str = ""  # as sent (RFC 3339), the original message's DateTime
    recipient_uri: str = ""
    original_recipient_uri: str = ""

    @property
    def positive(self) -> bool:
        return self.status in ("delivered", "displayed", "processed", "stored")


def parse_imdn(body: bytes) -> Imdn:
    try:
        root = parse_document(body)
    except XmlDocumentError as exc:
        raise ImdnError(str(exc)) from None
    if root.tag != f"{{{NS}}}imdn":
        raise ImdnError(f"root element is {root.tag}, not imdn")
    message_id = child_text(root, f"{{{NS}}}message-id")
    if not message_id:
        raise ImdnError("IMDN without <message-id/>")
    for kind, statuses in STATUSES.items():
        notification = root.find(f"{{{NS}}}{kind}-notification")
        if notification is None:
            continue
        status = notification.find(f"{{{NS}}}status")
        if status is None or len(status) == 0:
            raise ImdnError(f"<{kind}-notification/> without a status")
        name = status[0].tag.rpartition("}")[2]
        if name not in statuses:
            raise ImdnError(f"<{name}/> is not a {kind} status")
        return Imdn(message_id, kind, name, child_text(root, f"{{{NS}}}datetime") or "",
                    child_text(root, f"{{{NS}}}recipient-uri") or "",
                    child_text(root, f"{{{NS}}}original-recipient-uri") or "")
    raise ImdnError("IMDN without a delivery, display or processing notification")


def build_imdn(notice: Imdn) -> bytes:
    if notice.kind not in STATUSES or notice.status not in STATUSES[notice.kind]:
        raise ImdnError(f"{notice.status!r} is not a {notice.kind!r} status")
    if not notice.message_id:
        raise ImdnError("an IMDN needs the message's id")

    def element(name: str, value: str) -> str:
        # a CR would read back as LF (XML 1.0 §2.11): written as a character reference
        return f"<{name}>{escape(xml_text(value), {chr(13): '&#13;'})}</{name}>" if value else ""

    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<imdn xmlns="{NS}">'
        + element("message-id", notice.message_id)
        + element("datetime", notice.datetime)
        + element("recipient-uri", notice.recipient_uri)
        + element("original-recipient-uri", notice.original_recipient_uri)
        + f"<{notice.kind}-notification><status><{notice.status}/></status>"
          f"</{notice.kind}-notification></imdn>"
    ).encode("utf-8")
