"""The gateway process: wires configuration, S2S service, router, store and backend.

Life cycle (issue: operations): SIGTERM/SIGINT → graceful stop (stop accepting, flush
queues, bounce what cannot be sent, close streams with ``</stream:stream>``); SIGHUP or
``xmpp-gateway reload`` → re-read partners, policies and certificates without dropping
established sessions, closing only those whose partner was removed or whose method is no
longer permitted; an invalid new configuration changes nothing and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element, ParseError, fromstring, tostring

from gateway.auth.dialback_key import DialbackKeyGenerator
from gateway.auth.tls_provider import OpenSslTlsProvider, TlsConfigError, certificate_verdict
from gateway.backend import LocalBackend
from gateway.config.model import GatewayConfig
from gateway.logs import configure_logging, log_event
from gateway.net.admin import AdminServer
from gateway.net.connection import StreamConnection
from gateway.net.federation import S2SService
from gateway.router import Router
from gateway.xmpp.stream import StreamContext

log = logging.getLogger("gateway.daemon")

# Presence forwarded between cluster nodes (see Gateway._from_xmpp): availability and
# the answers to a SIP user's subscription; "" is available presence (no type).
PRESENCE_TOPIC = "presence"
FORWARDED_PRESENCE = ("", "unavailable", "subscribed", "unsubscribed")


class StartupError(Exception):
    """The gateway cannot start with this configuration (message says why)."""


def make_backend(config: GatewayConfig) -> LocalBackend:
    if config.sip.backend == "development":
        from gateway.sip.development import DevelopmentBackend

        return DevelopmentBackend(config.domains)
    if config.sip.backend == "sip":
        from gateway.sip.backend import SipBackend

        try:
            return SipBackend.from_settings(config.sip, config.domains, config.tls)
        except (ValueError, OSError) as exc:
            raise StartupError(f"sip: {exc}") from None
    raise StartupError(f"unknown sip.backend {config.sip.backend!r}")


def make_resolver(config: GatewayConfig) -> Any:
    from gateway.dns.resolver import DnsPythonResolver

    try:
        return DnsPythonResolver.from_settings(config.dns)
    except ValueError as exc:
        raise StartupError(f"dns: {exc}") from None


def make_context(config: GatewayConfig, keys: DialbackKeyGenerator,
                 partner_for: Any) -> StreamContext:
    try:
        provider = OpenSslTlsProvider(config.tls, config.domains)
    except TlsConfigError as exc:
        raise StartupError(str(exc)) from None
    if not provider.available:
        log_event(log, logging.WARNING, "tls.unavailable", certificate=str(config.tls.certificate),
                  reason="certificate or key file missing: STARTTLS will not be offered or used")
    if config.tls.ca_file is not None and not Path(config.tls.ca_file).exists():
        log_event(log, logging.WARNING, "tls.ca_missing", ca_file=str(config.tls.ca_file),
                  reason="tls.ca_file does not exist: only the system CAs are trusted")
    return StreamContext(
        local_domains=frozenset(config.domains),
        partner_for=partner_for,
        keys=keys,
        check_certificate=certificate_verdict,
        tls=provider,
        limits=config.limits,
        stream_management=config.federation.stream_management,
        bidi=config.federation.bidi,
    )


class Gateway:
    def __init__(self, config: GatewayConfig, *, backend: LocalBackend | None = None,
                 resolver: Any = None) -> None:
        self.config = config
        secret = config.dialback.secret or secrets.token_hex(32)
        self.keys = DialbackKeyGenerator(secret)
        self.backend = backend or make_backend(config)
        self.resolver = resolver or make_resolver(config)
        self.metrics: Any = None
        self.store: Any = None
        self.router: Router | None = None
        self.s2s: S2SService | None = None
        self.admin: AdminServer | None = None
        self._stop = asyncio.Event()
        self.reloads = 0
        self.node_id = config.cluster.node_id or socket.gethostname()
        self.cluster: Any = None  # ClusterMember when the store is shared (PostgreSQL)
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.draining = False
        self._drain_task: asyncio.Task[None] | None = None
        self._publishing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        from gateway.store import (
            AsyncAuthorizationStore,
            StoreError,
            describe_store,
            open_authorization_store,
        )

        config = self.config
        self._check_fd_limit()
        metrics_settings = getattr(config, "metrics", None)
        if metrics_settings is not None and metrics_settings.enabled:
            from gateway.metrics import Metrics

            self.metrics = Metrics()
            self.metrics.serve(metrics_settings.host, metrics_settings.port)
        try:
            self.store = AsyncAuthorizationStore(
                open_authorization_store(config.store, self.node_id))
        except (StoreError, OSError) as exc:
            raise StartupError(f"store {describe_store(config.store)}: {exc}") from None
        await self._join_cluster()
        if hasattr(self.backend, "use_store"):
            self.backend.use_store(self.store)
        if self.metrics is not None and hasattr(self.backend, "use_metrics"):
            self.backend.use_metrics(self.metrics)
        self.router = Router(config, self.backend, self.store, self.metrics)
        self._forward_store_changes(self.router)
        context = make_context(config, self.keys, self._partner_for)
        self.s2s = S2SService(config, context, self.resolver, on_stanza=self._from_xmpp,
                              on_bounce=self.router.bounce, metrics=self.metrics)
        self.router.s2s = self.s2s
        self.router.on_pressure = self.s2s.set_reading_paused
        self.s2s.on_congestion = self.router.on_s2s_congestion
        if self.metrics is not None:
            s2s = self.s2s
            self.metrics.watch(lambda: sum(len(x.queue) for x in s2s.sessions.values()),
                               lambda: len(s2s.connections))
        await self.router.start()
        try:
            await self.s2s.start()
        except OSError as exc:
            raise StartupError(f"cannot listen: {exc.strerror or exc}") from None
        self.admin = AdminServer(config.admin_socket, self)
        try:
            await self.admin.start()
        except OSError as exc:
            raise StartupError(f"admin socket {config.admin_socket}: {exc}") from None
        log_event(log, logging.INFO, "gateway.started", domains=",".join(config.domains),
                  partners=len(config.partners), backend=config.sip.backend,
                  listen=" ".join(f"{h}:{p}" for h, p in self.s2s.listening_addresses),
                  pid=os.getpid())

    async def _join_cluster(self) -> None:
        """Shared store: heartbeat and claim the watches of dead nodes before the SIP
        backend starts (it restores every watch this node owns). Own store: the rows
        nobody alive owns (an older node id, a file from before clusters) are ours."""
        from gateway.cluster import ClusterMember
        from gateway.store import StoreError

        try:
            if not self.config.store.url:
                await self.store.claim_watches(self.config.cluster.lease)
                return
            self.cluster = ClusterMember(
                self.store, self.config.cluster, self._node_report, self._take_over_watches,
                self._fence, held=getattr(self.backend, "held_watches", None),
                on_lost=getattr(self.backend, "drop_watches", None))
            claimed = await self.cluster.start()
        except StoreError as exc:
            raise StartupError(f"store: {exc}") from None
        log_event(log, logging.INFO, "cluster.joined", node=self.node_id,
                  lease=self.config.cluster.lease, watches_claimed=len(claimed))

    def _node_report(self, state: str) -> Any:
        from gateway.cluster import config_fingerprint
        from gateway.store.membership import NodeReport

        addresses = [f"{h}:{p}" for h, p in self.s2s.listening_addresses] if self.s2s else []
        sip_local = getattr(getattr(self.backend, "transport", None), "local", None)
        if sip_local:
            addresses.append(f"sip:{sip_local[0]}:{sip_local[1]}")
        queued = (self.router.queued if self.router else 0) + (
            sum(len(s.queue) for s in self.s2s.sessions.values()) if self.s2s else 0)
        return NodeReport(
            node_id=self.node_id, addresses=" ".join(addresses), started_at=self.started_at,
            state=state, sessions=len(self.s2s.connections) if self.s2s else 0,
            queued=queued, watches=len(getattr(self.backend, "watches", ())),
            pid=os.getpid(), config=json.dumps(config_fingerprint(self.config)))

    def _take_over_watches(self, pairs: list[tuple[str, str]]) -> None:
        take = getattr(self.backend, "take_over_watches", None)
        taken = take(pairs) if take is not None and not self.draining else 0
        log_event(log, logging.INFO, "cluster.watches_taken_over", node=self.node_id,
                  claimed=len(pairs), subscribing=taken)

    def _fence(self) -> None:
        drop = getattr(self.backend, "drop_watches", None)
        if drop is not None:
            log_event(log, logging.WARNING, "cluster.watches_dropped", node=self.node_id,
                      count=drop())

    def _forward_store_changes(self, router: Router) -> None:
        """Another node (or CLI) changed a user switch: drop the router's cached value at
        once instead of after USER_CACHE_SECONDS (PostgreSQL LISTEN/NOTIFY, issue 15).
        Authorizations are not cached, so they need nothing."""
        loop = asyncio.get_running_loop()

        def changed(table: str, key: str) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                if table in ("user_settings", ""):
                    loop.call_soon_threadsafe(router.forget_cached, key)
                elif table == PRESENCE_TOPIC:
                    loop.call_soon_threadsafe(self._from_peer_node, key)

        self.store.on_change(changed)

    def _from_xmpp(self, stanza: Element, remote: str, local: str, on_settled: Any = None) -> None:
        """Inbound stanzas go to the router; in a cluster, presence that a SIP user's
        subscription on *another* node may need also goes to the other nodes.

        Why: a partner sends all its presence over its one stream to this domain, to
        whichever node its SRV choice gave, while the SIP user's SUBSCRIBE to that
        contact was dispatched by the proxy to any node (RFC 6665 notifier state lives
        there). ``subscribe``/``unsubscribe``/``probe`` are not forwarded: they create or
        end XMPP→SIP watches, which the node receiving them takes on (the store records
        the new owner and the previous holder ends its dialog, see gateway.cluster)."""
        assert self.router is not None
        self.router.from_xmpp(stanza, remote, local, on_settled)
        if self.cluster is None or stanza.tag != "{jabber:server}presence" or \
                stanza.get("type", "") not in FORWARDED_PRESENCE:
            return
        payload = json.dumps({"node": self.node_id, "remote": remote, "local": local,
                              "xml": tostring(stanza, encoding="unicode")})
        task = asyncio.get_running_loop().create_task(self._publish(payload))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(self, payload: str) -> None:
        from gateway.store import StoreError

        try:
            await self.store.publish(PRESENCE_TOPIC, payload)
        except (StoreError, RuntimeError) as exc:
            log_event(log, logging.WARNING, "cluster.presence_not_forwarded",
                      node=self.node_id, reason=str(exc))

    def _from_peer_node(self, payload: str) -> None:
        """Presence another node received: route it here if our SIP side holds a
        subscription of the addressee to the sender (else it is not ours)."""
        from gateway.xmpp.jid import JidError, bare_jid

        try:
            message = json.loads(payload)
            if message.get("node") == self.node_id or self.router is None:
                return
            stanza = fromstring(message["xml"])
            key = (bare_jid(stanza.get("to", "")), bare_jid(stanza.get("from", "")))
        except (ValueError, KeyError, TypeError, ParseError, JidError) as exc:
            log_event(log, logging.WARNING, "cluster.bad_forwarded_presence",
                      node=self.node_id, reason=str(exc))
            return
        if key in getattr(self.backend, "notifiers", {}):
            self.router.from_xmpp(stanza, str(message["remote"]), str(message["local"]))

    def _partner_for(self, domain: str) -> Any:
        assert self.s2s is not None
        return self.s2s.partner_for(domain)

    async def stop(self) -> None:
        log_event(log, logging.INFO, "gateway.stopping")
        if self.admin is not None:
            await self.admin.stop()
        # S2S first: it bounces what it could not send to the local senders, which needs
        # the router and the backend still running; then the router drains and stops.
        if self.s2s is not None:
            await self.s2s.stop()
        if self.router is not None:
            await self.router.stop(grace=2.0)
        if self.cluster is not None:
            from gateway.store.membership import STOPPED

            await self.cluster.stop()
            await self.cluster.set_state(STOPPED)
        if self.store is not None:
            await self.store.aclose()
        if self.metrics is not None:
            self.metrics.close()
        log_event(log, logging.INFO, "gateway.stopped")

    def request_stop(self) -> None:
        self._stop.set()

    def _on_terminate(self) -> None:
        """SIGTERM/SIGINT: a node of a cluster drains (hands over its work, then stops);
        a lone gateway stops as it always did (it has nobody to hand over to)."""
        if self.cluster is not None and not self._stop.is_set():
            self.start_drain()
        else:
            self.request_stop()

    def start_drain(self) -> dict[str, Any]:
        """``xmpp-gateway drain``: start draining in the background, answer at once."""
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain_then_stop(),
                                                                      name="drain")
        return {"ok": True, "node": self.node_id, "state": "draining",
                "timeout": self.config.cluster.drain_timeout}

    async def _drain_then_stop(self) -> None:
        try:
            await self.drain()
        except Exception as exc:  # stop anyway: SIGTERM must end the process
            log_event(log, logging.ERROR, "gateway.drain_failed", node=self.node_id,
                      reason=repr(exc))
        finally:
            self.request_stop()

    async def drain(self) -> None:
        """Planned restart without losing a stanza (issue 15), then stop:

        1. announce ``draining`` in the cluster table; close the S2S listeners (partners
           connecting now are refused and use the next SRV target) and answer new SIP
           requests with 503 (the proxy's dispatcher fails over to another node);
        2. end our SIP watch dialogs and hand the watches over in the store: a survivor
           claims them at its next heartbeat and subscribes again;
        3. close inbound S2S streams gracefully: stanzas already in flight are still read
           and routed (RFC 6120 §4.4), the partner opens its next stream elsewhere;
        4. wait (up to ``cluster.drain_timeout``, at least ``cluster.drain_grace``) until
           the router and S2S queues are empty and the partners closed their side, then
           stop as usual (which bounces,
           with an error to the sender, whatever could still not be delivered).

        The caller stops the gateway afterwards (:meth:`start_drain` does)."""
        from gateway.store import StoreError
        from gateway.store.membership import DRAINING
        from gateway.xmpp.inbound import InboundStream

        self.draining = True
        started = time.monotonic()
        log_event(log, logging.INFO, "gateway.draining", node=self.node_id,
                  timeout=self.config.cluster.drain_timeout)
        if self.cluster is not None:
            await self.cluster.set_state(DRAINING)
        assert self.s2s is not None and self.router is not None
        self.s2s.stop_accepting()
        if hasattr(self.backend, "draining"):
            self.backend.draining = True
        drop = getattr(self.backend, "drop_watches", None)
        dropped = drop() if drop is not None else 0
        try:
            handed = await self.store.release_watches() if self.cluster is not None else 0
        except StoreError as exc:
            handed = 0
            log_event(log, logging.WARNING, "gateway.drain_handover_failed",
                      node=self.node_id, reason=str(exc),
                      action="survivors take the watches over when this node's lease ends")
        closed = self.s2s.close_sessions(lambda c: isinstance(c.stream, InboundStream), "",
                                         "this gateway node is draining; reconnect")
        settings = self.config.cluster
        deadline = started + settings.drain_timeout
        grace_end = started + min(settings.drain_grace, settings.drain_timeout)
        while time.monotonic() < deadline:
            inbound = [c for c in self.s2s.connections if isinstance(c.stream, InboundStream)]
            queued = self.router.queued + sum(len(s.queue) for s in self.s2s.sessions.values())
            if not inbound and not queued and time.monotonic() >= grace_end:
                break
            await asyncio.sleep(0.05)
        log_event(log, logging.INFO, "gateway.drained", node=self.node_id,
                  seconds=f"{time.monotonic() - started:.2f}", watches_dropped=dropped,
                  watches_handed_over=handed, inbound_closed=closed,
                  still_queued=self.router.queued + sum(
                      len(s.queue) for s in self.s2s.sessions.values()))

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_terminate)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        await self.start()
        try:
            await self._stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
            await self.stop()

    # ------------------------------------------------------------------ reload

    async def reload(self) -> dict[str, Any]:
        """Re-read the configuration file; keep sessions the new policy still allows."""
        from gateway.config.loader import ConfigError, load_config

        source = self.config.source
        if source is None:
            return {"ok": False, "error": "configuration was not loaded from a file"}
        try:
            new = load_config(source)
            provider = OpenSslTlsProvider(new.tls, new.domains)
        except (ConfigError, TlsConfigError, OSError) as exc:
            log_event(log, logging.ERROR, "gateway.reload_refused", reason=str(exc))
            return {"ok": False, "error": str(exc)}
        if new.domains != self.config.domains or new.listen != self.config.listen:
            note = "served domains and listen addresses change only on restart"
        else:
            note = ""
        if new.sip != self.config.sip:
            # Who may speak SIP to us changes at once (a proxy taken out of a pool must
            # stop being trusted now); the rest of the SIP side is built at start.
            live = {"trusted_sources", "trust_asserted_identity"}
            if hasattr(self.backend, "update_trust"):
                await self.backend.update_trust(new.sip)
            else:
                live = set()
            if dataclasses.replace(new.sip, **{k: getattr(self.config.sip, k) for k in live}) \
                    != self.config.sip:
                changed = "sip settings other than " + " and ".join(sorted(live)) \
                    if live else "sip settings"
                note = "; ".join(filter(None, [note, f"{changed} change only on restart"]))
        assert self.s2s is not None and self.router is not None
        old_ctx = self.s2s.ctx
        new_ctx = StreamContext(
            local_domains=old_ctx.local_domains, partner_for=self._partner_for, keys=self.keys,
            check_certificate=certificate_verdict, tls=provider, limits=new.limits,
            stream_management=new.federation.stream_management, bidi=new.federation.bidi,
        )
        kept_domains = self.config.domains
        listen = self.config.listen
        self.config = _with_runtime_fields(new, kept_domains, listen)
        self.s2s.config = self.config
        self.s2s.ctx = new_ctx
        self.router.config = self.config

        def no_longer_permitted(conn: StreamConnection) -> bool:
            stream = conn.stream
            for (remote, _local), method in stream.pairs.items():
                partner = self.s2s.partner_for(remote) if self.s2s else None
                if partner is None or not partner.negotiation.permits(method):
                    return True
            return False

        closed = self.s2s.close_sessions(
            no_longer_permitted, "policy-violation",
            "partner removed or its policy changed by a configuration reload")
        self.reloads += 1
        log_event(log, logging.INFO, "gateway.reloaded", partners=len(new.partners),
                  closed_sessions=closed, note=note)
        return {"ok": True, "closed_sessions": closed, "partners": len(new.partners),
                "note": note}

    async def probe(self, domain: str) -> dict[str, Any]:
        """``check connectivity``: a real outbound negotiation narrated step by step."""
        from gateway.domain import DomainError, normalize_domain
        from gateway.net.probe import probe

        try:
            remote = normalize_domain(domain)
        except DomainError as exc:
            return {"ok": False, "error": str(exc)}
        assert self.s2s is not None
        report = await probe(self.s2s, self.config.domains[0], remote)
        return {**report.as_dict(), "error": "" if report.ok else report.verdict}

    # ------------------------------------------------------------------ status

    def _check_fd_limit(self) -> None:
        from gateway.net.fdlimit import ensure_fd_limit

        maximum = self.config.limits.max_connections
        try:
            limit = ensure_fd_limit(maximum)
        except (ValueError, OSError) as exc:
            log_event(log, logging.WARNING, "limits.open_files", reason=str(exc),
                      max_connections=maximum)
            return
        if not limit.sufficient:
            log_event(log, logging.WARNING, "limits.open_files", soft=limit.now,
                      wanted=limit.wanted, max_connections=maximum,
                      reason="the hard limit on open files is below limits.max_connections: "
                             "connections beyond it fail with 'too many open files'; raise "
                             "it (systemd: LimitNOFILE=, shell: ulimit -Hn) or lower "
                             "limits.max_connections")
        elif limit.now != limit.before:
            log_event(log, logging.INFO, "limits.open_files", raised_from=limit.before,
                      to=limit.now, max_connections=maximum)

    def status(self) -> dict[str, Any]:
        sessions = self.s2s.describe() if self.s2s else []
        queues = {
            f"{s.local}->{s.remote}": len(s.queue)
            for s in (self.s2s.sessions.values() if self.s2s else []) if s.queue
        }
        return {
            "pid": os.getpid(),
            "node": self.node_id,
            "state": "draining" if self.draining else "running",
            "domains": list(self.config.domains),
            "partners": len(self.config.partners),
            "reloads": self.reloads,
            "sessions": sessions,
            "queues": queues,
            "router": {
                "delivered": self.router.delivered if self.router else 0,
                "refused": self.router.refused if self.router else 0,
                "pressure_episodes": self.router.pressure_episodes if self.router else 0,
                "inbound_peak": self.router.inbound_peak if self.router else 0,
            },
            # Stanzas neither delivered nor answered, by reason (gateway/drops.py).
            "dropped": self.router.drops.describe() if self.router else {},
            # The SIP side's own figures (subscriptions held, transactions in flight …)
            # when the backend has any to tell.
            "backend": {"kind": self.config.sip.backend,
                        **(self.backend.describe() if hasattr(self.backend, "describe")
                           else {})},
        }


def _with_runtime_fields(new: GatewayConfig, domains: tuple[str, ...],
                         listen: Any) -> GatewayConfig:
    return dataclasses.replace(new, domains=domains, listen=listen)


async def run_gateway(config: GatewayConfig) -> int:
    configure_logging(config.logging.level, config.logging.format, config.logging.file)
    gateway = Gateway(config)
    try:
        await gateway.serve_forever()
    except StartupError as exc:
        log_event(log, logging.ERROR, "gateway.start_failed", reason=str(exc))
        with contextlib.suppress(Exception):
            await gateway.stop()
        return 1
    return 0
