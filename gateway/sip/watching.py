"""XMPP contacts watching SIP users: the gateway subscribes on their behalf (RFC 7248
§5, RFC 6665, RFC 3856, PIDF RFC 3863).

XMPP ``subscribe`` → SIP ``SUBSCRIBE`` (Event: presence) as the contact, refreshed before
it expires; ``NOTIFY`` active → XMPP ``subscribed``, its PIDF → XMPP presence;
``terminated`` (rejected, noresource …) → ``unsubscribed``; XMPP ``unsubscribe`` →
``SUBSCRIBE`` with ``Expires: 0``; XMPP ``probe`` → the last known state, or a
subscription when the gateway has none (after a restart).

Active subscriptions are remembered in the store: after a restart the XMPP side still
considers itself subscribed and will not ask again (RFC 6121 §3: the subscription
outlives sessions), so the gateway subscribes again by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any
from xml.etree.ElementTree import Element

from gateway.logs import log_event
from gateway.sip.addresses import jid_to_sip
from gateway.sip.dialogs import (
    WatchDialog,
    header_int,
    live_dialog,
    purge_ended,
    subscription_state,
)
from gateway.sip.endpoint import SipEndpoint
from gateway.sip.errors import xmpp_condition_for
from gateway.sip.message import NameAddr, SipResponse, new_call_id, new_tag, parse_name_addr
from gateway.sip.pidf import PIDF_TYPE, UNAVAILABLE, PidfError, parse_pidf
from gateway.sip.stanzas import presence
from gateway.sip.transaction import RequestReceived
from gateway.xmpp.errors import error_child
from gateway.xmpp.jid import Jid

log = logging.getLogger("gateway.sip")

ToXmpp = Callable[[Element, Callable[[], None] | None], None]
RESUBSCRIBE_ON = (408, 481, 500, 503, 504)
REJECTED_ON = (403, 404, 480, 489, 603, 604)


class SipPresenceWatches:
    """Subscriptions the gateway holds toward SIP users, keyed (XMPP watcher, SIP user)."""

    def __init__(self, endpoint: SipEndpoint, to_xmpp: ToXmpp, expires: int) -> None:
        self.endpoint = endpoint
        self.to_xmpp = to_xmpp
        self.expires = expires
        self.watches: dict[tuple[str, str], WatchDialog] = {}
        self.by_call_id: dict[str, WatchDialog] = {}
        self.store: Any = None  # async add_watch / remove_watch / list_watches
        self._store_tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ XMPP side

    def on_xmpp(self, kind: str, contact: str, local_user: str) -> None:
        """subscribe / unsubscribe / probe from XMPP ``contact`` about ``local_user``."""
        if kind == "subscribe":
            self.watch(contact, local_user)
        elif kind == "unsubscribe":
            self.remember(contact, local_user, False)
            dialog = self.watches.pop((contact, local_user), None)
            if dialog is not None and dialog.established:
                self._send_subscribe(dialog, expires=0)
        elif kind == "probe":
            dialog = self.watches.get((contact, local_user))
            if dialog is None:
                self.watch(contact, local_user)
            elif dialog.established:
                self.to_xmpp(dialog.state.to_stanza(f"{local_user}/sip", contact), None)

    def watch(self, contact: str, local_user: str) -> None:
        """Subscribe to ``local_user``'s presence on behalf of XMPP ``contact``."""
        key = (contact, local_user)
        existing = self.watches.get(key)
        if existing is not None:
            if existing.established and existing.announced:
                self._announce(existing)
            return  # otherwise the SUBSCRIBE is in flight
        contact_uri = jid_to_sip(contact).uri
        user_uri = jid_to_sip(local_user).uri
        endpoint = self.endpoint
        dialog = WatchDialog(new_call_id(endpoint.transport.local[0]),
                             NameAddr(contact_uri, params={"tag": new_tag()}),
                             NameAddr(user_uri), user_uri, endpoint.contact_for(contact_uri),
                             xmpp_watcher=contact, sip_user=local_user)
        self.watches[key] = dialog
        self.by_call_id[dialog.call_id] = dialog
        self._send_subscribe(dialog, expires=self.expires)

    def take_over(self, pairs: Iterable[tuple[str, str]], served: frozenset[str]) -> int:
        """Subscribe for watches another gateway node held (issue 15)."""
        taken = 0
        for watcher, sip_user in pairs:
            if Jid.parse(sip_user).domain in served:
                self.watch(watcher, sip_user)
                taken += 1
        return taken

    def drop(self, pairs: Iterable[tuple[str, str]] | None = None) -> int:
        """End our dialogs (all, or those of ``pairs``) but leave the store alone."""
        wanted = None if pairs is None else set(pairs)
        keys = [key for key in self.watches
                if wanted is None or (key[0].lower(), key[1].lower()) in wanted]
        for key in keys:
            dialog = self.watches.pop(key)
            if dialog.established:
                self._send_subscribe(dialog, expires=0)
        return len(keys)

    def held(self) -> list[tuple[str, str]]:
        """(watcher, SIP user) pairs whose subscription is established and recorded."""
        return [key for key, dialog in self.watches.items() if dialog.announced]

    def remember(self, watcher: str, sip_user: str, active: bool) -> None:
        if self.store is None:
            return
        operation = self.store.add_watch if active else self.store.remove_watch
        task = asyncio.get_running_loop().create_task(operation(watcher, sip_user))
        self._store_tasks.add(task)
        task.add_done_callback(self._stored)

    def _stored(self, task: asyncio.Task[Any]) -> None:
        self._store_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log_event(log, logging.WARNING, "sip.watch_not_stored",
                      reason=str(task.exception()),
                      consequence="this subscription is not renewed after a restart")

    async def restore(self, served: frozenset[str]) -> int:
        """Subscribe again for every watch the store remembers (after a restart)."""
        if self.store is None:
            return 0
        restored = 0
        for watcher, sip_user in await self.store.list_watches():
            if Jid.parse(sip_user).domain in served:
                self.watch(watcher, sip_user)
                restored += 1
        return restored

    def _announce(self, dialog: WatchDialog) -> None:
        user = Jid.parse(dialog.sip_user).bare
        self.to_xmpp(presence(user, dialog.xmpp_watcher, "subscribed"), None)
        self.to_xmpp(dialog.state.to_stanza(f"{user}/sip", dialog.xmpp_watcher), None)

    # ------------------------------------------------------------------ SUBSCRIBE

    def _send_subscribe(self, dialog: WatchDialog, *, expires: int) -> None:
        endpoint = self.endpoint
        request = dialog.request("SUBSCRIBE", endpoint.transport.via_transport,
                                 endpoint.hostport)
        request.add("event", "presence")
        request.add("accept", PIDF_TYPE)
        request.add("expires", str(expires))
        endpoint.send(request, lambda response: self._outcome(dialog, expires, response))

    def _outcome(self, dialog: WatchDialog, expires: int, response: SipResponse | None) -> None:
        dialog.refreshing = False
        if expires == 0:
            return
        key = (dialog.xmpp_watcher, dialog.sip_user)
        if response is not None and response.status < 300:
            if not dialog.remote.tag and response.to.tag:
                dialog.remote = dialog.remote.with_tag(response.to.tag)
            contact = response.get("contact")
            if contact:
                dialog.remote_target = parse_name_addr(contact).uri
            dialog.route_set = list(reversed(response.get_all("record-route")))
            granted = header_int(response.get("expires"), expires)
            dialog.expires_at = time.monotonic() + granted
            dialog.established = True
            return
        if self.watches.get(key) is not dialog:
            return
        del self.watches[key]
        status = 408 if response is None else response.status
        if dialog.established and status in RESUBSCRIBE_ON:
            # A refresh failed because the notifier lost the subscription (restarted) or
            # did not answer: subscribe afresh rather than end the XMPP subscription
            # (RFC 6665 §4.1.2.2); a failure of that new SUBSCRIBE is reported as usual.
            log_event(log, logging.INFO, "sip.resubscribe", contact=dialog.xmpp_watcher,
                      local_user=dialog.sip_user, status=status)
            self.watch(dialog.xmpp_watcher, dialog.sip_user)
            return
        condition = xmpp_condition_for(status)
        log_event(log, logging.INFO, "sip.subscribe_failed", contact=dialog.xmpp_watcher,
                  local_user=dialog.sip_user, status=status, condition=condition)
        user = Jid.parse(dialog.sip_user).bare
        if status in REJECTED_ON and not dialog.established:
            self.remember(dialog.xmpp_watcher, dialog.sip_user, False)
            self.to_xmpp(presence(user, dialog.xmpp_watcher, "unsubscribed"), None)
        else:
            error = presence(user, dialog.xmpp_watcher, "error")
            error.append(error_child(condition))
            self.to_xmpp(error, None)

    # ------------------------------------------------------------------ NOTIFY

    def incoming_notify(self, event: RequestReceived) -> None:
        request = event.request
        dialog = live_dialog(self.by_call_id, self.watches, request.call_id, request.to.tag)
        if dialog is None:
            self.endpoint.reply(event, 481)
            return
        self.endpoint.reply(event, 200)
        if not dialog.remote.tag and request.from_.tag:
            dialog.remote = dialog.remote.with_tag(request.from_.tag)
        contact = request.get("contact")
        if contact:
            dialog.remote_target = parse_name_addr(contact).uri
        state, params = subscription_state(request.get("subscription-state") or "active")
        user = Jid.parse(dialog.sip_user).bare
        if state == "terminated":
            self.watches.pop((dialog.xmpp_watcher, dialog.sip_user), None)
            reason = params.get("reason", "")
            if reason in ("deactivated", "timeout", "probation"):
                # RFC 6665 §4.1.3: the subscriber may (should) subscribe again.
                self.watch(dialog.xmpp_watcher, dialog.sip_user)
                return
            self.remember(dialog.xmpp_watcher, dialog.sip_user, False)
            if dialog.state.available:
                self.to_xmpp(UNAVAILABLE.to_stanza(f"{user}/sip", dialog.xmpp_watcher), None)
            self.to_xmpp(presence(user, dialog.xmpp_watcher, "unsubscribed"), None)
            return
        dialog.established = True
        if "expires" in params:
            dialog.expires_at = time.monotonic() + header_int(params["expires"], 0)
        if state != "active":
            return  # pending: the SIP user has not decided yet
        if request.body and request.content_type == PIDF_TYPE:
            try:
                dialog.state = parse_pidf(request.body)
            except PidfError as exc:
                log_event(log, logging.INFO, "sip.bad_pidf", local_user=dialog.sip_user,
                          reason=str(exc), action="treated as unavailable")
                dialog.state = UNAVAILABLE
        elif not request.body:
            dialog.state = UNAVAILABLE
        if not dialog.announced:
            dialog.announced = True
            self.remember(dialog.xmpp_watcher, dialog.sip_user, True)
            self.to_xmpp(presence(user, dialog.xmpp_watcher, "subscribed"), None)
        self.to_xmpp(dialog.state.to_stanza(f"{user}/sip", dialog.xmpp_watcher), None)

    # ------------------------------------------------------------------ timers, stop

    def refresh(self, now: float) -> None:
        """Refresh subscriptions close to expiry (once a second is plenty: they live for
        minutes), and forget index entries of dialogs that ended."""
        margin = min(60.0, self.expires / 10)
        for dialog in list(self.watches.values()):
            if (dialog.established and not dialog.refreshing and dialog.expires_at
                    and dialog.expires_at - now < margin):
                dialog.refreshing = True
                self._send_subscribe(dialog, expires=self.expires)
        purge_ended(self.by_call_id, self.watches)

    def stop(self) -> None:
        """Unsubscribe (Expires: 0) everywhere we are subscribed."""
        for dialog in list(self.watches.values()):
            if dialog.established:
                self._send_subscribe(dialog, expires=0)
        self.watches.clear()
        self.by_call_id.clear()
