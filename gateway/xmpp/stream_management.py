"""XEP-0198 stream management on S2S streams: counters, the unacknowledged queue, <r/>/<a/>.

Plain S2S has no acknowledgements: a stanza written to a socket that dies is gone, and
the sender was never told. With stream management each side counts the stanzas it has
*handled* and says so with ``<a h='N'/>`` (XEP-0198 §4); the sender keeps every stanza
until an ``h`` covers it, and when the link is lost it re-sends or bounces what is left.

What Prosody 0.12's ``mod_smacks`` does on S2S, and this module does the same way:

- the ``<sm xmlns='urn:xmpp:sm:3'/>`` feature is offered only to an authenticated peer,
  i.e. in the features after the SASL restart (XEP-0198 §2; never before authentication);
- the initiating server sends ``<enable/>`` on seeing the feature and starts counting
  what it sends from there; the receiving server answers ``<enabled/>`` (no resumption
  on S2S: a lost link's stanzas go over a new link instead, §5 is for clients);
- each side counts the stanzas it receives after ``<enable/>`` (receiving side) or
  ``<enabled/>`` (initiating side), and answers every ``<r/>`` with ``<a h/>``;
- ``h`` is modulo 2^32 (§4); an ``<a/>`` acknowledging more than was sent, or less than
  was already acknowledged, ends the stream with ``<undefined-condition/>``
  (XEP-0198 §4's ``<handled-count-too-high/>``).

Where this gateway differs on purpose, as receiver: a stanza counts as handled only once
it is *safe* — the driver says so with :meth:`ReceivedCounter.settle` when the SIP side
answered it, its error reply is queued, or it was dropped with a count. Prosody counts a
stanza as handled when it is parsed; a gateway that did so would acknowledge stanzas it
then loses when it dies. Stanzas can settle out of order (a refusal is immediate, a
delivery waits for SIP); ``h`` only covers the contiguous prefix.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from xml.etree.ElementTree import Element

from gateway.xmpp.namespaces import NS_SM, NS_STANZAS

TAG_SM_FEATURE = f"{{{NS_SM}}}sm"
TAG_ENABLE = f"{{{NS_SM}}}enable"
TAG_ENABLED = f"{{{NS_SM}}}enabled"
TAG_FAILED = f"{{{NS_SM}}}failed"
TAG_REQUEST = f"{{{NS_SM}}}r"
TAG_ACK = f"{{{NS_SM}}}a"
TAG_RESUME = f"{{{NS_SM}}}resume"
SM_TAGS = frozenset({TAG_ENABLE, TAG_ENABLED, TAG_FAILED, TAG_REQUEST, TAG_ACK, TAG_RESUME})

H_MODULUS = 2**32  # XEP-0198 §4: h is an unsignedInt and wraps

# Receiver: an unsolicited <a/> once this many more stanzas were handled since the last
# one, or ACK_DELAY after the first of them; a peer that asks (<r/>) is answered at once.
# The sender re-sends or bounces what is unacknowledged when the link dies, so the fewer
# stanzas wait for an ack, the fewer duplicates a crash can cause (see docs/delivery.md).
ACK_EVERY = 64
ACK_DELAY = 0.05
# Sender: without an answer to our <r/> for this long the link is taken as dead (the
# peer stopped processing), and the stream is closed so its stanzas go elsewhere.
ACK_TIMEOUT = 60.0


class AckError(Exception):
    """The peer's ``h`` is impossible (XEP-0198 §4): the stream must end."""


class ReceivedCounter:
    """The inbound half: stanzas received from the peer and how many of them are handled.

    ``received`` numbers each stanza (its sequence number is what the driver settles);
    ``handled`` is the contiguous prefix of settled ones, the ``h`` we may claim.
    """

    __slots__ = ("_early", "handled", "last_sent", "received")

    def __init__(self) -> None:
        self.received = 0
        self.handled = 0
        self.last_sent = 0  # the h of our last <a/>
        # Settled sequence numbers above ``handled`` (out-of-order settlements). None in
        # the common case, stanzas settling in the order they arrived: most sessions are
        # idle, and an empty set is 216 bytes of each.
        self._early: set[int] | None = None

    def receive(self) -> int:
        """Count one received stanza; its sequence number, for :meth:`settle`."""
        seq = self.received
        self.received = seq + 1
        return seq

    def settle(self, seq: int) -> bool:
        """Stanza ``seq`` is safe; True when ``handled`` advanced."""
        if seq != self.handled:
            if self.handled < seq < self.received:
                if self._early is None:
                    self._early = set()
                self._early.add(seq)
            return False
        handled = seq + 1
        early = self._early
        if early is not None:
            while handled in early:
                early.remove(handled)
                handled += 1
            if not early:
                self._early = None
        self.handled = handled
        return True

    @property
    def unsettled(self) -> int:
        return self.received - self.handled

    @property
    def unacked(self) -> int:
        """Handled since our last <a/>."""
        return self.handled - self.last_sent

    def ack(self) -> Element:
        """The <a/> to send now."""
        self.last_sent = self.handled
        return Element(TAG_ACK, {"h": str(self.handled % H_MODULUS)})


