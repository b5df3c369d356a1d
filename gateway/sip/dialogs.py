"""Presence subscription dialogs (RFC 6665 §4, RFC 3261 §12), plain data.

The gateway holds two kinds of ``presence`` subscriptions, both keyed by
``(watcher, presentity)`` as bare addresses (RFC 7248 §4 to §6):

* :class:`WatchDialog`: an XMPP contact watches a SIP user. The gateway is the SIP
  *subscriber* on the contact's behalf, refreshes the subscription before it expires and
  turns each NOTIFY into XMPP presence;
* :class:`NotifierDialog`: a SIP user watches an XMPP contact. The gateway is the SIP
  *notifier* on the contact's behalf and sends a NOTIFY whenever the contact's XMPP
  presence or subscription state changes.

In-dialog requests are built here so both kinds follow the same RFC 3261 §12.2.1.1 rules
(Request-URI = remote target, Route = route set, tags and CSeq of the dialog).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from gateway.sip.message import NameAddr, SipRequest, Via, new_branch
from gateway.sip.mime import decimal
from gateway.sip.pidf import UNAVAILABLE, PresenceState


@dataclass(slots=True)
class Dialog:
    call_id: str
    local: NameAddr  # our side, with our tag
    remote: NameAddr  # their side; tag filled when known
    remote_target: str
    contact: str  # our Contact URI
    route_set: list[str] = field(default_factory=list)
    cseq: int = 0
    expires_at: float = 0.0

    def request(self, method: str, via_transport: str, via_host: str) -> SipRequest:
        self.cseq += 1
        branch = new_branch()
        request = SipRequest([], b"", method, self.remote_target,
                             _via=Via(via_transport, via_host, None,
                                      {"branch": branch, "rport": ""}))
        request.add("via", f"SIP/2.0/{via_transport} {via_host};branch={branch};rport")
        request.add("max-forwards", "70")
        for route in self.route_set:
            request.add("route", route)
        request.add("from", str(self.local))
        request.add("to", str(self.remote))
        request.add("call-id", self.call_id)
        request.add("cseq", f"{self.cseq} {method}")
        request.add("contact", f"<{self.contact}>")
        return request


@dataclass(slots=True)
class WatchDialog(Dialog):
    """XMPP contact → SIP user (the gateway subscribes)."""

    xmpp_watcher: str = ""
    sip_user: str = ""
    established: bool = False  # a 2xx or NOTIFY arrived
    announced: bool = False  # XMPP was told 'subscribed'
    state: PresenceState = UNAVAILABLE
    refreshing: bool = False
    remote_cseq: int = -1  # CSeq of the last NOTIFY taken (RFC 3261 §12.2.2)
    attempts: int = 0  # temporary failures in a row (gateway.sip.watching backoff)
    retry_at: float = 0.0  # when to subscribe again after one (0: not waiting)
    probing: bool = False  # made for an XMPP probe: silent unless the SIP side authorizes

    @property
    def key(self) -> tuple[str, str]:
        return (self.xmpp_watcher, self.sip_user)


@dataclass(slots=True)
class NotifierDialog(Dialog):
    """SIP user → XMPP contact (the gateway notifies). What the contact's presence and
    approval are lives in the :class:`gateway.sip.notifying.PresenceView` of the pair; a
    dialog holds only what one phone's subscription needs (RFC 6665 §4.2.2: one NOTIFY
    outstanding at a time)."""

    sip_watcher: str = ""
    xmpp_contact: str = ""
    expires_in: int = 3600
    sending: bool = False  # a NOTIFY of this dialog awaits its final answer
    stale: bool = False  # the state changed since that NOTIFY was built
    ending: str = ""  # the reason of the final NOTIFY, once decided
    final_body: bytes = b""  # the state the final NOTIFY carries, if any
    final_sent: bool = False
    cseq_limit: float = float("inf")  # highest CSeq stored (gateway.store.notifiers)

    @property
    def key(self) -> tuple[str, str]:
        return (self.sip_watcher, self.xmpp_contact)


def subscription_state(value: str) -> tuple[str, dict[str, str]]:
    """``Subscription-State: active;expires=600`` → ("active", {"expires": "600"})
    (RFC 6665 §8.2.3)."""
    state, *params = value.split(";")
    parsed: dict[str, str] = {}
    for param in params:
        name, _, val = param.partition("=")
        parsed[name.strip().lower()] = val.strip()
    return state.strip().lower(), parsed


def header_int(value: str | None, default: int) -> int:
    """A non-negative integer header value (Expires, RFC 3261 §20.19), or ``default``."""
    number = decimal(value) if value is not None else None
    return default if number is None else number


DialogT = TypeVar("DialogT", WatchDialog, NotifierDialog)


def live_dialog(by_call_id: dict[str, DialogT], live: dict[tuple[str, str], DialogT],
                call_id: str, local_tag: str) -> DialogT | None:
    """The live dialog with this Call-ID and our tag, if any (RFC 3261 §12.2.2): the
    Call-ID index keeps entries of ended dialogs until they are looked up or purged."""
    dialog = by_call_id.get(call_id)
    if dialog is None or dialog.local.tag != local_tag:
        return None
    if live.get(dialog.key) is not dialog:
        del by_call_id[call_id]
        return None
    return dialog


def purge_ended(by_call_id: dict[str, DialogT],
                live: dict[tuple[str, str], DialogT]) -> None:
    """Forget the Call-ID index entries of dialogs that ended."""
    for call_id, dialog in list(by_call_id.items()):
        if live.get(dialog.key) is not dialog:
            del by_call_id[call_id]
