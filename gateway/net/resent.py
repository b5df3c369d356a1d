"""Stanzas sent again after a lost link: marked by the sender, recognised by the receiver.

A stanza a link left unacknowledged (XEP-0198) may in fact have been delivered: the
receiver handled it, and its acknowledgement died with the link. When it comes again it
must not be delivered twice. Prosody marks what it may send again with a delay
(XEP-0203) naming its own domain; the gateway does the same with what it re-sends
(:func:`mark`). When a stream-managed link ends, the receiving gateway node remembers
the (peer domain, sender, id) of the stanzas it had received on it and not yet
acknowledged — exactly what the peer will send again (:class:`RecentStanzas`) — and
drops, settled and counted, a marked stanza among them when it comes. Nothing is done
per stanza while no link has ended lately. This catches the link that died with the
node alive (the common case: a network hiccup, a peer restart); a stanza whose first
delivery was by a node that died with it is delivered twice and counted as re-sent by
the sender (docs/delivery.md).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from xml.etree.ElementTree import Element, SubElement

from gateway.xmpp.jid import JidError, domain_of

NS_DELAY = "urn:xmpp:delay"
TAG_DELAY = f"{{{NS_DELAY}}}delay"
REMEMBERED = 20_000  # stanzas remembered per node, the oldest forgotten first

Key = tuple[str, str, str]  # (peer domain, full 'from', 'id')


def mark(stanza: Element, by: str) -> None:
    """XEP-0203: say the stanza was held by ``by`` (once; Prosody does the same)."""
    if any(child.tag == TAG_DELAY and child.get("from") == by for child in stanza):
        return
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    SubElement(stanza, TAG_DELAY, {"from": by, "stamp": stamp})


def marked_by(stanza: Element, domain: str) -> bool:
    for child in stanza:
        if child.tag == TAG_DELAY:
            holder = child.get("from", "")
            if holder == domain:
                return True
            try:
                if domain_of(holder) == domain:  # a resource may hold '@' and '/' too
                    return True
            except JidError:
                continue
    return False


class RecentStanzas:
    """Stanzas (with an id) received on stream-managed links that ended before they were
    acknowledged: the ones their senders will send again. At most ``capacity``."""

    __slots__ = ("capacity", "duplicates", "keys")

    def __init__(self, capacity: int = REMEMBERED) -> None:
        # Empty (falsy) while no stream-managed link has ended lately: the receiving
        # path then only tests this dict (``if recent.keys``), per stanza.
        self.keys: OrderedDict[Key, None] = OrderedDict()
        self.capacity = capacity
        self.duplicates = 0


    @staticmethod
    def key(stanza: Element, remote: str) -> Key | None:
        stanza_id = stanza.get("id")
        return (remote, stanza.get("from", ""), stanza_id) if stanza_id else None

    def remember(self, stanza: Element, remote: str) -> None:
        key = self.key(stanza, remote)
        if key is None:
            return
        keys = self.keys
        keys[key] = None
        if len(keys) > self.capacity:
            keys.popitem(last=False)

    def seen(self, stanza: Element, remote: str) -> bool:
        """True for a stanza sent again (marked by ``remote``) that was received before
        (then forgotten: a third copy would be new)."""
        key = self.key(stanza, remote)
        if key is None or key not in self.keys or not marked_by(stanza, remote):
            return False
        del self.keys[key]
        self.duplicates += 1
        return True
