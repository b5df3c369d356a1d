"""The gateway's object graph, built once from the configuration by :func:`assemble`.

Each part gets its collaborators in its constructor or its ``start``, as the Protocols
of :mod:`gateway.contracts`, :mod:`gateway.backend` and :mod:`gateway.store.protocols`;
nothing is wired by setting another object's attributes afterwards. The parts:

* the **store** (one worker thread over SQLite or PostgreSQL);
* the **SIP side** (:class:`gateway.backend.SipSide`: development or SIP backend);
* the **router** (contact rules, between the two sides);
* the **S2S service** (listeners, streams, outbound sessions);
* on a shared store, the **cluster member** (heartbeat, watch claims) and the
  **presence forwarding** between nodes, which stands between the S2S service and the
  router.

:class:`GatewayParts` starts them in dependency order, stops them in the reverse,
applies a reloaded configuration to each (``apply``) and reports on them (status and
the cluster heartbeat), so these live in one place.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.auth.dialback_key import DialbackKeyGenerator
from gateway.auth.tls_provider import TlsConfigError
from gateway.backend import SipSide
from gateway.cluster import (
    ClusterMember,
    PresenceForwarding,
    config_fingerprint,
    listen_for_changes,
)
from gateway.config.model import GatewayConfig
from gateway.contracts import RouterForS2S
from gateway.dns.resolver import Resolver
from gateway.logs import log_event
from gateway.net.federation import S2SService
from gateway.router import Router
from gateway.store import (
    AsyncAuthorizationStore,
    StoreError,
    describe_store,
    open_authorization_store,
)
from gateway.store.membership import RUNNING, STOPPED, NodeReport

if TYPE_CHECKING:
    from gateway.metrics import Metrics
    from gateway.sip.health import ProxyHealth

log = logging.getLogger("gateway.daemon")


class StartupError(Exception):
    """The gateway cannot start with this configuration (message says why)."""


def make_backend(config: GatewayConfig) -> SipSide:
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


def make_resolver(config: GatewayConfig) -> Resolver:
    from gateway.dns.resolver import DnsPythonResolver

    try:
        return DnsPythonResolver.from_settings(config.dns)
    except ValueError as exc:
        raise StartupError(f"dns: {exc}") from None


async def assemble(config: GatewayConfig, *, node_id: str, started_at: str,
                   backend: SipSide | None = None,
                   resolver: Resolver | None = None) -> GatewayParts:
    """Build every part for ``config`` (``backend``/``resolver``: given instead of the
    configured ones, e.g. by tests). Raises :class:`StartupError` saying what is wrong;
    nothing is left open then."""
    backend = backend or make_backend(config)
    resolver = resolver or make_resolver(config)
    keys = DialbackKeyGenerator(config.dialback.secret or _random_secret())
    metrics = None
    if config.metrics.enabled or config.admin_web.enabled:  # the console shows them too
        from gateway.metrics import Metrics

        metrics = Metrics()
    try:
        store = AsyncAuthorizationStore(open_authorization_store(config.store, node_id))
    except (StoreError, OSError) as exc:
        raise StartupError(f"store {describe_store(config.store)}: {exc}") from None
    try:
        router = Router(config, backend, store, metrics)
        forwarding = None
        inbound: RouterForS2S = router
        if config.store.url:
            forwarding = inbound = PresenceForwarding(router, store, backend, node_id)
        s2s = S2SService(config, keys, resolver, inbound, metrics=metrics)
    except TlsConfigError as exc:
        await store.aclose()
        raise StartupError(str(exc)) from None
    parts = GatewayParts(config, node_id, started_at, metrics, store, backend, router, s2s,
                         forwarding)
    if config.store.url:
        parts.member = ClusterMember(store, config.cluster, parts.report, backend)
    if metrics is not None:
        from gateway.sip.health import proxy_health

        metrics.watch(lambda: s2s.queued, lambda: s2s.streams,
                      lambda: max(s2s.queues().values(), default=0),
                      lambda: parts.config.limits.max_queue_per_domain)
        metrics.watch_certificates(lambda: certificate_files(parts.config))
        # Someone looks at the SIP proxy's health (the metrics, the console): ask it.
        parts.proxy = proxy_health(backend, config.sip)
        if parts.proxy is not None:
            metrics.watch_proxy(parts.proxy.describe)
    return parts


def certificate_files(config: GatewayConfig) -> list[tuple[str, Path]]:
    """(domain, certificate file) the gateway presents: "*" for the default one."""
    return [("*", config.tls.certificate)] + [
        (domain, pair.certificate) for domain, pair in config.tls.per_domain.items()]


def _random_secret() -> str:
    import secrets

    return secrets.token_hex(32)


@dataclasses.dataclass(eq=False)
class GatewayParts:
    """The running parts of one gateway (see the module docstring)."""

    config: GatewayConfig
    node_id: str
    started_at: str
    metrics: Metrics | None
    store: AsyncAuthorizationStore
    backend: SipSide
    router: Router
    s2s: S2SService
    forwarding: PresenceForwarding | None = None
    member: ClusterMember | None = None
    proxy: ProxyHealth | None = None  # OPTIONS to the SIP proxy, when metrics look at it
    draining: bool = False
    _started: set[str] = dataclasses.field(default_factory=set)

    async def start(self) -> None:
        """Start in dependency order; raises StartupError (what started is stopped by
        :meth:`stop`)."""
        config = self.config
        if self.metrics is not None and config.metrics.enabled:
            self.metrics.serve(config.metrics.host, config.metrics.port)
        self._started.add("metrics")
        await self._join_cluster()
        listen_for_changes(self.store, self.router, self.forwarding)
        # The SIP side restores the watches this node owns, so it starts after the
        # claims; it sends to the router, whose workers start next, and the router
        # sends to the S2S service, which listens last.
        await self.backend.start(self.router, watches=self.store, notifiers=self.store,
                                 metrics=self.metrics, spellings=self.store)
        self._started.add("backend")
        if self.proxy is not None:
            self.proxy.start()
        await self.router.start(self.s2s)
        self._started.add("router")
        try:
            await self.s2s.start()
        except OSError as exc:
            raise StartupError(f"cannot listen: {exc.strerror or exc}") from None
        finally:
            self._started.add("s2s")

    async def _join_cluster(self) -> None:
        """Shared store: heartbeat and claim the watches of dead nodes before the SIP
        backend starts (it restores every watch this node owns). Own store: the rows
        nobody alive owns (an older node id, a file from before clusters) are ours."""
        try:
            if self.member is None:
                await self.store.claim_watches(self.config.cluster.lease)
                await self.store.claim_notifiers(self.config.cluster.lease)
                return
            claimed = await self.member.start()
            self._started.add("member")
        except StoreError as exc:
            raise StartupError(f"store: {exc}") from None
        log_event(log, logging.INFO, "cluster.joined", node=self.node_id,
                  lease=self.config.cluster.lease, watches_claimed=len(claimed))

    async def stop(self) -> None:
        """Stop what started, in reverse order. The S2S service goes first: it bounces
        what it could not send to the local senders, which needs the router and the
        backend still running; then the router finishes its queues, then the backend."""
        started = self._started
        if "s2s" in started:
            await self.s2s.stop()
        if "router" in started:
            await self.router.stop(grace=2.0)
        if self.proxy is not None:
            await self.proxy.stop()
        if "backend" in started:
            await self.backend.stop()
        if "member" in started and self.member is not None:
            await self.member.stop()
            await self.member.set_state(STOPPED)
        await self.store.aclose()
        if self.metrics is not None and "metrics" in started:
            self.metrics.close()
        started.clear()

    async def apply(self, config: GatewayConfig) -> tuple[int, str]:
        """A reloaded configuration for every part: (streams closed, note on what only
        a restart changes). Raises TlsConfigError before changing anything."""
        closed = self.s2s.apply(config)  # first: it may refuse the new certificates
        self.router.apply(config)
        live = await self.backend.apply(config.sip)
        old, new = dataclasses.asdict(self.config.sip), dataclasses.asdict(config.sip)
        self.config = config
        if not {name for name in new if new[name] != old[name]} - live:
            return closed, ""
        changed = "sip settings other than " + " and ".join(sorted(live)) \
            if live else "sip settings"
        return closed, f"{changed} change only on restart"

    # ------------------------------------------------------------------ reports

    def report(self, state: str) -> NodeReport:
        """This node in the cluster table (each heartbeat)."""
        addresses = [f"{h}:{p}" for h, p in self.s2s.listening_addresses]
        if self.backend.address:
            addresses.append(self.backend.address)
        return NodeReport(
            node_id=self.node_id, addresses=" ".join(addresses), started_at=self.started_at,
            state=state, sessions=self.s2s.streams, queued=self.router.queued + self.s2s.queued,
            watches=self.backend.watch_count, pid=os.getpid(),
            config=json.dumps(config_fingerprint(self.config)))

    def status(self, reloads: int) -> dict[str, Any]:
        """``xmpp-gateway status`` (JSON)."""
        return {
            "pid": os.getpid(),
            "node": self.node_id,
            "state": "draining" if self.draining else RUNNING,
            "domains": list(self.config.domains),
            "partners": len(self.config.partners),
            "reloads": reloads,
            "sessions": self.s2s.describe(),
            "queues": self.s2s.queues(),
            # Partners being connected to again after failed rounds (gateway/net/backoff.py).
            "backoff": self.s2s.backoffs(),
            "router": self.router.describe(),
            # Stanzas neither delivered nor answered, by reason (gateway/drops.py).
            "dropped": self.router.drops.describe(),
            # The SIP side's own figures (subscriptions held, transactions in flight …).
            "backend": {"kind": self.config.sip.backend, **self.backend.describe()},
        }
