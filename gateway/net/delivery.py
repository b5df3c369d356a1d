"""What the S2S service owes each stanza it was given to send: an outcome.

A stanza toward XMPP ends in exactly one of two ways: the peer server *has* it, or its
sender gets an error (a bounce). When is "has it"? On a link with XEP-0198 stream
management, when the peer acknowledged it (``<a h/>`` covering it); on a link without,
when it was written to the socket (all plain S2S can tell). Whoever must know (the SIP
side answering a MESSAGE only once XMPP has it, docs/delivery.md) passes an
:data:`OnDone` with the stanza, called once with that outcome.

A link that dies with stanzas unacknowledged gives them back (``take_unacked``); they
are sent again over a new link (``federation.resend_unacked``, the default) up to
MAX_ATTEMPTS times, else bounced. A stanza sent twice may arrive twice if the peer had
in fact taken it: that is the price of never losing one, and each re-send is counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from xml.etree.ElementTree import Element

OnDone = Callable[[bool], None]
"""Told True once the peer server has the stanza, False once it was bounced."""

# Sendings of one stanza (the first and the re-sends) before it is bounced instead: a
# stanza that takes links down with it (a peer bug) must not circle for ever.
MAX_ATTEMPTS = 3


@dataclass(slots=True, eq=False)
class Pending:
    """A queued stanza with something to remember: who to tell, how often it was sent.

    Plain stanzas queue as bare Elements (no allocation for the common case)."""

    stanza: Element
    on_done: OnDone | None = None
    attempts: int = 0


Queued = Element | Pending
Token = OnDone | Pending | None  # what a stream keeps with each unacknowledged stanza


def unpack(item: Queued) -> tuple[Element, Token]:
    """The stanza to write and the token the stream keeps with it until acknowledged."""
    if isinstance(item, Pending):
        return item.stanza, item
    return item, None


def settle(token: object, delivered: bool) -> None:
    """Tell whoever waits for a stanza with ``token`` (an :data:`OnDone` or a Pending)."""
    if isinstance(token, Pending):
        if token.on_done is not None:
            token.on_done(delivered)
    elif callable(token):
        token(delivered)


def again(stanza: Element, token: object) -> Pending:
    """The queue item for a stanza a lost link left unacknowledged."""
    if isinstance(token, Pending):
        token.attempts += 1
        return token
    on_done = token if callable(token) else None
    return Pending(stanza, on_done, attempts=1)
