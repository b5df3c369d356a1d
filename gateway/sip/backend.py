"""The SIP backend: local users live on a SIP server.

The gateway is a SIP user agent beside a SIP proxy/registrar/presence server (Kamailio,
Asterisk, a Lync edge …). All requests it originates go to that proxy (our outbound
proxy, RFC 3261 §8.1.2); the proxy sends us every request addressed to a domain it does
not serve (the XMPP side). What maps to what lives in one module per job:

* :mod:`gateway.sip.messaging` — messages both ways (RFC 7572) and their errors;
* :mod:`gateway.sip.watching` — XMPP contacts watching SIP users (we SUBSCRIBE);
* :mod:`gateway.sip.notifying` — SIP users watching XMPP contacts (we NOTIFY);
* :mod:`gateway.sip.errors` — the RFC 7247 §8 error tables;
* :mod:`gateway.sip.endpoint` — transport, transactions, timers, flow control.

Other requests: ``OPTIONS`` → 200 with ``Allow``; ``INVITE`` → 405 (no media gateway);
unknown methods → 501. XMPP ``<iq/>`` has no SIP mapping → ``service-unavailable``.

Flow control. XMPP → SIP: :meth:`SipBackend.deliver`
waits while the proxy has a window's worth of requests outstanding, so the router stops
and the S2S streams stop being read. SIP → XMPP: while the XMPP side is congested (the
router's queue or an S2S queue toward the recipient's domain is full) stream connections
from the proxy are no longer read; over UDP, which cannot be paused, new MESSAGEs and
SUBSCRIBEs are taken while the XMPP side works off a burst and answered ``503`` with
``Retry-After`` (RFC 3261 §21.5.4) only once it is saturated (``router.xmpp_saturated``:
far past its bounds, a partner that does not acknowledge), or when the gateway cannot
read its socket fast enough (kernel drops). Nothing is refused for being too many; the
sender waits.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from xml.etree.ElementTree import Element

from gateway.backend import DeliveryError, Pair
from gateway.config.model import SipSettings, TlsSettings
from gateway.contracts import OnDecided, RouterForBackend
from gateway.domain import normalize_domain
from gateway.logs import log_event
from gateway.sip import tls as sip_tls
from gateway.sip.addresses import AddressError
from gateway.sip.endpoint import SipEndpoint
from gateway.sip.message import NameAddr, RequestHead, SipResponse, new_tag
from gateway.sip.messaging import ACCEPT_HEADER, MessageRelay
from gateway.sip.notifying import MIN_EXPIRES, XmppPresenceNotifier
from gateway.sip.parties import sip_address
from gateway.sip.stanzas import IQ, MESSAGE, PRESENCE, error_condition
from gateway.sip.transaction import RequestReceived
from gateway.sip.trust import RefusalLogBudget, SourceTrust, resolve_addresses
from gateway.sip.watching import SipPresenceWatches
from gateway.store.notifiers import AsyncNotifierStore, NotifierRecord
from gateway.store.spellings import AsyncSpellingStore
from gateway.xmpp.jid import Jid, JidError

if TYPE_CHECKING:
    from gateway.metrics import Metrics
    from gateway.store.protocols import AsyncWatchStore

log = logging.getLogger("gateway.sip")

ALLOW = "MESSAGE, SUBSCRIBE, NOTIFY, OPTIONS"
NOT_HANDLED = ("INVITE", "BYE", "CANCEL", "PUBLISH", "REGISTER", "REFER", "INFO", "UPDATE",
               "PRACK")
# What the configuration model gives a setting the file leaves out; the backend built in
# code (tests, tools) uses the same values.
_DEFAULTS = SipSettings()
# Settings a reload applies at once: who may speak SIP to us (a proxy taken out of a
# pool must stop being trusted now). The rest of the SIP side is built at start.
LIVE_SETTINGS = frozenset({"trusted_sources", "trust_asserted_identity"})


class SipBackend:
    """A :class:`gateway.backend.SipSide` speaking SIP to a proxy."""

    def __init__(self, domains: Iterable[str], *, transport: str = _DEFAULTS.transport,
                 proxy: tuple[str, int] = (_DEFAULTS.proxy_host, _DEFAULTS.proxy_port),
                 local: tuple[str, int] = (_DEFAULTS.local_host, _DEFAULTS.local_port),
                 subscription_expires: int = _DEFAULTS.subscription_expires,
                 server_ssl: ssl.SSLContext | None = None,
                 client_ssl: ssl.SSLContext | None = None,
                 max_in_flight: int = _DEFAULTS.max_in_flight,
                 udp_receive_buffer: int = 0,  # 0: leave the kernel's buffer size
                 retry_after: int = _DEFAULTS.retry_after,
                 trusted_sources: Iterable[str] = _DEFAULTS.trusted_sources,
                 peer_names: tuple[str, ...] | None = None,
                 trust_asserted_identity: bool = _DEFAULTS.trust_asserted_identity,
                 max_message_size: int = _DEFAULTS.max_message_size,
                 receipts_from_200: bool = _DEFAULTS.receipts_from_200) -> None:
        self.domains = frozenset(normalize_domain(d) for d in domains)
        if not self.domains:
            raise ValueError("the SIP backend needs at least one served domain")
        self.endpoint = SipEndpoint(transport=transport, proxy=proxy, local=local,
                                    server_ssl=server_ssl, client_ssl=client_ssl,
                                    max_in_flight=max_in_flight,
                                    udp_receive_buffer=udp_receive_buffer)
        self.endpoint.on_request = self._on_request
        self.endpoint.on_tick = self._on_tick
        self.endpoint.shed = self._shed
        self.transport = self.endpoint.transport
        self.layer = self.endpoint.layer
        expires = max(MIN_EXPIRES, subscription_expires)
        self.subscription_expires = expires
        self.retry_after = max(1, retry_after)
        self.messages = MessageRelay(self.endpoint, self.domains, self._to_xmpp,
                                     max_message_size=max_message_size,
                                     receipts_from_200=receipts_from_200)
        self.watching = SipPresenceWatches(self.endpoint, self._to_xmpp, expires)
        self.notifying = XmppPresenceNotifier(self.endpoint, self.domains, self._to_xmpp,
                                              expires)
        # one memory of how the SIP side spells its users, for every part that writes
        # to them or learns it from their requests
        self.watching.spellings = self.notifying.spellings = self.messages.spellings
        self._router: RouterForBackend | None = None  # set by start
        self.busy_answers = 0  # 503 + Retry-After sent while the XMPP side was congested
        # Trust (gateway.sip.trust): sources beyond the proxy, certificate names
        # required of inbound TLS peers (None: no client certificate asked), PAI use.
        self.trusted_sources = tuple(trusted_sources)
        self.transport.peer_names = peer_names
        self.transport.on_refused = self._on_untrusted
        self.transport.on_malformed = self._on_malformed
        self.endpoint.on_misrouted = self._on_misrouted
        self.trust_asserted_identity = trust_asserted_identity
        self.messages.trust_asserted_identity = trust_asserted_identity
        self.notifying.trust_asserted_identity = trust_asserted_identity
        self.metrics: Metrics | None = None
        self.untrusted = 0
        self._refusal_log = RefusalLogBudget()
        # Drain: new out-of-dialog requests get 503 so that the proxy's dispatcher sends
        # them to another node.
        self.draining = False

    @classmethod
    def from_settings(cls, settings: SipSettings, domains: Iterable[str],
                      tls: TlsSettings | None = None) -> SipBackend:
        server_ssl = client_ssl = None
        peer_names = None
        if settings.transport == "tls":
            server_ssl, client_ssl = sip_tls.contexts(tls, settings)
            if settings.require_client_certificate:
                peer_names = sip_tls.expected_peer_names(settings)
        return cls(domains, transport=settings.transport,
                   proxy=(settings.proxy_host, settings.proxy_port),
                   local=(settings.local_host, settings.local_port),
                   subscription_expires=settings.subscription_expires,
                   server_ssl=server_ssl, client_ssl=client_ssl,
                   max_in_flight=settings.max_in_flight,
                   udp_receive_buffer=settings.udp_receive_buffer,
                   retry_after=settings.retry_after,
                   trusted_sources=settings.trusted_sources,
                   peer_names=peer_names,
                   trust_asserted_identity=settings.trust_asserted_identity,
                   max_message_size=settings.max_message_size,
                   receipts_from_200=settings.receipts_from_200)

    # Views kept for status, tests and tools.
    @property
    def watches(self) -> dict[tuple[str, str], Any]:
        return self.watching.watches

    @property
    def notifiers(self) -> dict[tuple[str, str], Any]:
        return self.notifying.notifiers

    @property
    def sent(self) -> int:
        return self.endpoint.sent

    @property
    def received(self) -> int:
        return self.endpoint.received

    @property
    def address(self) -> str:
        local = self.transport.local
        return f"sip:{local[0]}:{local[1]}" if local else ""

    @property
    def watch_count(self) -> int:
        return len(self.watching.watches)

    def is_watching(self, sip_user: str, contact: str) -> bool:
        return (sip_user, contact) in self.notifying.notifiers

    # ------------------------------------------------------------------ lifecycle

    async def start(self, router: RouterForBackend, *, watches: AsyncWatchStore | None = None,
                    notifiers: AsyncNotifierStore | None = None,
                    metrics: Metrics | None = None,
                    spellings: AsyncSpellingStore | None = None) -> None:
        """SIP users' stanzas go to ``router.submit_local`` (decided without a task per
        stanza) and ``router.xmpp_saturated`` is asked before new SIP work over UDP is taken;
        active XMPP→SIP presence subscriptions are remembered in ``watches`` (see
        :mod:`gateway.sip.watching`) and those this node holds are subscribed again;
        the phones' subscriptions to XMPP contacts are kept in ``notifiers`` and those
        this node holds are resumed (:mod:`gateway.sip.notifying`); SIP users' spellings
        in ``spellings`` (:mod:`gateway.sip.spellings`); ``metrics`` count refused
        sources, what could not cross, and export the flow-control figures."""
        if self._router is not None:
            raise RuntimeError("SIP backend already started")
        self.watching.store = watches
        self.notifying.store = notifiers
        self.messages.spellings.store = spellings
        if metrics is not None:
            self.metrics = self.messages.metrics = metrics
            metrics.watch_sip(self.describe)
        await self._trust_proxy()
        await self.endpoint.start()
        self._router = router
        restored = await self.watching.restore(self.domains)
        resumed = 0
        if self.notifying.store is not None:
            resumed = self.notifying.resume(await self.notifying.store.list_notifiers())
        transport = self.transport
        log_event(log, logging.INFO, "sip.started", transport=transport.kind,
                  trusted=transport.trust.describe() if transport.trust else "",
                  client_certificate="required" if transport.peer_names else "",
                  local=f"{transport.local[0]}:{transport.local[1]}",
                  proxy=f"{transport.proxy[0]}:{transport.proxy[1]}",
                  max_in_flight=self.endpoint.max_in_flight,
                  subscriptions_restored=restored, phone_subscriptions_resumed=resumed)

    def take_over_watches(self, pairs: Iterable[Pair]) -> int:
        """Subscribe for XMPP→SIP watches another gateway node held (it died or
        drained): the XMPP side still considers itself subscribed, so we must."""
        return self.watching.take_over(pairs, self.domains)

    def drop_watches(self, pairs: Iterable[Pair] | None = None) -> int:
        """End our XMPP→SIP watch dialogs (all, or those of ``pairs``) on the SIP side but
        leave the store alone: another node holds or takes them over (drain, lost lease,
        an unsubscribe handled by another node)."""
        return self.watching.drop(pairs)

    def take_over_notifiers(self, records: Iterable[NotifierRecord]) -> int:
        """Go on notifying the phones' subscriptions another node held (it died or
        drained): see :meth:`XmppPresenceNotifier.resume`."""
        return self.notifying.resume(records)

    def drop_notifiers(self) -> int:
        """Stop notifying every phone's subscription held here, without a word to the
        phones or the store: another node takes them over (this one lost its lease)."""
        return self.notifying.drop()

    def held_watches(self) -> list[Pair]:
        """The (watcher, SIP user) pairs whose subscription is established and recorded."""
        return self.watching.held()

    def set_draining(self) -> None:
        self.draining = True

    async def stop(self, grace: float = 2.0) -> None:
        """End our subscriptions, wait up to ``grace`` for outstanding transactions, then
        close the sockets."""
        if self._router is None:
            return
        # Draining, the phones must subscribe again elsewhere at once; otherwise their
        # stored dialogs are resumed by the next start (nothing to tell them).
        self.notifying.stop(deactivate=self.draining or self.notifying.store is None)
        self.watching.stop()
        await self.notifying.settle()
        if not await self.endpoint.drain(grace):
            log_event(log, logging.WARNING, "sip.stop_unfinished",
                      transactions=self.endpoint.in_flight,
                      queued=len(self.endpoint.backlog),
                      reason="no answer from the SIP proxy before shutdown")
        await self.endpoint.close()
        self._router = None

    # ------------------------------------------------------------------ trust

    async def _trust_proxy(self) -> None:
        """Requests are accepted from the proxy's addresses and ``trusted_sources`` only.
        (Where our own requests go over UDP, and so where their responses must come from,
        the transport resolves itself, in its socket's address family.)"""
        host = self.transport.proxy[0]
        try:
            addresses = await resolve_addresses(host)
        except OSError as exc:
            addresses = ()
            log_event(log, logging.WARNING, "sip.proxy_unresolved", proxy=host,
                      reason=str(exc), trusted=",".join(self.trusted_sources) or "nobody")
        self.transport.set_trust(SourceTrust.build(addresses, self.trusted_sources))

    async def apply(self, settings: SipSettings) -> frozenset[str]:
        """Reload: new ``trusted_sources``/``trust_asserted_identity`` apply at once (the
        proxy's name is resolved again too); the rest changes on restart."""
        self.trusted_sources = tuple(settings.trusted_sources)
        self.trust_asserted_identity = settings.trust_asserted_identity
        self.messages.trust_asserted_identity = settings.trust_asserted_identity
        self.notifying.trust_asserted_identity = settings.trust_asserted_identity
        await self._trust_proxy()
        log_event(log, logging.INFO, "sip.trust_updated",
                  trusted=self.transport.trust.describe() if self.transport.trust else "")
        return LIVE_SETTINGS

    def _on_untrusted(self, transport: str, peer: tuple[str, int], why: str,
                      method: str) -> None:
        self.untrusted += 1
        answered = method.isalpha() and method.isupper() and method != "ACK"
        action = "403" if answered else "dropped"
        allowed, suppressed = self._refusal_log.allow(time.monotonic())
        if allowed:
            log_event(log, logging.WARNING, "sip.untrusted", peer=f"{peer[0]}:{peer[1]}",
                      transport=transport, method=method, reason=why,
                      action=action if transport == "udp" else f"{action}, connection closed",
                      suppressed=suppressed or None)
        if self.metrics is not None:
            self.metrics.count("sip_untrusted", "certificate" if "certificate" in why
                               else "source")

    def _on_malformed(self, _transport: str, label: str) -> None:
        if self.metrics is not None:
            self.metrics.count("sip_malformed", label)

    def _on_misrouted(self) -> None:
        self.untrusted += 1
        if self.metrics is not None:
            self.metrics.count("sip_untrusted", "response")

    def _on_tick(self, now: float) -> None:
        self.messages.flush_typing(now)
        self.watching.refresh(now)
        self.notifying.expire(now)

    # ------------------------------------------------------------------ toward XMPP

    def _to_xmpp(self, stanza: Element, on_decided: OnDecided) -> None:
        """Hand a SIP user's stanza to the router; ``on_decided`` runs once the router
        has decided (its refusal, if any, has reached :meth:`deliver` by then)."""
        router = self._router
        if router is None:
            return
        try:
            router.submit_local(stanza, on_decided)
        except Exception as exc:
            # The SIP request must still get a final answer (500, RFC 7247 §8.1
            # internal-server-error), so the peer stops retransmitting; the bug is
            # counted and logged within the transport's budget.
            self.transport.unexpected(exc, self.transport.proxy, "stanza not routed")
            self.messages.failed(stanza)
            if on_decided is not None:
                on_decided()

    def input_paused(self, paused: bool) -> None:
        """The router's word that the XMPP side is (no longer) congested: stream
        connections from the proxy stop (resume) being read, and over UDP new work is
        answered 503 from the request's head (:meth:`_shed`)."""
        self.transport.pause_input(paused)
        self.endpoint.shedding = paused

    # ------------------------------------------------------------------ SIP input

    def _on_request(self, event: RequestReceived) -> None:
        method = event.request.method
        if self.draining and method in ("MESSAGE", "SUBSCRIBE", "OPTIONS") \
                and not event.request.to.tag:
            # RFC 3261 §21.5.4: 503 makes the proxy (Kamailio dispatcher) fail over to
            # another node; in-dialog requests still reach their dialog here.
            self.endpoint.reply(event, 503, headers=[("Retry-After", "5")])
            return
        if method == "MESSAGE":
            if not self._busy(event):
                self.messages.incoming(event)
        elif method == "SUBSCRIBE":
            if event.request.to.tag or not self._busy(event):
                self.notifying.incoming_subscribe(event)
        elif method == "NOTIFY":
            self.watching.incoming_notify(event)
        elif method == "OPTIONS":
            self.endpoint.reply(event, 200, headers=[("Allow", ALLOW),
                                                     ("Accept", ACCEPT_HEADER)])
        elif method in NOT_HANDLED:
            self.endpoint.reply(event, 405, headers=[("Allow", ALLOW)])
        else:
            self.endpoint.reply(event, 501)

    def _shed(self, head: RequestHead) -> int | None:
        """The Retry-After to answer a request known by its head with, while overloaded
        (what :meth:`_busy` decides for a parsed one, asked before parsing), or None."""
        if (head.method == "SUBSCRIBE" and head.to_tagged) or self.draining:
            return None  # in-dialog requests are not new work; draining answers itself
        overloaded = self.transport.backlogged or self.endpoint.overloaded
        if not overloaded and self._router is not None:
            try:
                domain = sip_address(head.uri).domain
            except AddressError:
                return None
            overloaded = self._router.xmpp_saturated(domain)
        if not overloaded:
            return None
        self.busy_answers += 1
        return self.retry_after

    def _busy(self, event: RequestReceived) -> bool:
        """Answer 503 + Retry-After to new work from SIP while it cannot move on: the XMPP
        side toward the recipient's domain is saturated, or our own requests to the proxy
        are backed up (RFC 3261 §21.5.4). Over TCP/TLS the connection is paused instead
        (:meth:`input_paused`), so what was read is accepted."""
        overloaded = self.endpoint.overloaded
        if not overloaded and self._router is not None and event.flow[0] == "udp":
            try:
                domain = sip_address(event.request.uri).domain
            except AddressError:
                domain = ""
            overloaded = self._router.xmpp_saturated(domain)
        if not overloaded:
            return False
        self.busy_answers += 1
        log_event(log, logging.DEBUG, "sip.busy", method=event.request.method,
                  uri=event.request.uri, retry_after=self.retry_after)
        self.endpoint.reply(event, 503, to_tag=new_tag(),
                            headers=[("Retry-After", str(self.retry_after))])
        return True

    # ------------------------------------------------------------------ XMPP input

    async def deliver(self, stanza: Element) -> None:
        """Map an XMPP stanza addressed to a local SIP user (see the module docstring)."""
        if self._router is None:
            raise DeliveryError("service-unavailable", "SIP backend not started", "wait")
        try:
            recipient = Jid.parse(stanza.get("to", ""))
            sender = Jid.parse(stanza.get("from", ""))
        except JidError as exc:
            raise DeliveryError("jid-malformed", str(exc), "modify") from None
        if recipient.domain not in self.domains:
            raise DeliveryError("item-not-found", f"{recipient.domain} is not a SIP domain here")
        if not recipient.local:
            raise DeliveryError("service-unavailable", "no service at the bare domain")
        local_user = recipient.bare
        stanza_type = stanza.get("type")
        tag = stanza.tag
        if tag == IQ:
            if stanza_type in ("get", "set"):
                raise DeliveryError("service-unavailable", "no iq service for SIP users")
            return
        if tag == MESSAGE and stanza_type == "error":
            self.messages.error_reply(stanza, local_user)  # decides a SIP answer: no wait
            return
        endpoint = self.endpoint
        if endpoint.backlog or endpoint.in_flight >= endpoint.max_in_flight:
            await endpoint.wait_for_room()  # flow control: the router (and S2S) wait too
        if tag == MESSAGE:
            spellings = self.messages.spellings
            if not spellings.known(local_user):
                await spellings.load(local_user)  # how the SIP side spells the user
            self.messages.outgoing(stanza, sender.full, local_user)
        elif tag == PRESENCE:
            self._xmpp_presence(stanza, sender.bare, sender.resource, local_user)

    def _xmpp_presence(self, stanza: Element, contact: str, resource: str,
                       local_user: str) -> None:
        kind = stanza.get("type") or "available"
        log_event(log, logging.DEBUG, "sip.xmpp_presence", contact=contact, resource=resource,
                  local_user=local_user, kind=kind)
        if kind in ("subscribe", "unsubscribe", "probe"):
            self.watching.on_xmpp(kind, contact, local_user)
        elif kind in ("available", "unavailable", "subscribed", "unsubscribed"):
            self.notifying.on_xmpp(stanza, kind, contact, resource, local_user)
        elif kind == "error":
            log_event(log, logging.INFO, "sip.presence_error", contact=contact,
                      local_user=local_user, condition=error_condition(stanza))
            self.notifying.on_xmpp(stanza, kind, contact, resource, local_user)

    # ------------------------------------------------------------------ tools

    async def options(self, timeout: float) -> SipResponse | None:
        """One OPTIONS to the proxy (RFC 3261 §11), through the same transport and
        transaction layer as everything else: the proxy's final answer, or None when
        there was none within ``timeout`` (or the connection failed: see
        ``transport.last_error``)."""
        answered: asyncio.Future[SipResponse | None] = (
            asyncio.get_running_loop().create_future())
        target = f"sip:{self.transport.proxy[0]}:{self.transport.proxy[1]}"
        request = self.endpoint.new_request(
            "OPTIONS", target,
            NameAddr(f"sip:gateway-check@{self.endpoint.hostport}", params={"tag": new_tag()}),
            NameAddr(target))
        def settle(response: SipResponse | None) -> None:
            if not answered.done():
                answered.set_result(response)

        self.endpoint.send(request, settle)
        try:
            return await asyncio.wait_for(asyncio.shield(answered), timeout)
        except TimeoutError:
            return None

    def describe(self) -> dict[str, Any]:
        return {**self.endpoint.describe(), "watches": len(self.watches),
                **self.notifying.describe(), "transactions": self.endpoint.in_flight,
                "busy_answers": self.busy_answers, "untrusted": self.untrusted,
                **self.messages.describe()}
