"""What the contact rules need to remember: the records and their normal form.

Two facts per local user, both persistent across restarts:

* which XMPP contacts (bare JIDs) the local user has authorized — needed for
  public-unverified partners, recorded when the user subscribes to / approves a contact or an
  operator runs ``xmpp-gateway contacts allow``;
* whether the user is enabled for XMPP federation, as an override of the global default
  (``federation.users_enabled_by_default``); no row = the default applies.

Addresses are compared in a normalised form (:func:`normalize_bare_jid`): the bare JID
as RFC 7622 enforces it (PRECIS UsernameCaseMapped localpart, the domain in the gateway's
one normal form), resource dropped. The Protocols over these records are in
:mod:`gateway.store.protocols`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.xmpp.jid import Jid, JidError


class StoreError(Exception):
    """The store could not do what was asked (disk full, read-only, locked, corrupt, newer
    schema, ...). The message says which file and what failed."""


@dataclass(frozen=True, slots=True)
class Authorization:
    local_user: str
    remote_jid: str
    granted_at: str  # ISO 8601 UTC
    source: str  # how it was granted: "cli", "subscribe", "subscribed", ...


@dataclass(frozen=True, slots=True)
class UserSetting:
    local_user: str
    enabled: bool
    updated_at: str  # ISO 8601 UTC


def normalize_bare_jid(jid: str) -> str:
    """The store key of a user address: its bare JID in enforced form
    (:class:`gateway.xmpp.jid.Jid`), so ``Alice@Contoso.Example/phone`` →
    ``alice@contoso.example`` and ``bob@xn--bcher-kva.example`` → ``bob@bücher.example``
    whichever side (SIP or XMPP) the address came from. ``ValueError`` when the string is
    not a valid ``local@domain[/resource]`` JID."""
    try:
        parsed = Jid.parse(jid.strip())
    except JidError as exc:
        raise ValueError(f"{jid!r} is not a user address of the form local@domain "
                         f"({exc.reason})") from None
    if not parsed.local:
        raise ValueError(f"{jid!r} is not a user address of the form local@domain "
                         "(it has no localpart)")
    return parsed.bare

