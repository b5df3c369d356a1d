"""SIP users watching XMPP contacts: the gateway is the notifier on the contacts' behalf
(RFC 8048 §5.3 and §6, RFC 6665 §4.2, PIDF RFC 3863).

* ``SUBSCRIBE`` from a phone → ``200`` (RFC 6665 §4.2.1.1: 202 is deprecated) and at once
  a NOTIFY, ``pending`` until the contact approves; XMPP ``subscribe`` unless the contact
  already approved this SIP user.
* XMPP ``subscribed`` → NOTIFY ``active`` with the contact's presence as sent *to this SIP
  user*; XMPP presence → NOTIFY with one PIDF tuple per available resource.
* XMPP ``unsubscribed`` or a presence error → NOTIFY ``terminated`` with the reason RFC
  6665 §4.2.2 defines for it (:func:`termination_reason`): ``rejected``, ``noresource``,
  or ``giveup`` with ``retry-after`` for a temporary failure; logged with the reason.
* ``SUBSCRIBE`` with ``Expires: 0`` ends the phone's dialog (RFC 6665 §4.1.2.3) and
  nothing else: a phone that switches off has not removed the contact from its roster
  (an XMPP ``unsubscribe``, RFC 6121 §3.3, would).

Presence is kept per (SIP user, contact) in a :class:`PresenceView`: what the XMPP side
sent to that user, never what it sent to another (directed presence, privacy lists and
blocking decide per recipient, RFC 6121 §4.6 and XEP-0191). It is kept only while a
phone of that user watches the contact. When the view has to be filled without the
contact changing state (a dialog resumed after a restart or on another node, an approval
not followed by presence) the gateway sends a presence probe (RFC 6121 §4.3).

NOTIFYs of one dialog go one at a time (RFC 6665 §4.2.2): the next leaves only after the
previous one's final answer or timeout, carrying the state as it is then; what changed
in between is coalesced into it. A proxy with several workers can then not reorder them.

Dialogs are stored (:mod:`gateway.store.notifiers`, written behind, in batches) so that
the next run of the gateway, or the node that takes over from this one, resumes them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any
from xml.etree.ElementTree import Element

from gateway.logs import log_event
from gateway.sip.addresses import jid_to_sip, sip_to_jid
from gateway.sip.dialogs import NotifierDialog, header_int
from gateway.sip.endpoint import SipEndpoint
from gateway.sip.message import (
    NameAddr,
    SipRequest,
    SipResponse,
    new_tag,
    parse_name_addr,
)
from gateway.sip.messaging import refuse
from gateway.sip.parties import Refused, request_parties, sender_address
from gateway.sip.pidf import PIDF_TYPE, PresenceState, to_pidf
from gateway.sip.spellings import UserSpellings
from gateway.sip.stanzas import presence
from gateway.sip.transaction import RequestReceived
from gateway.store.authorizations import StoreError
from gateway.store.notifiers import CSEQ_BLOCK, AsyncNotifierStore, NotifierRecord
from gateway.xmpp.errors import STANZA_CONDITION_TYPES, parse_error_child
from gateway.xmpp.jid import Jid

log = logging.getLogger("gateway.sip")

ToXmpp = Callable[[Element, Callable[[], None] | None], None]
Pair = tuple[str, str]
MIN_EXPIRES = 60
MAX_EXPIRES = 3600
# RFC 6665 §4.2.2: these answers to a NOTIFY (and a timeout) end the subscription.
ENDS_SUBSCRIPTION = (404, 405, 410, 416, 480, 481, 482, 483, 484, 485, 489, 501, 604)
# An approval not followed by the contact's presence within this many seconds is probed:
# a server that approves an already approved subscription again need not resend presence.
PROBE_DELAY = 1.0
# retry-after of terminated;reason=giveup, for an XMPP error of type "wait".
GIVEUP_RETRY_AFTER = 60
# Conditions saying that the watched contact does not exist (RFC 6665 "noresource").
_NO_RESOURCE = frozenset({"item-not-found", "remote-server-not-found", "gone",
                          "jid-malformed"})


def termination_reason(condition: str, error_type: str = "") -> str:
    """The ``Subscription-State: terminated`` value for an XMPP presence error
    (RFC 6665 §4.2.2 reasons; RFC 6120 §8.3.2 types): a temporary error (type ``wait``)
    is ``giveup`` with ``retry-after`` (the phone may subscribe again later), a contact
    that does not exist is ``noresource``, any other refusal is ``rejected``."""
    kind = error_type or STANZA_CONDITION_TYPES.get(condition, "cancel")
    if kind == "wait":
        return f"giveup;retry-after={GIVEUP_RETRY_AFTER}"
    if condition in _NO_RESOURCE:
        return "noresource"
    return "rejected"


class PresenceView:
    """What one SIP user may see of one XMPP contact, and that user's dialogs watching it."""

    __slots__ = ("approved", "dialogs", "known", "probe_at", "resources")

    def __init__(self) -> None:
        self.resources: dict[str, PresenceState] = {}  # resource → last presence to us
        self.known = False  # presence (or its absence) has been heard since we began
        self.approved = False  # the contact said 'subscribed'
        # the user's phones watching the contact: one, or a few (a list is the smallest)
        self.dialogs: list[NotifierDialog] = []
        self.probe_at = 0.0


