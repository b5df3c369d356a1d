"""Message composition indication, ``application/im-iscomposing+xml`` (RFC 3994 §6),
sans-I/O: the "is typing" of SIP phones (Linphone sends it while its user types)::

    <isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing">
      <state>active</state>                  active (typing) or idle (RFC 3994 §3)
      <contenttype>text/plain</contenttype>
      <refresh>90</refresh>                  seconds until the receiver times "active" out
    </isComposing>

An ``active`` state without a refresh times out after :data:`DEFAULT_ACTIVE_TIMEOUT`
(120 s, RFC 3994 §4); the sender refreshes before then while the user is still typing.
:func:`parse_is_composing` is total (an :class:`IsComposing` or
:class:`IsComposingError`).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.sip.mime import decimal
from gateway.sip.xmldoc import XmlDocumentError, child_text, parse_document

IS_COMPOSING_TYPE = "application/im-iscomposing+xml"
NS = "urn:ietf:params:xml:ns:im-iscomposing"
DEFAULT_ACTIVE_TIMEOUT = 120  # RFC 3994 §4: active without <refresh/> ends after this
MIN_REFRESH = 60  # RFC 3994 §4: refresh intervals shorter than this are not sent


class IsComposingError(ValueError):
    """A body that is not an isComposing document we can read."""


@dataclass(frozen=True, slots=True)
class IsComposing:
    active: bool
    refresh: int = 0  # seconds, 0 when absent
    last_active: str = ""  # RFC 3339, as sent
    content_type: str = ""

    @property
    def timeout(self) -> int:
        """Seconds after which an ``active`` indication no longer holds (RFC 3994 §4)."""
        return self.refresh or DEFAULT_ACTIVE_TIMEOUT


def parse_is_composing(body: bytes) -> IsComposing:
    try:
        root = parse_document(body)
    except XmlDocumentError as exc:
        raise IsComposingError(str(exc)) from None
    if root.tag != f"{{{NS}}}isComposing":
        raise IsComposingError(f"root element is {root.tag}, not isComposing")
    state = (child_text(root, f"{{{NS}}}state") or "").lower()
    if state not in ("active", "idle"):
        raise IsComposingError(f"isComposing state {state[:20]!r} is neither active nor idle")
    # RFC 3994 §4: a refresh that is not a number is as good as none (the default timeout)
    refresh = decimal(child_text(root, f"{{{NS}}}refresh") or "", 6) or 0
    return IsComposing(state == "active", refresh,
                       child_text(root, f"{{{NS}}}lastactive") or "",
                       child_text(root, f"{{{NS}}}contenttype") or "")


def build_is_composing(active: bool, *, refresh: int = 0, last_active: str = "",
                       content_type: str = "text/plain") -> bytes:
    parts = [f"<state>{'active' if active else 'idle'}</state>"]
    if last_active and not active:
        parts.append(f"<lastactive>{last_active}</lastactive>")
    parts.append(f"<contenttype>{content_type}</contenttype>")
    if active and refresh:
        parts.append(f"<refresh>{max(MIN_REFRESH, refresh)}</refresh>")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<isComposing xmlns="{NS}">{"".join(parts)}</isComposing>').encode()
