"""Error replies for stanzas the gateway cannot deliver, and the drops where nobody can be
told: one place for what used to be three copies.

A stanza is delivered, or its sender gets an error (RFC 6120 §8.3) — toward XMPP for a
remote sender (through the S2S service), toward the backend for a local one. What is
left are the cases RFC 6120 §8.3.1 makes silent (never answer an error with an error)
and errors nobody can receive; those are counted in :class:`gateway.drops.DropCounter`.
"""

from __future__ import annotations

import logging
from xml.etree.ElementTree import Element

from gateway.backend import DeliveryError, LocalBackend
from gateway.drops import DropCounter
from gateway.logs import log_event
from gateway.xmpp.errors import make_error_reply

log = logging.getLogger("gateway.router")

# RFC 6120 §8.3.3: the usual type of each condition the gateway generates itself.
_WAIT = frozenset({"remote-server-timeout", "resource-constraint", "internal-server-error"})
_MODIFY = frozenset({"bad-request", "jid-malformed"})


def error_type_for(condition: str) -> str:
    if condition in _WAIT:
        return "wait"
    if condition in _MODIFY:
        return "modify"
    return "cancel"


class ErrorReplies:
    """Makes error replies and delivers those for local users; counts what cannot be."""

    def __init__(self, backend: LocalBackend, drops: DropCounter) -> None:
        self.backend = backend
        self.drops = drops

    def reply(self, stanza: Element, condition: str, text: str, *, direction: str,
              error_type: str | None = None) -> Element | None:
        """The error reply to ``stanza``, or None (counted) when an error may not be
        answered (RFC 6120 §8.3.1)."""
        reply = make_error_reply(stanza, condition, text, error_type or error_type_for(condition))
        if reply is None:
            self.drops.record("error-not-deliverable", direction=direction,
                              sender=stanza.get("from"), recipient=stanza.get("to"),
                              condition=condition, text=text)
        return reply

    async def to_local(self, reply: Element, condition: str, text: str, *,
                       bounced: bool = False) -> None:
        """Hand an error reply to the local sender (``bounced``: the S2S service could
        not deliver the original, which is logged)."""
        try:
            await self.backend.deliver(reply)
        except DeliveryError as exc:
            self.drops.record("bounce-not-deliverable", direction="outbound",
                              recipient=reply.get("to"), condition=condition, text=text,
                              backend_error=exc.condition)
            return
        if bounced:
            log_event(log, logging.INFO, "s2s.bounced", to=reply.get("to"),
                      condition=condition, text=text)
