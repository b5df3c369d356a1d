"""SIP users watching XMPP contacts: the gateway is the notifier on the contacts' behalf
(RFC 7248 §4, RFC 6665 §4.2, PIDF RFC 3863).

SIP ``SUBSCRIBE`` to an XMPP contact → ``202`` + ``NOTIFY`` pending, and XMPP
``subscribe``; XMPP ``subscribed`` → ``NOTIFY`` active with the contact's presence,
XMPP presence → ``NOTIFY`` with PIDF, ``unsubscribed`` → ``NOTIFY`` terminated;
reason=rejected; ``SUBSCRIBE`` with ``Expires: 0`` → XMPP ``unsubscribe``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from xml.etree.ElementTree import Element

from gateway.logs import log_event
from gateway.sip.addresses import jid_to_sip
from gateway.sip.dialogs import NotifierDialog, header_int, live_dialog, purge_ended
from gateway.sip.endpoint import SipEndpoint
from gateway.sip.message import NameAddr, SipResponse, new_tag, parse_name_addr
from gateway.sip.messaging import refuse
from gateway.sip.parties import Refused, request_parties
from gateway.sip.pidf import PIDF_TYPE, UNAVAILABLE, PresenceState, to_pidf
from gateway.sip.stanzas import presence
from gateway.sip.transaction import RequestReceived
from gateway.xmpp.jid import Jid

log = logging.getLogger("gateway.sip")

ToXmpp = Callable[[Element, Callable[[], None] | None], None]
MIN_EXPIRES = 60
MAX_EXPIRES = 3600
# RFC 6665 §4.2.2: these answers to a NOTIFY (and a timeout) end the subscription.
ENDS_SUBSCRIPTION = (404, 405, 410, 416, 480, 481, 482, 483, 484, 485, 489, 501, 604)
_SHOW_RANK = {"chat": 0, "": 1, "away": 2, "xa": 3, "dnd": 4}


class XmppPresenceNotifier:
    """Subscriptions SIP users hold to XMPP contacts, keyed (SIP watcher, XMPP contact)."""

    def __init__(self, endpoint: SipEndpoint, served: frozenset[str], to_xmpp: ToXmpp,
                 expires: int) -> None:
        self.endpoint = endpoint
        self.served = served
        self.trust_asserted_identity = False  # set by the backend (issue 13)
        self.to_xmpp = to_xmpp
        self.expires = expires
        self.notifiers: dict[tuple[str, str], NotifierDialog] = {}
        self.by_call_id: dict[str, NotifierDialog] = {}
        # contact → resource → last presence: what a new or refreshed NOTIFY carries
        self.xmpp_presence: dict[str, dict[str, PresenceState]] = {}

    # ------------------------------------------------------------------ XMPP side

    def on_xmpp(self, stanza: Element, kind: str, contact: str, resource: str,
                local_user: str) -> None:
        """available / unavailable / subscribed / unsubscribed from ``contact``."""
        if kind in ("available", "unavailable"):
            resources = self.xmpp_presence.setdefault(contact, {})
            if kind == "available":
                resources[resource] = PresenceState.from_stanza(stanza)
            else:
                resources.pop(resource, None)
                if not resources:
                    del self.xmpp_presence[contact]
            dialog = self.notifiers.get((local_user, contact))
            if dialog is not None and dialog.active:
                self.notify(dialog)
        elif kind == "subscribed":
            dialog = self.notifiers.get((local_user, contact))
            if dialog is None:
                log_event(log, logging.INFO, "sip.subscribed_without_subscription",
                          contact=contact, local_user=local_user,
                          reason="the SIP user has no presence subscription to this contact")
                return
            dialog.active = True
            self.notify(dialog)
        elif kind == "unsubscribed":
            dialog = self.notifiers.pop((local_user, contact), None)
            if dialog is not None:
                self.notify(dialog, terminated="rejected")

    def aggregate(self, contact: str) -> PresenceState:
        """The most available of the contact's resources (RFC 6121 §4.4.3 aggregation,
        simplified: any available resource makes the contact available)."""
        resources = self.xmpp_presence.get(contact)
        if not resources:
            return UNAVAILABLE
        return min(resources.values(), key=lambda state: _SHOW_RANK.get(state.show, 5))

    # ------------------------------------------------------------------ SUBSCRIBE

    def incoming_subscribe(self, event: RequestReceived) -> None:
        request = event.request
        endpoint = self.endpoint
        if (request.get("event") or "").split(";", 1)[0].strip().lower() != "presence":
            endpoint.reply(event, 489, headers=[("Allow-Events", "presence")])
            return
        expires = header_int(request.get("expires"), self.expires)
        if 0 < expires < MIN_EXPIRES:
            endpoint.reply(event, 423, "Interval Too Brief",
                           headers=[("Min-Expires", str(MIN_EXPIRES))])
            return
        expires = min(expires, max(MAX_EXPIRES, self.expires))
        if request.to.tag:
            self._refresh(event, expires)
            return
        try:
            sender, recipient = request_parties(request, self.served,
                                             trust_asserted_identity=self.trust_asserted_identity)
        except Refused as refusal:
            refuse(endpoint, event, refusal)
            return
        watcher, contact = Jid.parse(sender).bare, recipient
        remote_contact = request.get("contact")
        if not remote_contact:
            endpoint.reply(event, 400, "Missing Contact")
            return
        contact_uri = jid_to_sip(contact).uri
        local_tag = new_tag()
        dialog = NotifierDialog(
            request.call_id, NameAddr(contact_uri, params={"tag": local_tag}), request.from_,
            parse_name_addr(remote_contact).uri, endpoint.contact_for(contact_uri),
            route_set=request.get_all("record-route"), sip_watcher=watcher,
            xmpp_contact=contact, expires_in=expires)
        dialog.expires_at = time.monotonic() + expires if expires else 0.0
        endpoint.reply(event, 202, to_tag=local_tag,
                       headers=[("Expires", str(expires)), ("Contact", f"<{dialog.contact}>")])
        if expires == 0:  # a one-time fetch (RFC 6665 §4.4.3)
            self.notify(dialog, terminated="timeout")
            return
        previous = self.notifiers.get((watcher, contact))
        dialog.active = previous.active if previous is not None else False
        self.notifiers[(watcher, contact)] = dialog
        self.by_call_id[dialog.call_id] = dialog
        self.notify(dialog)
        self.to_xmpp(presence(watcher, contact, "subscribe"), None)

    def _refresh(self, event: RequestReceived, expires: int) -> None:
        request = event.request
        dialog = live_dialog(self.by_call_id, self.notifiers, request.call_id,
                             request.to.tag)
        if dialog is None:
            self.endpoint.reply(event, 481)
            return
        key = (dialog.sip_watcher, dialog.xmpp_contact)
        self.endpoint.reply(event, 200, to_tag=dialog.local.tag,
                            headers=[("Expires", str(expires)),
                                     ("Contact", f"<{dialog.contact}>")])
        if expires == 0:
            del self.notifiers[key]
            self.notify(dialog, terminated="timeout")
            self.to_xmpp(presence(dialog.sip_watcher, dialog.xmpp_contact, "unsubscribe"),
                         None)
            return
        dialog.expires_in = expires
        dialog.expires_at = time.monotonic() + expires
        self.notify(dialog)

    # ------------------------------------------------------------------ NOTIFY

    def notify(self, dialog: NotifierDialog, *, terminated: str = "") -> None:
        endpoint = self.endpoint
        request = dialog.request("NOTIFY", endpoint.transport.via_transport, endpoint.hostport)
        request.add("event", "presence")
        if terminated:
            request.add("subscription-state", f"terminated;reason={terminated}")
        else:
            remaining = max(0, int(dialog.expires_at - time.monotonic()))
            state = "active" if dialog.active else "pending"
            request.add("subscription-state", f"{state};expires={remaining}")
        if dialog.active and not terminated:
            request.add("content-type", PIDF_TYPE)
            request.body = to_pidf(dialog.xmpp_contact, self.aggregate(dialog.xmpp_contact))
        endpoint.send(request, lambda response: self._outcome(dialog, response))

    def _outcome(self, dialog: NotifierDialog, response: SipResponse | None) -> None:
        if response is None or response.status in ENDS_SUBSCRIPTION:
            key = (dialog.sip_watcher, dialog.xmpp_contact)
            if self.notifiers.get(key) is dialog:
                del self.notifiers[key]
                log_event(log, logging.INFO, "sip.subscription_ended",
                          watcher=dialog.sip_watcher, contact=dialog.xmpp_contact,
                          status=408 if response is None else response.status)

    # ------------------------------------------------------------------ timers, stop

    def expire(self, now: float) -> None:
        for key, dialog in list(self.notifiers.items()):
            if dialog.expires_at and now >= dialog.expires_at:
                del self.notifiers[key]
                self.notify(dialog, terminated="timeout")
        purge_ended(self.by_call_id, self.notifiers)

    def stop(self) -> None:
        """RFC 6665 §4.4.1 ``deactivated``: the watcher may re-subscribe at once, i.e. to
        us after a restart."""
        for dialog in list(self.notifiers.values()):
            self.notify(dialog, terminated="deactivated")
        self.notifiers.clear()
        self.by_call_id.clear()
