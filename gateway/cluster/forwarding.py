"""Presence between the nodes of a cluster, and the store's change notifications.

A partner sends all its presence over its one stream to this domain, to whichever node
its SRV choice gave, while a SIP user's SUBSCRIBE to that contact was dispatched by the
proxy to any node (RFC 6665 notifier state lives there). So inbound availability and
the answers to a SIP user's subscription (``FORWARDED_PRESENCE``) are also published to
the other nodes through the shared store; a node routes what it receives only if its
SIP side holds a subscription of the addressee to the sender. ``subscribe``,
``unsubscribe`` and ``probe`` are not forwarded: they create or end XMPP→SIP watches,
which the node receiving them takes on (the store records the new owner and the previous
holder ends its dialog, see :mod:`gateway.cluster.member`).

Order between one sender and one recipient holds across nodes: messages are handed to
the store's single worker thread in arrival order and PostgreSQL delivers notifications
in commit order, to one listener thread that hands them to the event loop in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Protocol
from xml.etree.ElementTree import Element, ParseError, fromstring, tostring

from gateway.backend import SipSide
from gateway.contracts import OnSettled, RouterForS2S
from gateway.logs import log_event
from gateway.store.protocols import AsyncChangeFeed
from gateway.xmpp.jid import JidError, bare_jid

log = logging.getLogger("gateway.cluster")

PRESENCE_TOPIC = "presence"
# Availability and the answers to a SIP user's subscription; "" is available presence.
FORWARDED_PRESENCE = frozenset({"", "unavailable", "subscribed", "unsubscribed"})
PRESENCE = "{jabber:server}presence"
SWITCHES_TABLE = "user_settings"


class PresenceForwarding:
    """Stands between the S2S service and the router on a node of a cluster (it is a
    :class:`~gateway.contracts.RouterForS2S`): routes every inbound stanza here and
    publishes the presence other nodes may need."""

    def __init__(self, router: RouterForS2S, feed: AsyncChangeFeed, backend: SipSide,
                 node_id: str) -> None:
        self.router = router
        self.feed = feed
        self.backend = backend
        self.node_id = node_id

    # ------------------------------------------------------------------ RouterForS2S

    def from_xmpp(self, stanza: Element, remote: str, local: str,
                  on_settled: OnSettled = None) -> None:
        self.router.from_xmpp(stanza, remote, local, on_settled)
        if stanza.tag == PRESENCE and stanza.get("type", "") in FORWARDED_PRESENCE:
            payload = json.dumps({"node": self.node_id, "remote": remote, "local": local,
                                  "xml": tostring(stanza, encoding="unicode")})
            self.feed.publish_in_order(PRESENCE_TOPIC, payload, self._not_forwarded)

    def bounce(self, stanza: Element, condition: str, text: str,
               on_settled: OnSettled = None) -> None:
        self.router.bounce(stanza, condition, text, on_settled)

    def s2s_congestion(self, domain: str, congested: bool) -> None:
        self.router.s2s_congestion(domain, congested)

    # ------------------------------------------------------------------ other nodes

    def _not_forwarded(self, error: BaseException) -> None:
        log_event(log, logging.WARNING, "cluster.presence_not_forwarded", node=self.node_id,
                  reason=str(error))

    def from_peer_node(self, payload: str) -> None:
        """Presence another node received: route it here if our SIP side holds a
        subscription of the addressee to the sender (else it is not ours)."""
        try:
            message = json.loads(payload)
            if message.get("node") == self.node_id:
                return
            stanza = fromstring(message["xml"])
            sip_user, contact = bare_jid(stanza.get("to", "")), bare_jid(stanza.get("from", ""))
            remote, local = str(message["remote"]), str(message["local"])
        except (ValueError, KeyError, TypeError, AttributeError, ParseError,
                JidError) as exc:
            log_event(log, logging.WARNING, "cluster.bad_forwarded_presence",
                      node=self.node_id, reason=str(exc))
            return
        if self.backend.is_watching(sip_user, contact):
            self.router.from_xmpp(stanza, remote, local)


class SwitchForgetter(Protocol):
    """What the router must hear of: a user switch changed elsewhere."""

    def forget_cached(self, local_user: str = "") -> None: ...


def listen_for_changes(feed: AsyncChangeFeed, router: SwitchForgetter,
                       forwarding: PresenceForwarding | None) -> None:
    """Another node (or the CLI) changed a user switch: the router drops its snapshot
    at once instead of after its lifetime (PostgreSQL LISTEN/NOTIFY). Authorizations
    are not cached, so they need nothing. Presence from other nodes goes to
    ``forwarding``. The listener runs in the store's thread: it only hands over."""
    loop = asyncio.get_running_loop()

    def changed(table: str, key: str) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            if table in (SWITCHES_TABLE, ""):
                loop.call_soon_threadsafe(router.forget_cached, key)
            elif table == PRESENCE_TOPIC and forwarding is not None:
                loop.call_soon_threadsafe(forwarding.from_peer_node, key)

    feed.on_change(changed)
