"""Errors as values with the RFC condition they map to.

Stream errors (RFC 6120 §4.9) end a stream; stanza errors (RFC 6120 §8.3) answer one
stanza; dialback errors (XEP-0220 §2.4) answer one domain pair and keep the stream.
The core raises/returns these; the core also turns them into bytes; ``net`` logs them.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element, SubElement

from gateway.xmpp.namespaces import NS_SERVER, NS_STANZAS, NS_STREAM_ERRORS, NS_STREAMS

# RFC 6120 §4.9.3 — the defined stream error conditions.
STREAM_CONDITIONS = frozenset(
    {
        "bad-format",
        "bad-namespace-prefix",
        "conflict",
        "connection-timeout",
        "host-gone",
        "host-unknown",
        "improper-addressing",
        "internal-server-error",
        "invalid-from",
        "invalid-namespace",
        "invalid-xml",
        "not-authorized",
        "not-well-formed",
        "policy-violation",
        "remote-connection-failed",
        "reset",
        "resource-constraint",
        "restricted-xml",
        "see-other-host",
        "system-shutdown",
        "undefined-condition",
        "unsupported-encoding",
        "unsupported-feature",
        "unsupported-stanza-type",
        "unsupported-version",
    }
)

# RFC 6120 §8.3.3 — stanza error conditions with their default error type.
STANZA_CONDITION_TYPES: dict[str, str] = {
    "bad-request": "modify",
    "conflict": "cancel",
    "feature-not-implemented": "cancel",
    "forbidden": "auth",
    "gone": "cancel",
    "internal-server-error": "cancel",
    "item-not-found": "cancel",
    "jid-malformed": "modify",
    "not-acceptable": "modify",
    "not-allowed": "cancel",
    "not-authorized": "auth",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "redirect": "modify",
    "registration-required": "auth",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "subscription-required": "auth",
    "undefined-condition": "cancel",
    "unexpected-request": "wait",
}


class StreamError(Exception):
    """A condition that ends the stream (RFC 6120 §4.9)."""

    def __init__(self, condition: str, text: str = "") -> None:
        if condition not in STREAM_CONDITIONS:
            raise ValueError(f"not an RFC 6120 stream error condition: {condition}")
        super().__init__(f"<{condition}/>" + (f" {text}" if text else ""))
        self.condition = condition
        self.text = text

    def to_element(self) -> Element:
        error = Element(f"{{{NS_STREAMS}}}error")
        SubElement(error, f"{{{NS_STREAM_ERRORS}}}{self.condition}")
        if self.text:
            SubElement(error, f"{{{NS_STREAM_ERRORS}}}text").text = self.text
        return error


def parse_stream_error(element: Element) -> tuple[str, str]:
    """(condition, text) of a received ``<stream:error/>``; unknown → undefined-condition."""
    condition, text = "undefined-condition", ""
    for child in element:
        if not child.tag.startswith(f"{{{NS_STREAM_ERRORS}}}"):
            continue
        name = child.tag[len(NS_STREAM_ERRORS) + 2 :]
        if name == "text":
            text = (child.text or "").strip()
        else:
            condition = name
    return condition, text


def error_child(condition: str, error_type: str | None = None, text: str = "") -> Element:
    """``<error type=…><condition xmlns=stanzas/><text/></error>`` (RFC 6120 §8.3.2)."""
    error = Element(f"{{{NS_SERVER}}}error")
    error.set("type", error_type or STANZA_CONDITION_TYPES.get(condition, "cancel"))
    SubElement(error, f"{{{NS_STANZAS}}}{condition}")
    if text:
        SubElement(error, f"{{{NS_STANZAS}}}text").text = text
    return error


def parse_error_child(element: Element) -> tuple[str, str]:
    """(condition, text) of a stanza/dialback ``<error/>`` child; ("", "") when absent."""
    for error in element:
        if error.tag.rpartition("}")[2] != "error":
            continue
        condition, text = "undefined-condition", ""
        for child in error:
            if child.tag.startswith(f"{{{NS_STANZAS}}}"):
                name = child.tag[len(NS_STANZAS) + 2 :]
                if name == "text":
                    text = (child.text or "").strip()
                else:
                    condition = name
        return condition, text
    return "", ""


def make_error_reply(
    stanza: Element, condition: str, text: str = "", error_type: str | None = None
) -> Element | None:
    """The error reply to a stanza (RFC 6120 §8.3.1), or None when none may be sent.

    Never answer an error with an error (§8.3.1 rule 3): that is how loops start.
    The reply keeps the original payload so the sender can tell which stanza failed.
    """
    if stanza.get("type") == "error":
        return None
    reply = Element(stanza.tag, dict(stanza.attrib))
    reply.set("type", "error")
    if "from" in stanza.attrib:
        reply.set("to", stanza.attrib["from"])
    else:
        reply.attrib.pop("to", None)
    if "to" in stanza.attrib:
        reply.set("from", stanza.attrib["to"])
    else:
        reply.attrib.pop("from", None)
    for child in stanza:
        if child.tag.rpartition("}")[2] != "error":
            reply.append(child)
    reply.append(error_child(condition, error_type, text))
    return reply