class XmppPresenceNotifier:
    """Subscriptions SIP users hold to XMPP contacts, keyed (SIP watcher, XMPP contact)."""

    def __init__(self, endpoint: SipEndpoint, served: frozenset[str], to_xmpp: ToXmpp,
                 expires: int) -> None:
        self.endpoint = endpoint
        self.served = served
        self.trust_asserted_identity = False  # set by the backend
        self.spellings: UserSpellings | None = None  # shared with the other parts
        self.to_xmpp = to_xmpp
        self.expires = expires
        self.views: dict[Pair, PresenceView] = {}
        self.by_call_id: dict[str, NotifierDialog] = {}
        self.store: AsyncNotifierStore | None = None
        self._unsaved: dict[str, NotifierRecord | None] = {}  # None: delete the row
        self._saving: asyncio.Task[None] | None = None
        self._store_failing = False
        self._probes: set[Pair] = set()  # views waiting for PROBE_DELAY

    @property
    def notifiers(self) -> dict[Pair, PresenceView]:
        """The (SIP user, XMPP contact) pairs watched here."""
        return self.views

    def is_watching(self, sip_user: str, contact: str) -> bool:
        return (sip_user, contact) in self.views

    # ------------------------------------------------------------------ XMPP side

    def on_xmpp(self, stanza: Element, kind: str, contact: str, resource: str,
                local_user: str) -> None:
        """available / unavailable / subscribed / unsubscribed / error from ``contact``
        (bare) to ``local_user`` (bare)."""
        key = (local_user, contact)
        view = self.views.get(key)
        if view is None:
            # Nobody of local_user watches contact here: nothing is kept (presence is
            # only ever shown to the user it was sent to, and only while watched).
            if kind == "subscribed":
                log_event(log, logging.INFO, "sip.subscribed_without_subscription",
                          contact=contact, local_user=local_user,
                          reason="the SIP user has no presence subscription to this contact")
            return
        if kind == "available":
            state = PresenceState.from_stanza(stanza)
            if view.known and view.resources.get(resource) == state:
                return  # nothing new for the phones (a repeated broadcast, a probe's answer)
            view.resources[resource] = state
            view.known = True
            self._changed(view)
        elif kind == "unavailable":
            if resource:
                view.resources.pop(resource, None)
            else:  # from the bare JID: the contact as a whole (a probe's answer)
                view.resources.clear()
            view.known = True
            self._changed(view)
        elif kind == "subscribed":
            if view.approved:
                return  # approved again (our subscribe repeated): nothing changes
            view.approved = True
            for dialog in view.dialogs:
                self._save(dialog, view)
            if not view.known:
                view.probe_at = time.monotonic() + PROBE_DELAY
                self._probes.add(key)
            self._changed(view)
        elif kind == "unsubscribed":
            self._end_view(key, view, "rejected", "the contact refused or cancelled the "
                           "subscription (unsubscribed)")
        elif kind == "error":
            self._error(key, view, stanza)

    def _error(self, key: Pair, view: PresenceView, stanza: Element) -> None:
        condition = parse_error_child(stanza)[0] or "undefined-condition"
        error = stanza.find("{jabber:server}error")
        error_type = error.get("type", "") if error is not None else ""
        reason = termination_reason(condition, error_type)
        if view.approved and reason != "noresource":
            # An approved contact that cannot be reached now (its server is down, a
            # probe bounced): shown unavailable until it is heard from again.
            log_event(log, logging.INFO, "sip.contact_unreachable", contact=key[1],
                      local_user=key[0], condition=condition,
                      action="shown unavailable to the SIP user")
            view.resources.clear()
            view.known = True
            self._changed(view)
            return
        self._end_view(key, view, reason, f"presence error {condition}")

    def _end_view(self, key: Pair, view: PresenceView, reason: str, why: str) -> None:
        log_event(log, logging.INFO, "sip.subscription_refused", contact=key[1],
                  local_user=key[0], dialogs=len(view.dialogs), reason=why,
                  subscription_state=f"terminated;reason={reason}")
        for dialog in list(view.dialogs):
            self._terminate(dialog, reason)

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
        if self.spellings is not None:  # a phone that only watches teaches it as well
            self.spellings.learn(watcher, sender_address(
                request, trust_asserted_identity=self.trust_asserted_identity).user)
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
        dialog.expires_at = time.monotonic() + expires
        endpoint.reply(event, 200, to_tag=local_tag,
                       headers=[("Expires", str(expires)), ("Contact", f"<{dialog.contact}>")])
        key = (watcher, contact)
        view = self.views.get(key)
        if expires == 0:
            # A fetch (RFC 6665 §4.4.3): the state we hold for this user, if any, in one
            # final NOTIFY; nothing is subscribed and nothing is kept.
            self._final(dialog, "timeout", view)
            return
        if view is None:
            view = self.views[key] = PresenceView()
        view.dialogs.append(dialog)
        self.by_call_id[dialog.call_id] = dialog
        self._save(dialog, view)
        self._push(dialog)
        if not view.approved:
            self.to_xmpp(presence(watcher, contact, "subscribe"), None)
        elif not view.known and key not in self._probes:
            self._probe(key)

    def _refresh(self, event: RequestReceived, expires: int) -> None:
        request = event.request
        dialog = self.by_call_id.get(request.call_id)
        if dialog is None or dialog.local.tag != request.to.tag \
                or dialog.remote.tag != request.from_.tag \
                or not self._from_watcher(request, dialog):
            # RFC 3261 §12.2.2: the dialog is Call-ID, our tag and the phone's tag; and
            # only its own watcher (the From the proxy authenticated) may refresh it
            # (a target refresh elsewhere would hand that user's view to another)
            self.endpoint.reply(event, 481)
            return
        self.endpoint.reply(event, 200, to_tag=dialog.local.tag,
                            headers=[("Expires", str(expires)),
                                     ("Contact", f"<{dialog.contact}>")])
        contact = request.get("contact")
        if contact:  # a target refresh (RFC 6665 §4.1.2.1 via RFC 3261 §12.2)
            dialog.remote_target = parse_name_addr(contact).uri
        if expires == 0:
            # Unsubscribing ends this dialog only (RFC 6665 §4.1.2.3), not the XMPP
            # subscription (see the module docstring).
            self._terminate(dialog, "timeout")
            return
        dialog.expires_in = expires
        dialog.expires_at = time.monotonic() + expires
        view = self.views.get(dialog.key)
        if view is not None:
            self._save(dialog, view)
        self._push(dialog)  # RFC 6665 §4.2.1.2: a refresh is answered with a NOTIFY

    def _from_watcher(self, request: SipRequest, dialog: NotifierDialog) -> bool:
        try:
            sender = sender_address(request,
                                    trust_asserted_identity=self.trust_asserted_identity)
            return sip_to_jid(sender, resource="").bare == dialog.sip_watcher
        except ValueError:  # AddressError, JidError, SipParseError: not the watcher
            return False

    # ------------------------------------------------------------------ NOTIFY

    def _changed(self, view: PresenceView) -> None:
        for dialog in view.dialogs:
            self._push(dialog)

    def _push(self, dialog: NotifierDialog) -> None:
        """The dialog's state changed: notify now, or after the NOTIFY in flight."""
        if dialog.sending:
            dialog.stale = True
        else:
            self._send(dialog)

    def _send(self, dialog: NotifierDialog) -> None:
        endpoint = self.endpoint
        if self.store is not None and not dialog.ending and \
                dialog.cseq + 1 > dialog.cseq_limit - CSEQ_BLOCK // 2:
            view = self.views.get(dialog.key)
            if view is not None:
                self._save(dialog, view)  # moves the stored CSeq reservation forward
        request = dialog.request("NOTIFY", endpoint.transport.via_transport, endpoint.hostport)
        request.add("event", "presence")
        body = b""
        if dialog.ending:
            request.add("subscription-state", f"terminated;reason={dialog.ending}")
            body = dialog.final_body
        else:
            view = self.views.get(dialog.key)
            approved = view is not None and view.approved
            remaining = max(0, int(dialog.expires_at - time.monotonic()))
            request.add("subscription-state",
                        f"{'active' if approved else 'pending'};expires={remaining}")
            if view is not None and approved:
                body = to_pidf(dialog.xmpp_contact, view.resources)
        if body:
            request.add("content-type", PIDF_TYPE)
            request.body = body
        dialog.sending = True
        dialog.stale = False
        endpoint.send(request, lambda response: self._answered(dialog, response))

    def _answered(self, dialog: NotifierDialog, response: SipResponse | None) -> None:
        dialog.sending = False
        if dialog.ending:
            if not dialog.final_sent:
                dialog.final_sent = True
                self._send(dialog)
            return
        if response is None or response.status in ENDS_SUBSCRIPTION:
            if self.by_call_id.get(dialog.call_id) is dialog:
                self._forget(dialog)
                log_event(log, logging.INFO, "sip.subscription_ended",
                          watcher=dialog.sip_watcher, contact=dialog.xmpp_contact,
                          status=408 if response is None else response.status,
                          reason="the phone's answer to a NOTIFY ends the subscription")
            return
        if dialog.stale:
            self._send(dialog)

    def _terminate(self, dialog: NotifierDialog, reason: str) -> None:
        """End a live dialog with a final NOTIFY (after the one in flight, if any)."""
        view = self.views.get(dialog.key)
        self._forget(dialog)
        self._final(dialog, reason, view)

    def _final(self, dialog: NotifierDialog, reason: str, view: PresenceView | None) -> None:
        dialog.ending = reason
        if reason == "timeout" and view is not None and view.approved:
            # The state at the end of an unsubscription or fetch (RFC 6665 §4.4.3).
            dialog.final_body = to_pidf(dialog.xmpp_contact, view.resources)
        if not dialog.sending:
            dialog.final_sent = True
            self._send(dialog)

    def _forget(self, dialog: NotifierDialog) -> None:
        self.by_call_id.pop(dialog.call_id, None)
        key = dialog.key
        view = self.views.get(key)
        if view is not None:
            view.dialogs = [other for other in view.dialogs if other is not dialog]
            if not view.dialogs:
                del self.views[key]
                self._probes.discard(key)
        self._unsave(dialog.call_id)

    def _probe(self, key: Pair) -> None:
        """Ask the contact's server for the contact's presence to this user (RFC 6121
        §4.3): the answer (or an error) arrives as any presence does."""
        self._probes.discard(key)
        self.to_xmpp(presence(key[0], key[1], "probe"), None)

    # ------------------------------------------------------------------ store

    def _save(self, dialog: NotifierDialog, view: PresenceView) -> None:
        if self.store is None:
            return
        dialog.cseq_limit = dialog.cseq + CSEQ_BLOCK
        self._unsaved[dialog.call_id] = NotifierRecord(
            dialog.call_id, dialog.sip_watcher, dialog.xmpp_contact, dialog.local.tag,
            str(dialog.remote), dialog.remote_target, tuple(dialog.route_set),
            int(dialog.cseq_limit), time.time() + (dialog.expires_at - time.monotonic()),
            view.approved)
        self._flush_soon()

    def _unsave(self, call_id: str) -> None:
        if self.store is not None:
            self._unsaved[call_id] = None
            self._flush_soon()

    def _flush_soon(self) -> None:
        if self._saving is None or self._saving.done():
            self._saving = asyncio.get_running_loop().create_task(self._flush(),
                                                                  name="sip-notifier-store")

    async def _flush(self) -> None:
        """Write what changed, in batches (one transaction per kind of change): a storm
        of phones subscribing costs a few transactions, not one per phone."""
        store = self.store
        while self._unsaved and store is not None:
            batch, self._unsaved = self._unsaved, {}
            saves = [record for record in batch.values() if record is not None]
            removes = [call_id for call_id, record in batch.items() if record is None]
            try:
                if saves:
                    await store.save_notifiers(saves)
                if removes:
                    await store.remove_notifiers(removes)
            except (StoreError, RuntimeError) as exc:
                if not self._store_failing:
                    log_event(log, logging.WARNING, "sip.notifier_not_stored",
                              reason=str(exc), dialogs=len(batch),
                              consequence="these phones' subscriptions are not resumed "
                                          "after a restart or on another node")
                self._store_failing = True
            else:
                self._store_failing = False

    async def settle(self) -> None:
        """Wait for the writes already asked for (before the store closes)."""
        while self._saving is not None and not self._saving.done():
            await asyncio.shield(self._saving)

    def resume(self, records: Iterable[NotifierRecord]) -> int:
        """Go on notifying dialogs held before (this node before a restart, or a node
        that died or drained): same dialog identifiers, our Contact (a target refresh
        for the phone), a CSeq above the stored reservation. Their presence is probed
        (approved) or asked for again (pending)."""
        wall, now = time.time(), time.monotonic()
        resumed = 0
        touched: set[Pair] = set()
        for record in records:
            if record.call_id in self.by_call_id:
                continue
            try:
                served = Jid.parse(record.sip_watcher).domain in self.served
                contact_uri = jid_to_sip(record.xmpp_contact).uri
                remote = parse_name_addr(record.remote)
            except ValueError:
                served = False
            if not served or record.expires_at <= wall + 1:
                self._unsave(record.call_id)
                continue
            dialog = NotifierDialog(
                record.call_id, NameAddr(contact_uri, params={"tag": record.local_tag}),
                remote, record.remote_target, self.endpoint.contact_for(contact_uri),
                route_set=list(record.route_set), cseq=record.cseq,
                sip_watcher=record.sip_watcher, xmpp_contact=record.xmpp_contact,
                expires_in=int(record.expires_at - wall))
            dialog.expires_at = now + (record.expires_at - wall)
            key = dialog.key
            view = self.views.get(key)
            if view is None:
                view = self.views[key] = PresenceView()
            view.approved = view.approved or record.approved
            view.dialogs.append(dialog)
            self.by_call_id[dialog.call_id] = dialog
            self._save(dialog, view)
            touched.add(key)
            resumed += 1
        for key in touched:
            view = self.views[key]
            if view.approved:
                if not view.known:
                    self._probe(key)
            else:
                self.to_xmpp(presence(key[0], key[1], "subscribe"), None)
        return resumed

    # ------------------------------------------------------------------ timers, stop

    def expire(self, now: float) -> None:
        for dialog in list(self.by_call_id.values()):
            if dialog.expires_at and now >= dialog.expires_at:
                self._terminate(dialog, "timeout")
        for key in list(self._probes):
            view = self.views.get(key)
            if view is None or view.known:
                self._probes.discard(key)
            elif now >= view.probe_at:
                self._probe(key)

    def stop(self, *, deactivate: bool) -> None:
        """Stop notifying. ``deactivate``: end every dialog with ``terminated;reason=
        deactivated`` so that the phones subscribe again at once, elsewhere (RFC 6665
        §4.2.2; drain, or no store to resume from). Otherwise the dialogs stay stored and
        the next start resumes them: the phones notice nothing."""
        for dialog in list(self.by_call_id.values()):
            if deactivate:
                self._terminate(dialog, "deactivated")
        self.views.clear()
        self.by_call_id.clear()
        self._probes.clear()

    def drop(self) -> int:
        """Forget every dialog here without telling anyone: their rows belong to another
        node now (this one lost its lease), which resumes them."""
        dropped = len(self.by_call_id)
        self.views.clear()
        self.by_call_id.clear()
        self._probes.clear()
        return dropped

    def describe(self) -> dict[str, Any]:
        return {"notifiers": len(self.views), "notifier_dialogs": len(self.by_call_id)}
