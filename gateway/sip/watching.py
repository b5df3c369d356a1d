"""XMPP contacts watching SIP users: the gateway subscribes on their behalf (RFC 8048
§5.2 and §6, RFC 6665, RFC 3856, PIDF RFC 3863).

XMPP ``subscribe`` → SIP ``SUBSCRIBE`` (Event: presence) as the contact, refreshed before
it expires; ``NOTIFY`` active → XMPP ``subscribed``, its PIDF → XMPP presence; XMPP
``unsubscribe`` → ``SUBSCRIBE`` with ``Expires: 0``; XMPP ``probe`` → the SIP user's
current state, to a contact the SIP user authorized (and nothing to anyone else).

Final and temporary failures are told apart (RFC 7247 §8 maps 480 to
``recipient-unavailable``, an error of type *wait*; RFC 6665 §4.1.3 gives ``giveup`` and
``probation`` a ``retry-after``): only a refusal (403, 404, 489, 603, 604, or
``terminated`` with ``rejected``/``noresource``) ends the XMPP subscription with
``unsubscribed``. A SIP user who is not registered (480), a presence server that is busy
or down (5xx, no answer) or that gave up keeps the subscription: the contact sees the
user unavailable and the gateway subscribes again with exponential backoff
(:data:`RETRY_FIRST` doubling to :data:`RETRY_MAX`, or the server's ``Retry-After``), so
that when the phone registers the contact sees it without asking again.

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
# A SUBSCRIBE refused for good: the SIP user (or its presence server) said no, or the
# user does not exist (RFC 3261 §21: 403 Forbidden, 404 Not Found, 603 Decline, 604 Does
# Not Exist Anywhere; 489: presence is not served at all).
REFUSED = (403, 404, 489, 603, 604)
# Worth trying again later (RFC 3261 §21: the condition is temporary): no answer, the user
# not registered (480) or busy (486, 600), the server in trouble (500, 503, 504).
TEMPORARY = (408, 480, 486, 500, 503, 504, 600)
# Subscription-State reasons that end the XMPP subscription (RFC 6665 §4.2.2).
ENDING_REASONS = ("rejected", "noresource", "invariant")
RETRY_FIRST = 2.0  # seconds before the first retry after a temporary failure
RETRY_MAX = 120.0


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
            existing = self.watches.get((contact, local_user))
            if existing is not None:
                existing.probing = False  # asked for now: refusals are told
            self.watch(contact, local_user)
        elif kind == "unsubscribe":
            self.remember(contact, local_user, False)
            dialog = self.watches.pop((contact, local_user), None)
            if dialog is not None and dialog.established:
                self._send_subscribe(dialog, expires=0)
        elif kind == "probe":
            # RFC 6121 §4.3.2: the current state, only to a contact the SIP user
            # authorized. A probe means the contact's server considers itself subscribed
            # (§4.3.1); with no watch here (a store that lost it, one written by nobody)
            # the presence server is asked with a SUBSCRIBE (RFC 8048 polls with a
            # one-time SUBSCRIBE; a lasting one keeps the subscription the contact's
            # server believes in) and decides: the state goes to the contact once the
            # SIP side authorizes it (NOTIFY active), and nothing at all if it does not.
            dialog = self.watches.get((contact, local_user))
            if dialog is None:
                self.watch(contact, local_user, probing=True)
            elif dialog.announced and (dialog.established or dialog.retry_at):
                self.to_xmpp(dialog.state.to_stanza(f"{local_user}/sip", contact), None)

    def watch(self, contact: str, local_user: str, *, announced: bool = False,
              attempts: int = 0, probing: bool = False) -> None:
        """Subscribe to ``local_user``'s presence on behalf of XMPP ``contact``
        (``announced``: XMPP was already told 'subscribed', e.g. before a restart)."""
        key = (contact, local_user)
        existing = self.watches.get(key)
        if existing is not None:
            if existing.established and existing.announced:
                self._announce(existing)
            return  # otherwise the SUBSCRIBE is in flight, or waits for its retry
        contact_uri = jid_to_sip(contact).uri
        user_uri = jid_to_sip(local_user).uri
        endpoint = self.endpoint
        dialog = WatchDialog(new_call_id(endpoint.transport.local[0]),
                             NameAddr(contact_uri, params={"tag": new_tag()}),
                             NameAddr(user_uri), user_uri, endpoint.contact_for(contact_uri),
                             xmpp_watcher=contact, sip_user=local_user,
                             announced=announced, attempts=attempts, probing=probing)
        self.watches[key] = dialog
        self.by_call_id[dialog.call_id] = dialog
        self._send_subscribe(dialog, expires=self.expires)

    def take_over(self, pairs: Iterable[tuple[str, str]], served: frozenset[str]) -> int:
        """Subscribe for watches another gateway node held (it died or drained)."""
        taken = 0
        for watcher, sip_user in pairs:
            if Jid.parse(sip_user).domain in served:
                self.watch(watcher, sip_user, announced=True)
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
                self.watch(watcher, sip_user, announced=True)  # stored once announced
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
        status = 408 if response is None else response.status
        if dialog.established and status == 481:
            # The notifier lost the subscription (restarted): subscribe afresh rather than
            # end the XMPP subscription (RFC 6665 §4.1.2.2).
            del self.watches[key]
            log_event(log, logging.INFO, "sip.resubscribe", contact=dialog.xmpp_watcher,
                      local_user=dialog.sip_user, status=status)
            self.watch(dialog.xmpp_watcher, dialog.sip_user, announced=dialog.announced)
            return
        if status in TEMPORARY:
            retry_after = header_int((response.get("retry-after") or "").split(";")[0]
                                     if response is not None else None, 0)
            self._retry_later(dialog, f"SIP {status}", retry_after)
            return
        del self.watches[key]
        condition = xmpp_condition_for(status)
        log_event(log, logging.INFO, "sip.subscribe_failed", contact=dialog.xmpp_watcher,
                  local_user=dialog.sip_user, status=status, condition=condition,
                  action="unsubscribed" if status in REFUSED else "presence error")
        user = Jid.parse(dialog.sip_user).bare
        self.remember(dialog.xmpp_watcher, dialog.sip_user, False)
        if dialog.probing and not dialog.announced:
            return  # a probe of a contact the SIP user never authorized: nothing to say
        if dialog.state.available:
            self.to_xmpp(UNAVAILABLE.to_stanza(f"{user}/sip", dialog.xmpp_watcher), None)
        if status in REFUSED:
            self.to_xmpp(presence(user, dialog.xmpp_watcher, "unsubscribed"), None)
        else:
            error = presence(user, dialog.xmpp_watcher, "error")
            error.append(error_child(condition))
            self.to_xmpp(error, None)

    def _retry_later(self, dialog: WatchDialog, why: str, retry_after: int) -> None:
        """A temporary failure: keep the watch (and the XMPP subscription), show the SIP
        user unavailable, subscribe again later (see the module docstring)."""
        dialog.attempts += 1
        delay = max(float(retry_after), min(RETRY_MAX, RETRY_FIRST * 2 ** (dialog.attempts - 1)))
        dialog.retry_at = time.monotonic() + delay
        dialog.established = False
        log_event(log, logging.INFO, "sip.subscribe_deferred", contact=dialog.xmpp_watcher,
                  local_user=dialog.sip_user, reason=why, attempt=dialog.attempts,
                  retry_in=f"{delay:g}", action="subscription kept; SIP user shown unavailable")
        if dialog.probing and not dialog.announced:
            return
        if dialog.state.available or dialog.attempts == 1:
            dialog.state = UNAVAILABLE
            user = Jid.parse(dialog.sip_user).bare
            self.to_xmpp(UNAVAILABLE.to_stanza(f"{user}/sip", dialog.xmpp_watcher), None)

    # ------------------------------------------------------------------ NOTIFY

    def incoming_notify(self, event: RequestReceived) -> None:
        request = event.request
        dialog = live_dialog(self.by_call_id, self.watches, request.call_id, request.to.tag)
        if dialog is None:
            self.endpoint.reply(event, 481)
            return
        number = request.cseq[0]
        if number <= dialog.remote_cseq:
            # Out of order (RFC 3261 §12.2.2): the proxy's workers relay in parallel, and
            # this older state came after a newer one. Applying it would leave the contact
            # with stale presence; the newer NOTIFY already told the truth.
            self.endpoint.reply(event, 500, "Out Of Order")
            return
        dialog.remote_cseq = number
        self.endpoint.reply(event, 200)
        if not dialog.remote.tag and request.from_.tag:
            dialog.remote = dialog.remote.with_tag(request.from_.tag)
        contact = request.get("contact")
        if contact:
            dialog.remote_target = parse_name_addr(contact).uri
        state, params = subscription_state(request.get("subscription-state") or "active")
        user = Jid.parse(dialog.sip_user).bare
        if state == "terminated":
            reason = params.get("reason", "")
            retry_after = header_int(params.get("retry-after"), 0)
            if reason not in ENDING_REASONS and (reason == "giveup" or retry_after):
                # RFC 6665 §4.1.3: try again, after retry-after if given; meanwhile the
                # SIP user is shown unavailable and the XMPP subscription stays.
                self._retry_later(dialog, f"terminated;reason={reason}", retry_after)
                return
            self.watches.pop((dialog.xmpp_watcher, dialog.sip_user), None)
            if reason not in ENDING_REASONS:
                # deactivated, timeout, probation (or no reason): subscribe again at once
                # (RFC 6665 §4.1.3).
                self.watch(dialog.xmpp_watcher, dialog.sip_user, announced=dialog.announced)
                return
            self.remember(dialog.xmpp_watcher, dialog.sip_user, False)
            if dialog.probing and not dialog.announced:
                return  # see _outcome: a probe is not answered for the unauthorized
            if dialog.state.available:
                self.to_xmpp(UNAVAILABLE.to_stanza(f"{user}/sip", dialog.xmpp_watcher), None)
            self.to_xmpp(presence(user, dialog.xmpp_watcher, "unsubscribed"), None)
            return
        dialog.established = True
        if "expires" in params:
            dialog.expires_at = time.monotonic() + header_int(params["expires"], 0)
        if state != "active":
            return  # pending: the SIP user has not decided yet
        dialog.attempts = 0
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
            if dialog.retry_at and now >= dialog.retry_at:
                key = (dialog.xmpp_watcher, dialog.sip_user)
                del self.watches[key]
                self.watch(dialog.xmpp_watcher, dialog.sip_user, announced=dialog.announced,
                           attempts=dialog.attempts, probing=dialog.probing)
            elif (dialog.established and not dialog.refreshing and dialog.expires_at
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
