"""What the contact rules need to remember: the records and their normal form.

Two facts per local user, both persistent across restarts:

* which XMPP contacts (bare JIDs) the local user has authorized — needed for
  public-unverified partners, recorded when the user subscribes to / approves a contact or an
  operator runs ``xmpp-gateway contacts allow``;
* whether the user is enabled for XMPP federation, as an override of the global default
  (``federation.users_enabled_by_default``); no row = the default applies.

The Protocols over these records are in :mod:`gateway.store.protocols`. Addresses are
compared in a normalised form (:func:`normalize_bare_jid`): resource
dropped, lower-cased. Lower-casing is the practical subset of RFC 7622's case mapping
(UsernameCaseMapped localparts, domain names) that SIP user names and DNS names need.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    """``Alice@Contoso.Example/phone`` → ``alice@contoso.example``; ``ValueError`` when the
    string is not ``local@domain[/resource]``."""
    bare = jid.strip().split("/", 1)[0]
    local, at, domain = bare.partition("@")
    if not at or not local or not domain or "@" in domain or any(c.isspace() for c in bare):
        raise ValueError(f"{jid!r} is not a user address of the form local@domain")
    return f"{local}@{domain.rstrip('.')}".lower()
