"""The SIP backend: local users live on a SIP server (GATEWAY-SPEC §6).

The gateway is a SIP user agent beside a SIP proxy/registrar/presence server (Kamailio,
Asterisk, a Lync edge …). All requests it originates go to that proxy (our outbound
proxy, RFC 3261 §8.1.2); the proxy sends us every request addressed to a domain it does
not serve (the XMPP side). What maps to what:

Messages (RFC 7572):

* XMPP ``<message/>`` with a ``<body/>`` → SIP ``MESSAGE`` (``text/plain;charset=UTF-8``)
  to ``sip:user@domain``; a failure response (or a timeout) comes back to the XMPP
  sender as a stanza error mapped by RFC 7247 §8.2. Bodiless messages (chat states,
  receipts) have no SIP equivalent and are not sent (logged at debug).
* SIP ``MESSAGE`` → XMPP ``<message type='chat'/>``. We answer once the router has
  decided: ``202 Accepted`` when the stanza is on its way (XMPP has no delivery
  receipts, so "accepted, final disposition unknown" is the truthful answer, RFC 3428
  §7), or the refusal mapped by RFC 7247 §8.1 (e.g. a public-unverified contact the
  user never authorized → 403). An XMPP error that arrives later (the remote server
  is unreachable) is told to the SIP user as a MESSAGE from the contact's address.

Presence (RFC 7248, RFC 6665, RFC 3856, PIDF RFC 3863):

* XMPP ``subscribe`` → SIP ``SUBSCRIBE`` (Event: presence) as the contact, refreshed
  before it expires; ``NOTIFY`` active → XMPP ``subscribed``, its PIDF → XMPP presence;
  ``terminated`` (rejected, noresource …) → ``unsubscribed``; XMPP ``unsubscribe`` →
  ``SUBSCRIBE`` with ``Expires: 0``; XMPP ``probe`` → the last known state, or a
  subscription when the gateway has none (after a restart).
* SIP ``SUBSCRIBE`` to an XMPP contact → ``202`` + ``NOTIFY`` pending, and XMPP
  ``subscribe``; XMPP ``subscribed`` → ``NOTIFY`` active with the contact's presence,
  XMPP presence → ``NOTIFY`` with PIDF, ``unsubscribed`` → ``NOTIFY`` terminated;
  reason=rejected; ``SUBSCRIBE`` with ``Expires: 0`` → XMPP ``unsubscribe``.

Other requests: ``OPTIONS`` → 200 with ``Allow``; ``INVITE`` → 405 (no media gateway);
unknown methods → 501. XMPP ``<iq/>`` has no SIP mapping → ``service-unavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any
from xml.etree.ElementTree import Element, SubElement

from gateway.backend import DeliveryError, StanzaSink
from gateway.logs import log_event
from gateway.sip.addresses import AddressError, jid_to_sip, parse_jid, parse_sip_uri, sip_to_jid
from gateway.sip.dialogs import NotifierDialog, WatchDialog, subscription_state
from gateway.sip.errors import sip_status_for, xmpp_condition_for
from gateway.sip.message import (
    NameAddr,
    SipParseError,
    SipRequest,
    SipResponse,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_message,
    parse_name_addr,
)
from gateway.sip.pidf import PIDF_TYPE, UNAVAILABLE, PidfError, PresenceState, parse_pidf, to_pidf
from gateway.sip.transaction import (
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    TransactionLayer,
    TransactionTimedOut,
)
from gateway.sip.transport import Flow, SipTransport
from gateway.xmpp.errors import error_child, make_error_reply, parse_error_child

log = logging.getLogger("gateway.sip")

NS = "jabber:server"
MESSAGE = f"{{{NS}}}message"
PRESENCE = f"{{{NS}}}presence"
IQ = f"{{{NS}}}iq"
BODY = f"{{{NS}}}body"
ALLOW = "MESSAGE, SUBSCRIBE, NOTIFY, OPTIONS"
TICK = 0.1
MAX_PENDING_REQUESTS = 5000
MIN_EXPIRES = 60
MAX_EXPIRES = 3600
OnResponse = Callable[[SipResponse | None], None]


class SipBackend:
    """A :class:`gateway.backend.LocalBackend` speaking SIP to a proxy."""

    def __init__(self, domains: Iterable[str], *, transport: str = "udp",
                 proxy: tuple[str, int] = ("127.0.0.1", 5060),
                 local: tuple[str, int] = ("127.0.0.1", 5062),
                 subscription_expires: int = MAX_EXPIRES,
                 server_ssl: ssl.SSLContext | None = None,
                 client_ssl: ssl.SSLContext | None = None) -> None:
        self.domains = frozenset(d.lower() for d in domains)
        if not self.domains:
            raise ValueError("the SIP backend needs at least one served domain")
        self.transport = SipTransport(transport, local, proxy, self._on_bytes,
                                      self._on_flow_lost, server_ssl=server_ssl,
                                      client_ssl=client_ssl)
        self.layer = TransactionLayer(reliable=self.transport.reliable)
        self.subscription_expires = max(MIN_EXPIRES, subscription_expires)
        self.watches: dict[tuple[str, str], WatchDialog] = {}
        self.notifiers: dict[tuple[str, str], NotifierDialog] = {}
        self.xmpp_presence: dict[str, dict[str, PresenceState]] = {}
        # Call-ID → dialog, so that an in-dialog request finds its subscription without a
        # scan (entries of ended dialogs are dropped lazily, see _current and _purge).
        self._by_call_id: dict[str, WatchDialog | NotifierDialog] = {}
        self._inflight: dict[str, str | None] = {}  # SIP→XMPP message id → error condition
        self._ids = itertools.count(1)
        self._sink: StanzaSink | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._store: Any = None  # remembers XMPP→SIP subscriptions across restarts
        # Drain (issue 15): new out-of-dialog requests get 503 so that the proxy's
        # dispatcher sends them to another node.
        self.draining = False
        self.sent = 0
        self.received = 0

    @classmethod
    def from_settings(cls, settings: Any, domains: Iterable[str],
                      tls: Any = None) -> SipBackend:
        server_ssl = client_ssl = None
        if settings.transport == "tls":
            server_ssl, client_ssl = _tls_contexts(tls)
        return cls(domains, transport=settings.transport,
                   proxy=(settings.proxy_host, settings.proxy_port),
                   local=(settings.local_host, settings.local_port),
                   subscription_expires=getattr(settings, "subscription_expires", MAX_EXPIRES),
                   server_ssl=server_ssl, client_ssl=client_ssl)

    # ------------------------------------------------------------------ lifecycle

    def use_store(self, store: Any) -> None:
        """Remember active XMPP→SIP presence subscriptions in ``store`` (async
        ``add_watch``/``remove_watch``/``list_watches``): after a restart the XMPP side
        still considers itself subscribed and will not ask again, so the gateway must
        subscribe again by itself (RFC 6121 §3: the subscription outlives sessions)."""
        self._store = store

    async def start(self, sink: StanzaSink) -> None:
        if self._sink is not None:
            raise RuntimeError("SIP backend already started")
        await self.transport.start()
        self._sink = sink
        self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="sip-timers")
        restored = 0
        if self._store is not None:
            for watcher, sip_user in await self._store.list_watches():
                if parse_jid(sip_user).domain in self.domains:
                    self._watch(watcher, sip_user)
                    restored += 1
        log_event(log, logging.INFO, "sip.started", transport=self.transport.kind,
                  local=f"{self.transport.local[0]}:{self.transport.local[1]}",
                  proxy=f"{self.transport.proxy[0]}:{self.transport.proxy[1]}",
                  subscriptions_restored=restored)

    def take_over_watches(self, pairs: Iterable[tuple[str, str]]) -> int:
        """Subscribe for XMPP→SIP watches another gateway node held (it died or drained,
        issue 15): the XMPP side still considers itself subscribed, so we must."""
        taken = 0
        for watcher, sip_user in pairs:
            if parse_jid(sip_user).domain in self.domains:
                self._watch(watcher, sip_user)
                taken += 1
        return taken

    def drop_watches(self, pairs: Iterable[tuple[str, str]] | None = None) -> int:
        """End our XMPP→SIP watch dialogs (all, or those of ``pairs``) on the SIP side but
        leave the store alone: another node holds or takes them over (drain, lost lease,
        an unsubscribe handled by another node)."""
        wanted = None if pairs is None else set(pairs)
        keys = [key for key in self.watches
                if wanted is None or (key[0].lower(), key[1].lower()) in wanted]
        for key in keys:
            dialog = self.watches.pop(key)
            if dialog.established:
                self._send_subscribe(dialog, expires=0)
        return len(keys)

    def held_watches(self) -> list[tuple[str, str]]:
        """The (watcher, SIP user) pairs whose subscription is established and recorded."""
        return [key for key, dialog in self.watches.items() if dialog.announced]

    async def stop(self, grace: float = 2.0) -> None:
        """End our subscriptions (RFC 6665 §4.4.1 ``deactivated``: the watcher may
        re-subscribe at once, i.e. to us after a restart), wait up to ``grace`` for
        outstanding transactions, then close the sockets."""
        if self._sink is None:
            return
        for dialog in list(self.notifiers.values()):
            self._notify(dialog, terminated="deactivated")
        for dialog in list(self.watches.values()):
            if dialog.established:
                self._send_subscribe(dialog, expires=0)
        self.notifiers.clear()
        self.watches.clear()
        deadline = time.monotonic() + grace
        while (self.layer.clients or self._tasks) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.layer.clients:
            log_event(log, logging.WARNING, "sip.stop_unfinished",
                      transactions=len(self.layer.clients),
                      reason="no answer from the SIP proxy before shutdown")
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for task in list(self._tasks):
            task.cancel()
        await self.transport.close()
        self._sink = None

    async def _tick(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            self._dispatch(self.layer.handle_timers(now))
            ticks += 1
            if ticks % 10 == 0:  # subscriptions live for minutes: once a second is plenty
                self._refresh_dialogs(now)
                self._purge_index()
            self._flush()

    def _current(self, call_id: str, local_tag: str) -> WatchDialog | NotifierDialog | None:
        """The live dialog with this Call-ID and our tag, if any (RFC 3261 §12.2.2)."""
        dialog = self._by_call_id.get(call_id)
        if dialog is None or dialog.local.tag != local_tag:
            return None
        if isinstance(dialog, WatchDialog):
            live = self.watches.get((dialog.xmpp_watcher, dialog.sip_user)) is dialog
        else:
            live = self.notifiers.get((dialog.sip_watcher, dialog.xmpp_contact)) is dialog
        if not live:
            del self._by_call_id[call_id]
            return None
        return dialog

    def _purge_index(self) -> None:
        for call_id, dialog in list(self._by_call_id.items()):
            self._current(call_id, dialog.local.tag)

    # ------------------------------------------------------------------ plumbing

    def _flush(self) -> None:
        outbox = self.layer.outbox
        while outbox:
            flow, data = outbox.pop(0)
            self.transport.send(flow, data)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("SIP handler failed", exc_info=task.exception())

    async def _emit(self, stanza: Element) -> None:
        if self._sink is not None:
            await self._sink(stanza)

    def _request(self, method: str, uri: str, sender: NameAddr, recipient: NameAddr,
                 contact: str | None = None) -> SipRequest:
        request = SipRequest([], b"", method, uri)
        request.add("via", f"SIP/2.0/{self.transport.via_transport} {self._hostport()};"
                    f"branch={new_branch()};rport")
        request.add("max-forwards", "70")
        request.add("from", str(sender))
        request.add("to", str(recipient))
        request.add("call-id", new_call_id(self.transport.local[0]))
        request.add("cseq", f"1 {method}")
        if contact:
            request.add("contact", f"<{contact}>")
        return request

    def _hostport(self) -> str:
        host, port = self.transport.local[0], self.transport.local[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _contact_for(self, user_uri: str) -> str:
        user = user_uri.split(":", 1)[1].rpartition("@")[0]
        suffix = "" if self.transport.kind == "udp" else f";transport={self.transport.kind}"
        scheme = "sips" if self.transport.kind == "tls" else "sip"
        return f"{scheme}:{user}@{self._hostport()}{suffix}"

    def _send(self, request: SipRequest, on_response: OnResponse) -> None:
        self.layer.send_request(request, self.transport.proxy_flow, time.monotonic(),
                                on_response)
        self.sent += 1
        self._flush()

    def _reply(self, event: RequestReceived, status: int, reason: str | None = None,
               *, to_tag: str = "", headers: Iterable[tuple[str, str]] = ()) -> None:
        response = make_response(event.request, status, reason, to_tag=to_tag or new_tag())
        for name, value in headers:
            response.add(name, value)
        self.layer.respond(event.transaction, response, time.monotonic())
        self._flush()

    # ------------------------------------------------------------------ SIP input

    def _on_bytes(self, data: bytes, flow: Flow, peer: tuple[str, int]) -> None:
        try:
            message = parse_message(data, stream=flow[0] != "udp")
        except SipParseError as exc:
            log_event(log, logging.WARNING, "sip.malformed", peer=f"{peer[0]}:{peer[1]}",
                      reason=exc.reason, action="dropped")
            return
        self.received += 1
        self._dispatch(self.layer.receive(message, flow, time.monotonic()))
        self._flush()

    def _on_flow_lost(self, flow: Flow) -> None:
        if flow == self.transport.proxy_flow:
            self.transport.forget_proxy_stream()
        self._dispatch(self.layer.fail_flow(flow))

    def _dispatch(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, ResponseReceived | TransactionTimedOut):
                callback = event.context
                response = event.response if isinstance(event, ResponseReceived) else None
                if callback is not None:
                    callback(response)
            elif isinstance(event, RequestReceived):
                self._on_request(event)
            elif isinstance(event, StrayResponse):
                log_event(log, logging.DEBUG, "sip.stray_response",
                          status=event.response.status, call_id=event.response.call_id)

    def _on_request(self, event: RequestReceived) -> None:
        method = event.request.method
        if self.draining and method in ("MESSAGE", "SUBSCRIBE", "OPTIONS") \
                and not event.request.to.tag:
            # RFC 3261 §21.5.4: 503 makes the proxy (Kamailio dispatcher) fail over to
            # another node; in-dialog requests still reach their dialog here.
            self._reply(event, 503, headers=[("Retry-After", "5")])
            return
        if method == "MESSAGE":
            self._spawn(self._answering(event, self._incoming_message(event)))
        elif method == "SUBSCRIBE":
            self._spawn(self._answering(event, self._incoming_subscribe(event)))
        elif method == "NOTIFY":
            self._spawn(self._answering(event, self._incoming_notify(event)))
        elif method == "OPTIONS":
            self._reply(event, 200, headers=[("Allow", ALLOW), ("Accept", "text/plain")])
        elif method in ("INVITE", "BYE", "CANCEL", "PUBLISH", "REGISTER", "REFER", "INFO",
                        "UPDATE", "PRACK"):
            self._reply(event, 405, headers=[("Allow", ALLOW)])
        else:
            self._reply(event, 501)

    async def _answering(self, event: RequestReceived, handler: Any) -> None:
        """Run a request's handler; if it fails, the request still gets a final answer
        (500), so the peer stops retransmitting and our server transaction ends."""
        try:
            await handler
        except Exception:
            log.exception("SIP %s handler failed", event.request.method)
            self._reply(event, 500)  # no effect if an answer was already sent

    # ------------------------------------------------------------------ messages

    async def _incoming_message(self, event: RequestReceived) -> None:
        request = event.request
        try:
            sender, recipient = self._addresses(request)
        except _Refused as refusal:
            self._refuse(event, refusal)
            return
        if request.content_type not in ("", "text/plain"):
            self._reply(event, 415, headers=[("Accept", "text/plain")])
            return
        try:
            text = request.body.decode("utf-8")
        except UnicodeDecodeError:
            self._reply(event, 400, "Body is not UTF-8")
            return
        stanza_id = f"sip-{next(self._ids)}"
        stanza = Element(MESSAGE, {"from": sender, "to": recipient, "type": "chat",
                                   "id": stanza_id})
        SubElement(stanza, BODY).text = text
        self._inflight[stanza_id] = None
        try:
            await self._emit(stanza)
        finally:
            condition = self._inflight.pop(stanza_id, None)
        if condition:
            self._reply(event, sip_status_for(condition), condition.replace("-", " ").title())
        else:
            self._reply(event, 202)

    def _addresses(self, request: SipRequest) -> tuple[str, str]:
        """(XMPP sender, XMPP recipient) of a request from a local SIP user to XMPP."""
        try:
            sender = parse_sip_uri(request.from_.uri)
            recipient = parse_sip_uri(request.uri)
        except (AddressError, SipParseError) as exc:
            raise _Refused(400, str(exc)) from None
        if sender.host not in self.domains:
            raise _Refused(403, f"sender domain {sender.host} is not served by this gateway")
        if recipient.host in self.domains:
            raise _Refused(404, f"{recipient.host} is a SIP domain, not an XMPP one")
        try:
            return sip_to_jid(sender).full, sip_to_jid(recipient, resource="").bare
        except AddressError as exc:
            raise _Refused(400, str(exc)) from None

    def _refuse(self, event: RequestReceived, refusal: _Refused) -> None:
        log_event(log, logging.INFO, "sip.refused", method=event.request.method,
                  status=refusal.status, reason=refusal.reason,
                  sender=event.request.get("from"), uri=event.request.uri)
        self._reply(event, refusal.status)

    def _outgoing_message(self, stanza: Element, sender: str, local_user: str) -> None:
        body = stanza.findtext(BODY)
        if body is None:
            log_event(log, logging.DEBUG, "sip.message_without_body", sender=sender,
                      recipient=local_user, reason="no SIP equivalent (RFC 7572 §4)")
            return
        self._send(self._message_to(local_user, sender, body),
                   lambda response: self._message_outcome(stanza, response))

    def _message_to(self, local_user: str, sender: str, text: str) -> SipRequest:
        """A text/plain MESSAGE (RFC 3428) to a local SIP user from an XMPP address."""
        user_uri = jid_to_sip(local_user).uri
        request = self._request("MESSAGE", user_uri,
                                NameAddr(jid_to_sip(sender).uri, params={"tag": new_tag()}),
                                NameAddr(user_uri))
        request.add("content-type", "text/plain;charset=UTF-8")
        request.body = text.encode("utf-8")
        return request

    def _message_outcome(self, stanza: Element, response: SipResponse | None) -> None:
        if response is not None and response.status < 300:
            return
        if response is None:
            status, reason = 408, "no answer from the SIP side (Timer F)"
        else:
            status, reason = response.status, response.reason
        condition = xmpp_condition_for(status)
        log_event(log, logging.INFO, "sip.message_failed", sender=stanza.get("from"),
                  recipient=stanza.get("to"), status=status, condition=condition)
        reply = make_error_reply(stanza, condition, f"SIP {status} {reason}")
        if reply is not None:
            self._spawn(self._emit(reply))

    def _late_error(self, stanza: Element, local_user: str) -> None:
        """An XMPP error for a message our SIP user sent, after we answered 202."""
        condition = _error_condition(stanza)
        contact = parse_jid(stanza.get("from", "")).bare
        text = stanza.findtext(BODY) or ""
        note = f"[message to {contact} not delivered: {condition}]"
        if text:
            note += f" {text}"
        log_event(log, logging.INFO, "sip.delivery_failure_notice", recipient=local_user,
                  contact=contact, condition=condition)
        self._send(self._message_to(local_user, contact, note), lambda _response: None)

    # ------------------------------------------------------------------ XMPP input

    async def deliver(self, stanza: Element) -> None:
        """Map an XMPP stanza addressed to a local SIP user (see module docstring)."""
        if self._sink is None:
            raise DeliveryError("service-unavailable", "SIP backend not started", "wait")
        try:
            recipient = parse_jid(stanza.get("to", ""))
            sender = parse_jid(stanza.get("from", ""))
        except AddressError as exc:
            raise DeliveryError("jid-malformed", str(exc), "modify") from None
        if recipient.domain not in self.domains:
            raise DeliveryError("item-not-found", f"{recipient.domain} is not a SIP domain here")
        if not recipient.local:
            raise DeliveryError("service-unavailable", "no service at the bare domain")
        local_user = recipient.bare
        stanza_type = stanza.get("type")
        if stanza.tag == IQ:
            if stanza_type in ("get", "set"):
                raise DeliveryError("service-unavailable", "no iq service for SIP users")
            return
        if len(self.layer.clients) >= MAX_PENDING_REQUESTS:
            raise DeliveryError("resource-constraint", "too many SIP requests in flight", "wait")
        if stanza.tag == MESSAGE:
            if stanza_type == "error":
                stanza_id = stanza.get("id", "")
                if stanza_id in self._inflight:
                    self._inflight[stanza_id] = _error_condition(stanza)
                else:
                    self._late_error(stanza, local_user)
                return
            self._outgoing_message(stanza, sender.full, local_user)
        elif stanza.tag == PRESENCE:
            self._xmpp_presence(stanza, sender.bare, sender.resource, local_user)

    def _xmpp_presence(self, stanza: Element, contact: str, resource: str,
                       local_user: str) -> None:
        kind = stanza.get("type") or "available"
        log_event(log, logging.DEBUG, "sip.xmpp_presence", contact=contact, resource=resource,
                  local_user=local_user, kind=kind)
        if kind in ("available", "unavailable"):
            resources = self.xmpp_presence.setdefault(contact, {})
            if kind == "available":
                resources[resource] = PresenceState.from_stanza(stanza)
            else:
                resources.pop(resource, None)
                if not resources:
                    del self.xmpp_presence[contact]
            notifier = self.notifiers.get((local_user, contact))
            if notifier is not None and notifier.active:
                self._notify(notifier)
        elif kind == "subscribe":
            self._watch(contact, local_user)
        elif kind == "unsubscribe":
            self._remember(contact, local_user, False)
            watch = self.watches.pop((contact, local_user), None)
            if watch is not None and watch.established:
                self._send_subscribe(watch, expires=0)
        elif kind == "probe":
            watch = self.watches.get((contact, local_user))
            if watch is None:
                self._watch(contact, local_user)
            elif watch.established:
                self._spawn(self._emit(watch.state.to_stanza(f"{local_user}/sip", contact)))
        elif kind == "subscribed":
            notifier = self.notifiers.get((local_user, contact))
            if notifier is None:
                log_event(log, logging.INFO, "sip.subscribed_without_subscription",
                          contact=contact, local_user=local_user,
                          reason="the SIP user has no presence subscription to this contact")
                return
            notifier.active = True
            self._notify(notifier)
        elif kind == "unsubscribed":
            notifier = self.notifiers.pop((local_user, contact), None)
            if notifier is not None:
                self._notify(notifier, terminated="rejected")
        elif kind == "error":
            log_event(log, logging.INFO, "sip.presence_error", contact=contact,
                      local_user=local_user, condition=_error_condition(stanza))

    # ------------------------------------------------------------------ watching SIP users

    def _watch(self, contact: str, local_user: str) -> None:
        """Subscribe to ``local_user``'s presence on behalf of XMPP ``contact``."""
        key = (contact, local_user)
        existing = self.watches.get(key)
        if existing is not None and existing.established:
            if existing.announced:
                self._spawn(self._announce(existing))
            return
        if existing is not None:
            return  # the SUBSCRIBE is in flight
        contact_uri = jid_to_sip(contact).uri
        user_uri = jid_to_sip(local_user).uri
        dialog = WatchDialog(new_call_id(self.transport.local[0]),
                             NameAddr(contact_uri, params={"tag": new_tag()}),
                             NameAddr(user_uri), user_uri, self._contact_for(contact_uri),
                             xmpp_watcher=contact, sip_user=local_user)
        self.watches[key] = dialog
        self._by_call_id[dialog.call_id] = dialog
        self._send_subscribe(dialog, expires=self.subscription_expires)

    def _remember(self, watcher: str, sip_user: str, active: bool) -> None:
        if self._store is not None:
            operation = self._store.add_watch if active else self._store.remove_watch
            self._spawn(operation(watcher, sip_user))

    async def _announce(self, dialog: WatchDialog) -> None:
        user_jid = parse_jid(dialog.sip_user)
        await self._emit(_presence(user_jid.bare, dialog.xmpp_watcher, "subscribed"))
        await self._emit(dialog.state.to_stanza(f"{user_jid.bare}/sip", dialog.xmpp_watcher))

    def _send_subscribe(self, dialog: WatchDialog, *, expires: int) -> None:
        request = dialog.request("SUBSCRIBE", self.transport.via_transport, self._hostport())
        request.add("event", "presence")
        request.add("accept", PIDF_TYPE)
        request.add("expires", str(expires))
        self._send(request, lambda response: self._subscribe_outcome(dialog, expires, response))

    def _subscribe_outcome(self, dialog: WatchDialog, expires: int,
                           response: SipResponse | None) -> None:
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
            granted = _int(response.get("expires"), expires)
            dialog.expires_at = time.monotonic() + granted
            dialog.established = True
            return
        if self.watches.get(key) is not dialog:
            return
        del self.watches[key]
        status = 408 if response is None else response.status
        if dialog.established and status in (408, 481, 500, 503, 504):
            # A refresh failed because the notifier lost the subscription (restarted) or
            # did not answer: subscribe afresh rather than end the XMPP subscription
            # (RFC 6665 §4.1.2.2); a failure of that new SUBSCRIBE is reported as usual.
            log_event(log, logging.INFO, "sip.resubscribe", contact=dialog.xmpp_watcher,
                      local_user=dialog.sip_user, status=status)
            self._watch(dialog.xmpp_watcher, dialog.sip_user)
            return
        condition = xmpp_condition_for(status)
        log_event(log, logging.INFO, "sip.subscribe_failed", contact=dialog.xmpp_watcher,
                  local_user=dialog.sip_user, status=status, condition=condition)
        user = parse_jid(dialog.sip_user).bare
        if status in (403, 404, 480, 489, 603, 604) and not dialog.established:
            self._remember(dialog.xmpp_watcher, dialog.sip_user, False)
            self._spawn(self._emit(_presence(user, dialog.xmpp_watcher, "unsubscribed")))
        else:
            error = _presence(user, dialog.xmpp_watcher, "error")
            error.append(error_child(condition))
            self._spawn(self._emit(error))

    async def _incoming_notify(self, event: RequestReceived) -> None:
        request = event.request
        dialog = self._current(request.call_id, request.to.tag)
        if not isinstance(dialog, WatchDialog):
            self._reply(event, 481)
            return
        self._reply(event, 200)
        if not dialog.remote.tag and request.from_.tag:
            dialog.remote = dialog.remote.with_tag(request.from_.tag)
        contact = request.get("contact")
        if contact:
            dialog.remote_target = parse_name_addr(contact).uri
        state, params = subscription_state(request.get("subscription-state") or "active")
        user = parse_jid(dialog.sip_user).bare
        if state == "terminated":
            self.watches.pop((dialog.xmpp_watcher, dialog.sip_user), None)
            reason = params.get("reason", "")
            if reason in ("deactivated", "timeout", "probation"):
                # RFC 6665 §4.1.3: the subscriber may (should) subscribe again.
                self._watch(dialog.xmpp_watcher, dialog.sip_user)
                return
            self._remember(dialog.xmpp_watcher, dialog.sip_user, False)
            if dialog.state.available:
                await self._emit(UNAVAILABLE.to_stanza(f"{user}/sip", dialog.xmpp_watcher))
            await self._emit(_presence(user, dialog.xmpp_watcher, "unsubscribed"))
            return
        dialog.established = True
        if "expires" in params:
            dialog.expires_at = time.monotonic() + _int(params["expires"], 0)
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
            self._remember(dialog.xmpp_watcher, dialog.sip_user, True)
            await self._emit(_presence(user, dialog.xmpp_watcher, "subscribed"))
        await self._emit(dialog.state.to_stanza(f"{user}/sip", dialog.xmpp_watcher))

    def _refresh_dialogs(self, now: float) -> None:
        for dialog in list(self.watches.values()):
            if dialog.established and not dialog.refreshing and dialog.expires_at:
                lifetime_left = dialog.expires_at - now
                if lifetime_left < min(60.0, self.subscription_expires / 10):
                    dialog.refreshing = True
                    self._send_subscribe(dialog, expires=self.subscription_expires)
        for key, notifier in list(self.notifiers.items()):
            if notifier.expires_at and now >= notifier.expires_at:
                del self.notifiers[key]
                self._notify(notifier, terminated="timeout")

    # ------------------------------------------------------------------ SIP users watching XMPP

    async def _incoming_subscribe(self, event: RequestReceived) -> None:
        request = event.request
        if (request.get("event") or "").split(";", 1)[0].strip().lower() != "presence":
            self._reply(event, 489, headers=[("Allow-Events", "presence")])
            return
        expires = _int(request.get("expires"), self.subscription_expires)
        if 0 < expires < MIN_EXPIRES:
            self._reply(event, 423, "Interval Too Brief", headers=[("Min-Expires",
                                                                      str(MIN_EXPIRES))])
            return
        expires = min(expires, max(MAX_EXPIRES, self.subscription_expires))
        if request.to.tag:
            self._refresh_subscription(event, expires)
            return
        try:
            sender, recipient = self._addresses(request)
        except _Refused as refusal:
            self._refuse(event, refusal)
            return
        watcher, contact = parse_jid(sender).bare, recipient
        contact_uri = jid_to_sip(contact).uri
        local_tag = new_tag()
        remote_contact = request.get("contact")
        if not remote_contact:
            self._reply(event, 400, "Missing Contact")
            return
        dialog = NotifierDialog(
            request.call_id, NameAddr(contact_uri, params={"tag": local_tag}), request.from_,
            parse_name_addr(remote_contact).uri, self._contact_for(contact_uri),
            route_set=request.get_all("record-route"), sip_watcher=watcher,
            xmpp_contact=contact, expires_in=expires)
        dialog.expires_at = time.monotonic() + expires if expires else 0.0
        self._reply(event, 202, to_tag=local_tag,
                    headers=[("Expires", str(expires)), ("Contact", f"<{dialog.contact}>")])
        if expires == 0:  # a one-time fetch (RFC 6665 §4.4.3)
            self._notify(dialog, terminated="timeout")
            return
        previous = self.notifiers.get((watcher, contact))
        dialog.active = previous.active if previous is not None else False
        self.notifiers[(watcher, contact)] = dialog
        self._by_call_id[dialog.call_id] = dialog
        self._notify(dialog)
        await self._emit(_presence(watcher, contact, "subscribe"))

    def _refresh_subscription(self, event: RequestReceived, expires: int) -> None:
        request = event.request
        dialog = self._current(request.call_id, request.to.tag)
        if not isinstance(dialog, NotifierDialog):
            self._reply(event, 481)
            return
        key = (dialog.sip_watcher, dialog.xmpp_contact)
        self._reply(event, 200, to_tag=dialog.local.tag,
                    headers=[("Expires", str(expires)), ("Contact", f"<{dialog.contact}>")])
        if expires == 0:
            del self.notifiers[key]
            self._notify(dialog, terminated="timeout")
            self._spawn(self._emit(_presence(dialog.sip_watcher, dialog.xmpp_contact,
                                             "unsubscribe")))
            return
        dialog.expires_in = expires
        dialog.expires_at = time.monotonic() + expires
        self._notify(dialog)

    def _notify(self, dialog: NotifierDialog, *, terminated: str = "") -> None:
        request = dialog.request("NOTIFY", self.transport.via_transport, self._hostport())
        request.add("event", "presence")
        if terminated:
            request.add("subscription-state", f"terminated;reason={terminated}")
        else:
            remaining = max(0, int(dialog.expires_at - time.monotonic()))
            state = "active" if dialog.active else "pending"
            request.add("subscription-state", f"{state};expires={remaining}")
        if dialog.active and not terminated:
            request.add("content-type", PIDF_TYPE)
            request.body = to_pidf(dialog.xmpp_contact, self._aggregate(dialog.xmpp_contact))
        self._send(request, lambda response: self._notify_outcome(dialog, response))

    def _notify_outcome(self, dialog: NotifierDialog, response: SipResponse | None) -> None:
        if response is None or response.status in (404, 405, 410, 416, 480, 481, 482, 483,
                                                   484, 485, 489, 501, 604):
            # RFC 6665 §4.2.2: these (and a timeout) end the subscription.
            key = (dialog.sip_watcher, dialog.xmpp_contact)
            if self.notifiers.get(key) is dialog:
                del self.notifiers[key]
                log_event(log, logging.INFO, "sip.subscription_ended",
                          watcher=dialog.sip_watcher, contact=dialog.xmpp_contact,
                          status=408 if response is None else response.status)

    def _aggregate(self, contact: str) -> PresenceState:
        """The most available of the contact's resources (RFC 6121 §4.4.3 aggregation,
        simplified: any available resource makes the contact available)."""
        resources = self.xmpp_presence.get(contact)
        if not resources:
            return UNAVAILABLE
        rank = {"chat": 0, "": 1, "away": 2, "xa": 3, "dnd": 4}
        return min(resources.values(), key=lambda state: rank.get(state.show, 5))

    async def options(self, timeout: float) -> SipResponse | None:
        """One OPTIONS to the proxy (RFC 3261 §11), through the same transport and
        transaction layer as everything else: the proxy's final answer, or None when
        there was none within ``timeout`` (or the connection failed: see
        ``transport.last_error``)."""
        answered: asyncio.Future[SipResponse | None] = (
            asyncio.get_running_loop().create_future())
        target = f"sip:{self.transport.proxy[0]}:{self.transport.proxy[1]}"
        request = self._request(
            "OPTIONS", target,
            NameAddr(f"sip:gateway-check@{self._hostport()}", params={"tag": new_tag()}),
            NameAddr(target))
        self._send(request, lambda response: answered.done() or answered.set_result(response))
        try:
            return await asyncio.wait_for(asyncio.shield(answered), timeout)
        except TimeoutError:
            return None

    def describe(self) -> dict[str, Any]:
        return {"transport": self.transport.kind, "watches": len(self.watches),
                "notifiers": len(self.notifiers), "transactions": len(self.layer.clients),
                "sent": self.sent, "received": self.received}


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _int(value: str | None, default: int) -> int:
    if value is None or not value.strip().isdigit():
        return default
    return int(value.strip())


def _presence(sender: str, recipient: str, kind: str) -> Element:
    return Element(PRESENCE, {"from": sender, "to": recipient, "type": kind})


def _error_condition(stanza: Element) -> str:
    return parse_error_child(stanza)[0] or "undefined-condition"


def _tls_contexts(tls: Any) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Server context from the gateway's certificate, client context verifying the proxy
    against ``tls.ca_file`` (and the system CAs when ``use_system_cas``)."""
    if tls is None:
        raise ValueError("sip.transport tls needs the tls section (certificate, key, ca_file)")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(str(tls.certificate), str(tls.key))
    client = ssl.create_default_context(
        cafile=str(tls.ca_file) if tls.ca_file else None)
    if not tls.ca_file and not getattr(tls, "use_system_cas", True):
        raise ValueError("sip.transport tls needs tls.ca_file or tls.use_system_cas")
    return server, client
