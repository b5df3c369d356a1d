"""What the contact rules need to remember (GATEWAY-SPEC §3), behind a Protocol.

Two facts per local user, both persistent across restarts:

* which XMPP contacts (bare JIDs) the local user has authorized — needed for
  public-unverified partners, recorded when the user subscribes to / approves a contact or an
  operator runs ``xmpp-gateway contacts allow``;
* whether the user is enabled for XMPP federation, as an override of the global default
  (``federation.users_enabled_by_default``); no row = the default applies.

Addresses are compared in a normalised form (:func:`normalize_bare_jid`): the bare JID
as RFC 7622 enforces it (PRECIS UsernameCaseMapped localpart, the domain in the gateway's
one normal form), resource dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

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


class AuthorizationStore(Protocol):
    """Synchronous store interface; see :class:`gateway.store.threaded.AsyncAuthorizationStore`
    for the awaitable form the router uses."""

    def is_authorized(self, local_user: str, remote_jid: str) -> bool:
        """Has ``local_user`` authorized the bare JID of ``remote_jid``?"""

    def allow(self, local_user: str, remote_jid: str, source: str = "cli") -> bool:
        """Record an authorization; False if it already existed (kept with its first date)."""

    def revoke(self, local_user: str, remote_jid: str) -> bool:
        """Remove an authorization; False if there was none."""

    def list_contacts(self, local_user: str) -> list[Authorization]:
        """The user's authorizations, sorted by remote JID."""

    def user_enabled(self, local_user: str, default: bool) -> bool:
        """The per-user federation switch: the override if set, else ``default``."""

    def set_user_enabled(self, local_user: str, enabled: bool | None) -> None:
        """Set the override; None removes it (the global default applies again)."""

    def list_users(self) -> list[UserSetting]:
        """Every user with an override, sorted by address."""

    def add_watch(self, watcher: str, sip_user: str) -> None:
        """Remember that XMPP ``watcher`` is subscribed to ``sip_user``'s presence."""

    def remove_watch(self, watcher: str, sip_user: str) -> None:
        """Forget that subscription (no error if there was none)."""

    def list_watches(self) -> list[tuple[str, str]]:
        """Every remembered (watcher, SIP user) subscription."""

    def close(self) -> None:
        """Release the database."""