class SentQueue:
    """The outbound half: stanzas sent since ``<enable/>`` and not yet acknowledged.

    Each entry is the stanza *as written* (the serialised bytes) and the driver's token
    for it (e.g. who to tell once the peer has it); :meth:`ack` returns the tokens an
    ``<a/>`` covers, :meth:`take` what is left when the link is gone (to re-send over a
    new link or to bounce).

    Why bytes and two flat deques rather than (element, token) pairs: every stanza
    relayed waits here for about a round trip of the peer, long enough to be found
    alive by a young-generation garbage collection and promoted. An element tree is
    several objects the cyclic collector then walks (and a pair one more), and the older
    generations' collections, whose cost grows with what was promoted, were most of what
    stream management cost per relayed message. Bytes are not tracked by the collector
    at all, and a deque's blocks are not objects. The bytes are parsed back only on the
    rare paths that need the stanza (a bounce, a re-send: ``parse_written``).
    """

    __slots__ = ("_tokens", "_unacked", "acked", "awaiting_since", "requested_at_count", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.acked = 0
        # Made on the first stanza and dropped once all are acknowledged: an idle
        # session's empty deques would be 0.6 KiB each of it.
        self._unacked: deque[bytes] | None = None
        self._tokens: deque[Hashable | None] | None = None  # in step with _unacked
        self.awaiting_since: float | None = None  # when our outstanding <r/> went out
        self.requested_at_count = 0  # ``sent`` when we last asked (no re-asking for nothing)

    def push(self, data: bytes, token: Hashable | None) -> None:
        """Keep one stanza, as the bytes written for it, until it is acknowledged."""
        self.sent += 1
        unacked = self._unacked
        if unacked is None:
            unacked = self._unacked = deque()
            self._tokens = deque()
        unacked.append(data)
        self._tokens.append(token)  # type: ignore[union-attr]  # made with _unacked

    def __len__(self) -> int:
        return self.sent - self.acked

    def wants_request(self) -> bool:
        """Ask for an ack: something new is unacknowledged and no request is outstanding
        (one at a time, as Prosody; the answer's ``h`` covers everything before it)."""
        return (self.awaiting_since is None and self.sent != self.acked
                and self.sent != self.requested_at_count)

    def request(self, now: float) -> Element:
        self.awaiting_since = now
        self.requested_at_count = self.sent
        return Element(TAG_REQUEST)

    def ack(self, h_text: str | None) -> tuple[int, list[Hashable]]:
        """Apply the peer's ``<a h/>``: how many stanzas it newly acknowledges, and the
        tokens of those that have one, oldest first."""
        try:
            h = int(h_text or "")
        except ValueError:
            raise AckError(f"<a/> with a missing or invalid 'h' {h_text!r}") from None
        if not 0 <= h < H_MODULUS:
            raise AckError(f"<a/> with 'h' {h} outside 0..2^32-1")
        self.awaiting_since = None
        newly = (h - self.acked) % H_MODULUS
        if newly > self.sent - self.acked:
            if newly > H_MODULUS // 2:
                raise AckError(f"the peer acknowledged {h}, less than the {self.acked % H_MODULUS} "
                               "it had already acknowledged")
            raise AckError(f"the peer acknowledged {h} stanzas; only "
                           f"{self.sent % H_MODULUS} were sent")
        if not newly:
            return 0, []
        self.acked += newly
        unacked, tokens = self._unacked, self._tokens
        assert unacked is not None and tokens is not None
        if newly == len(unacked):  # the usual case: everything sent so far
            acked = [token for token in tokens if token is not None]
            self._unacked = self._tokens = None
            return newly, acked
        acked = []
        for _ in range(newly):
            unacked.popleft()
            token = tokens.popleft()
            if token is not None:
                acked.append(token)
        return newly, acked

    def take(self) -> list[tuple[bytes, Hashable | None]]:
        """Everything unacknowledged (the bytes written, the token), oldest first; the
        queue is empty afterwards."""
        left = list(zip(self._unacked or (), self._tokens or (), strict=True))
        self._unacked = self._tokens = None
        self.acked = self.sent
        return left


def sm_feature() -> Element:
    return Element(TAG_SM_FEATURE)


def enable() -> Element:
    return Element(TAG_ENABLE)


def enabled() -> Element:
    return Element(TAG_ENABLED)


def failed(condition: str) -> Element:
    element = Element(TAG_FAILED)
    element.append(Element(f"{{{NS_STANZAS}}}{condition}"))
    return element
