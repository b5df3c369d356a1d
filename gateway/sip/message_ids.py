"""Message ids that carry what a receipt needs to find its message, on any node, after any
restart: derived, not stored.

Receipts and markers travel the other way from their message and name it only by id:
an XEP-0184 ``<received id/>`` or XEP-0333 ``<displayed id/>`` names the XMPP stanza id,
an IMDN (RFC 5438 §7) names the ``imdn.Message-ID`` — or, from Linphone's basic chat
without CPIM, the Call-ID. The gateway therefore writes each id so that the id on the
other side can be computed back from it, with no table to share between nodes:

* XMPP → SIP: the Call-ID and the ``imdn.Message-ID`` of the MESSAGE are
  ``x<unique>.<base64url of the stanza id>.<base64url of the sender's resource>`` (``@host``
  added to the Call-ID). The unique part (64 random bits per process and a counter,
  :func:`unique_token`) keeps them unique across restarts and nodes (RFC 3261 §8.1.1.4,
  RFC 5438 §6.3); an IMDN carrying either form gives the stanza id back, and the
  resource the receipt must reach (the phone answers the sender's bare address).
* SIP → XMPP: the stanza id is ``s<form>.<base64url of the IMDN message id>.<time>``, where
  the message id is the ``imdn.Message-ID`` (``form`` ``c``: the phone speaks CPIM, answer
  it in CPIM) or the Call-ID (``form`` ``b``: basic), and ``time`` is the original
  message's DateTime in seconds (hexadecimal), which RFC 5438 §7.2.1.2 wants in the IMDN. The
  SIP ids are unique (RFC 3261 §8.1.1.4, RFC 5438 §6.3), so the stanza ids are too.

An id too long to carry (over :data:`MAX_CARRIED` bytes) is not derived: such a message
gets a random id and asks for no receipt, since none could be matched.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass
from functools import lru_cache

from gateway.sip.message import unique_token

LAST_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z, the last time RFC 3339 can write
MAX_CARRIED = 120  # bytes of foreign id an id carries (base64url: 160 characters)


# base64url without padding: written in C (base32 is not, and cost a microsecond per id),
# and its alphabet (A-Z a-z 0-9 - _) is a Call-ID "word", a CPIM header value, XML text.
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).decode(
        "ascii").rstrip("=")


def _unb64(text: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def sip_id_for_stanza(stanza_id: str, resource: str = "") -> str:
    """The Call-ID local part and ``imdn.Message-ID`` of a MESSAGE made from a stanza
    with id ``stanza_id`` sent by ``resource`` (a fresh unique id only when they cannot be
    carried)."""
    carried = stanza_id.encode("utf-8")
    sender = _resource_part(resource)
    if not carried or len(carried) + len(sender) * 3 // 4 > MAX_CARRIED:
        return unique_token()
    return f"x{unique_token()}.{_b64(carried)}.{sender}"


@lru_cache(maxsize=4096)  # the same resources send again and again
def _resource_part(resource: str) -> str:
    return _b64(resource.encode("utf-8"))


def stanza_id_from_sip_id(message_id: str) -> tuple[str, str] | None:
    """(stanza id, sender's resource) an IMDN's message id (an ``imdn.Message-ID``, or a
    Call-ID with its ``@host``) was made from, None when it is not one of ours."""
    local = message_id.partition("@")[0]
    parts = local.split(".")
    if not local.startswith("x") or len(parts) != 3:
        return None
    stanza_id, resource = _unb64(parts[1]), _unb64(parts[2])
    if not stanza_id or resource is None:
        return None
    try:
        return stanza_id.decode("utf-8"), resource.decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True, slots=True)
class SipOrigin:
    """What an XMPP receipt for a message from a SIP user must say in its IMDN."""

    message_id: str  # the IMDN message id (imdn.Message-ID or Call-ID)
    cpim: bool  # the phone wrapped its message in CPIM: wrap the IMDN too
    sent: int  # the original message's time, seconds since the epoch


def stanza_id_for_sip(message_id: str, *, cpim: bool, sent: int) -> str:
    """The stanza id of an XMPP message made from a SIP MESSAGE (see the module doc)."""
    carried = message_id.encode("utf-8")
    if not carried or len(carried) > MAX_CARRIED or not 0 <= sent <= LAST_SECOND:
        return "r" + secrets.token_hex(12)
    return f"s{'c' if cpim else 'b'}.{_b64(carried)}.{sent:x}"


def sip_origin(stanza_id: str) -> SipOrigin | None:
    """What :func:`stanza_id_for_sip` put in ``stanza_id``, None when it is not ours."""
    parts = stanza_id.split(".")
    # the time: at most 10 hexadecimal digits, up to the last second of year 9999 (what
    # an IMDN's DateTime can say); the id comes back from XMPP and may have been altered
    if len(parts) != 3 or parts[0] not in ("sc", "sb") or not 0 < len(parts[2]) <= 10 \
            or not parts[2].isascii() or not parts[2].isalnum():
        return None
    decoded = _unb64(parts[1])
    if not decoded:
        return None
    try:
        sent = int(parts[2], 16)
        message_id = decoded.decode("utf-8")
    except (UnicodeDecodeError, ValueError):
        return None
    return SipOrigin(message_id, parts[0] == "sc", sent) if sent <= LAST_SECOND else None

