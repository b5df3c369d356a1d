"""Phones' subscriptions to XMPP contacts, kept so that another run of the gateway (after a
restart, or the node that takes over from a dead one) can go on notifying them.

The gateway is the RFC 6665 notifier of these subscriptions. A phone holds its dialog for
up to the granted ``Expires`` (an hour by default) and learns of nothing until it next
refreshes unless the notifier writes to it; the dialog is defined by a few values that
only the notifier knows (RFC 3261 §12: Call-ID, both tags, the phone's Contact as the
remote target, the route set, our CSeq). Those are stored here, one row per dialog, with
the node that holds it (``owner``, as for XMPP→SIP watches); a node resuming the row
sends its NOTIFYs in the same dialog and the phone notices nothing but the new Contact.

CSeq: a NOTIFY must carry a CSeq above every earlier one of the dialog (RFC 3261 §12.2.1.1),
including those sent by a node that died without writing its last number. The row holds
a *reservation* instead: the holder never sends a CSeq above the stored value and moves
it forward by :data:`CSEQ_BLOCK` before it gets there, so whoever resumes the dialog
starts above anything already sent, and a write is needed only every block, not per
NOTIFY.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

CSEQ_BLOCK = 100


@dataclass(frozen=True, slots=True)
class NotifierRecord:
    """One phone's subscription dialog to an XMPP contact (addresses are bare JIDs)."""

    call_id: str
    sip_watcher: str
    xmpp_contact: str
    local_tag: str  # our tag (the To tag of the phone's SUBSCRIBE)
    remote: str  # the phone's From, with its tag (name-addr text)
    remote_target: str  # the phone's Contact URI
    route_set: tuple[str, ...]
    cseq: int  # reserved: no NOTIFY of the dialog has a CSeq above it
    expires_at: float  # seconds since the epoch
    approved: bool  # the XMPP contact approved ('subscribed'): NOTIFYs say active


class NotifierStore(Protocol):
    """Synchronous access (what an engine implements)."""

    def save_notifiers(self, records: list[NotifierRecord]) -> None:
        """Insert or replace these dialogs, owned by this store's node, in one
        transaction."""
        ...

    def remove_notifiers(self, call_ids: list[str]) -> None:
        """Forget these dialogs (no error for unknown ones), in one transaction."""
        ...

    def list_notifiers(self) -> list[NotifierRecord]:
        """The dialogs this store's node owns."""
        ...

    def claim_notifiers(self, lease: float) -> list[NotifierRecord]:
        """Atomically take over the dialogs of nodes whose heartbeat is older than
        ``lease`` (or that stopped, or handed them over: owner ''); return them."""
        ...


class AsyncNotifierStore(Protocol):
    """The same on the event loop."""

    async def save_notifiers(self, records: list[NotifierRecord]) -> None: ...

    async def remove_notifiers(self, call_ids: list[str]) -> None: ...

    async def list_notifiers(self) -> list[NotifierRecord]: ...

    async def claim_notifiers(self, lease: float) -> list[NotifierRecord]: ...


COLUMNS = ("call_id, sip_watcher, xmpp_contact, local_tag, remote, remote_target, route_set,"
           " cseq, expires_at, approved")
UPSERT = (f"INSERT INTO presence_notifiers ({COLUMNS}, owner) VALUES"
          " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (call_id) DO UPDATE SET"
          " sip_watcher = excluded.sip_watcher, xmpp_contact = excluded.xmpp_contact,"
          " local_tag = excluded.local_tag, remote = excluded.remote,"
          " remote_target = excluded.remote_target, route_set = excluded.route_set,"
          " cseq = excluded.cseq, expires_at = excluded.expires_at,"
          " approved = excluded.approved, owner = excluded.owner")


def as_row(record: NotifierRecord, owner: str) -> tuple[object, ...]:
    return (record.call_id, record.sip_watcher, record.xmpp_contact, record.local_tag,
            record.remote, record.remote_target, "\n".join(record.route_set), record.cseq,
            record.expires_at, int(record.approved), owner)


def from_row(row: tuple[object, ...]) -> NotifierRecord:
    (call_id, watcher, contact, local_tag, remote, target, routes, cseq, expires_at,
     approved) = row[:10]
    return NotifierRecord(str(call_id), str(watcher), str(contact), str(local_tag),
                          str(remote), str(target),
                          tuple(r for r in str(routes).split("\n") if r),
                          int(cseq), float(expires_at), bool(approved))  # type: ignore[call-overload,arg-type]
