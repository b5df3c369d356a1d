"""Events the S2S core hands to its driver (the asyncio layer or a test).

Small immutable values, in the manner of h11's ``_events.py``: the driver pulls them
with ``S2SStream.next_event()`` after feeding bytes and acts on them (route a stanza,
start a dialback verification, bounce a queue, close the socket).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from xml.etree.ElementTree import Element

from gateway.policy.negotiation import AuthMethod


class Direction(StrEnum):
    INBOUND = "in"  # the peer connected to us: we are the receiving server
    OUTBOUND = "out"  # we connected to the peer: we are the initiating server


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer's stream header arrived (after each restart too)."""

    peer_from: str | None
    peer_to: str | None
    stream_id: str | None
    version: str | None


@dataclass(frozen=True, slots=True)
class TlsEstablished:
    version: str
    cipher: str
    peer_certificate_present: bool


@dataclass(frozen=True, slots=True)
class PairAuthenticated:
    """Stanzas may now flow for (remote_domain, local_domain) on this stream.

    Inbound: the peer proved it is ``remote_domain`` and may send to ``local_domain``.
    Outbound: the peer accepted us as ``local_domain`` for sending to ``remote_domain``.
    """

    remote_domain: str
    local_domain: str
    method: AuthMethod


@dataclass(frozen=True, slots=True)
class PairFailed:
    """Authentication of a domain pair failed; queued stanzas for it must bounce.

    ``condition`` is the stanza error to bounce with (RFC 6120 §8.3.3 /
    XEP-0220 §2.1.1: internal-server-error after "invalid", remote-server-timeout after
    a dialback error, remote-server-not-found for the rest); ``reason`` is the precise
    human-readable cause for the log.
    """

    remote_domain: str
    local_domain: str
    condition: str
    reason: str


@dataclass(frozen=True, slots=True)
class DialbackVerifyNeeded:
    """Receiving role: ask the authoritative server of ``remote_domain`` (XEP-0220 §2.1.2)."""

    remote_domain: str
    local_domain: str
    stream_id: str
    key: str


@dataclass(frozen=True, slots=True)
class DialbackVerifyAnswered:
    """Our db:verify sent on this (outbound) stream was answered (XEP-0220 §2.1.2 step 3).

    ``valid`` is True/False; None with ``error`` set for a type='error' answer or a
    stream that closed before answering.
    """

    remote_domain: str  # the authoritative server's domain (the db:verify 'from')
    local_domain: str
    stream_id: str
    valid: bool | None
    error: str = ""


@dataclass(frozen=True, slots=True)
class StanzaReceived:
    """A stanza that passed the stream-level checks (from authenticated, to served).

    ``seq`` is its number under stream management (XEP-0198), -1 without: the driver
    hands it back to :meth:`S2SStream.stanza_settled` once the stanza is safe (delivered,
    answered with an error, or dropped with a count), and only then is it acknowledged.
    """

    stanza: Element
    remote_domain: str
    local_domain: str
    seq: int = -1


@dataclass(frozen=True, slots=True)
class StreamManagementEnabled:
    """XEP-0198 is on for this stream: stanzas both ways are counted and acknowledged."""

    initiated_by_us: bool


@dataclass(frozen=True, slots=True)
class StreamManagementFailed:
    """The peer answered our <enable/> with <failed/>: the stream goes on without acks."""

    condition: str


@dataclass(frozen=True, slots=True)
class StanzasAcked:
    """The peer acknowledged ``count`` more stanzas (XEP-0198 <a/>); ``tokens`` are the
    driver's tokens of those that had one, oldest first."""

    count: int
    tokens: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class BidiNegotiated:
    """XEP-0288: this one connection carries stanzas both ways for its domain pairs."""


@dataclass(frozen=True, slots=True)
class StreamClosed:
    """The stream is over; the driver flushes ``data_to_send()`` and closes the socket.

    ``error`` is the stream error condition sent or received ("" for a clean close),
    ``by_peer`` says who ended it, ``reason`` is the precise text for the log.
    """

    error: str
    reason: str
    by_peer: bool


Event = (
    StreamOpened
    | TlsEstablished
    | PairAuthenticated
    | PairFailed
    | DialbackVerifyNeeded
    | DialbackVerifyAnswered
    | StanzaReceived
    | StreamManagementEnabled
    | StreamManagementFailed
    | StanzasAcked
    | BidiNegotiated
    | StreamClosed
)


def is_stanza(element: Element) -> bool:
    return element.tag in STANZA_TAGS


STANZA_TAGS = frozenset({"{jabber:server}message", "{jabber:server}presence", "{jabber:server}iq"})
