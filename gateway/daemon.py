"""The gateway process: its parts (built by :func:`gateway.assembly.assemble`), its
signals and its admin socket.

Life cycle: SIGTERM/SIGINT → graceful stop (stop accepting, flush queues, bounce what
cannot be sent, close streams with ``</stream:stream>``; a node of a cluster drains
first, see :mod:`gateway.cluster.drain`); SIGHUP or ``xmpp-gateway reload`` → re-read
partners, policies and certificates without dropping established sessions, closing only
those whose partner was removed or whose method is no longer permitted; an invalid new
configuration changes nothing and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway import gc_tuning
from gateway.assembly import GatewayParts, StartupError, assemble
from gateway.auth.coverage import coverage_problems
from gateway.backend import SipSide
from gateway.cluster import drain
from gateway.config.model import GatewayConfig
from gateway.dns.resolver import Resolver
from gateway.logs import configure_logging, log_event
from gateway.net import s2s_record
from gateway.net.admin import AdminServer
from gateway.net.federation import S2SService
from gateway.router import Router
from gateway.store import AsyncAuthorizationStore

if TYPE_CHECKING:
    from gateway.admin_web.server import AdminWebServer

log = logging.getLogger("gateway.daemon")

__all__ = ["Gateway", "StartupError", "run_gateway"]


class Gateway:
    """One gateway process (implements :class:`gateway.contracts.AdminCommands`)."""

    def __init__(self, config: GatewayConfig, *, backend: SipSide | None = None,
                 resolver: Resolver | None = None) -> None:
        self.config = config
        self.node_id = config.cluster.node_id or socket.gethostname()
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.parts: GatewayParts | None = None
        self.admin: AdminServer | None = None
        self.console: AdminWebServer | None = None  # admin_web.enabled
        self.reloads = 0
        self._backend, self._resolver = backend, resolver
        self._stop = asyncio.Event()
        self._started = asyncio.Event()
        self._stopped = asyncio.Event()
        self._drain_task: asyncio.Task[None] | None = None

    # The parts, once started (tests and tools read them).

    @property
    def _running(self) -> GatewayParts:
        if self.parts is None:
            raise RuntimeError("the gateway is not started")
        return self.parts

    @property
    def router(self) -> Router:
        return self._running.router

    @property
    def s2s(self) -> S2SService:
        return self._running.s2s

    @property
    def store(self) -> AsyncAuthorizationStore:
        return self._running.store

    @property
    def backend(self) -> SipSide:
        return self._backend if self.parts is None and self._backend else self._running.backend

    @property
    def draining(self) -> bool:
        return self.parts is not None and self.parts.draining

    @property
    def started(self) -> asyncio.Event:
        """Set once :meth:`start` has finished (the gateway serves)."""
        return self._started

    @property
    def stopped(self) -> asyncio.Event:
        """Set once :meth:`stop` has finished."""
        return self._stopped

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        config = self.config
        _check_fd_limit(config.limits.max_connections)
        self.parts = await assemble(config, node_id=self.node_id, started_at=self.started_at,
                                    backend=self._backend, resolver=self._resolver)
        await self.parts.start()
        self.admin = AdminServer(config.admin_socket, self)
        try:
            await self.admin.start()
        except OSError as exc:
            raise StartupError(f"admin socket {config.admin_socket}: {exc}") from None
        if config.admin_web.enabled:
            await self._start_console(self.parts)
        log_event(log, logging.INFO, "gateway.started", domains=",".join(config.domains),
                  partners=len(config.partners), backend=config.sip.backend,
                  listen=" ".join(f"{h}:{p}" for h, p in self.s2s.listening_addresses),
                  pid=os.getpid())
        self._started.set()

    async def stop(self) -> None:
        log_event(log, logging.INFO, "gateway.stopping")
        if self.console is not None:
            await self.console.stop()
        if self.admin is not None:
            await self.admin.stop()
        if self.parts is not None:
            await self.parts.stop()
        log_event(log, logging.INFO, "gateway.stopped")
        self._stopped.set()

    def request_stop(self) -> None:
        self._stop.set()

    async def _start_console(self, parts: GatewayParts) -> None:
        """The admin console (``admin_web``), reading and acting through this object and
        the parts the CLI's commands reach."""
        from gateway.admin_web.ports import ConsoleParts
        from gateway.admin_web.server import AdminWebServer
        from gateway.cli.main import installed_version

        assert parts.metrics is not None  # made whenever the console is on
        self.console = AdminWebServer(ConsoleParts(
            gateway=self, users=parts.store, traffic=parts.metrics,
            cluster=parts.store if parts.member is not None else None, proxy=parts.proxy,
            version=installed_version()), self.config.admin_web)
        where = f"admin_web.listen {self.config.admin_web.listen}"
        try:
            await self.console.start()
        except OSError as exc:  # the port is taken, the address is not ours …
            raise StartupError(f"{where}: {exc.strerror or exc}") from None
        except ValueError as exc:  # the certificate or key cannot be loaded
            raise StartupError(f"{where}: {exc}") from None

    def user_switch_changed(self, local_user: str) -> None:
        """The console changed a federation switch: the next stanza reads it anew."""
        self._running.router.forget_cached(local_user)

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

    def _on_terminate(self) -> None:
        """SIGTERM/SIGINT: a node of a cluster drains (hands over its work, then stops);
        a lone gateway stops as it always did (it has nobody to hand over to)."""
        if self.parts is not None and self.parts.member is not None \
                and not self._stop.is_set():
            self.start_drain()
        else:
            self.request_stop()

    # ------------------------------------------------------------------ drain

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
        """A planned restart without losing a stanza (:mod:`gateway.cluster.drain`); the
        caller stops the gateway afterwards (:meth:`start_drain` does)."""
        parts = self._running
        parts.draining = True
        await drain(node_id=self.node_id, settings=self.config.cluster, s2s=parts.s2s,
                    router=parts.router, backend=parts.backend, store=parts.store,
                    member=parts.member)

    # ------------------------------------------------------------------ admin commands

    async def reload(self) -> dict[str, Any]:
        """Re-read the configuration file; keep sessions the new policy still allows."""
        from gateway.auth.tls_provider import TlsConfigError
        from gateway.config.loader import ConfigError, load_config

        source = self.config.source
        if source is None:
            return {"ok": False, "error": "configuration was not loaded from a file"}
        try:
            new = load_config(source)
        except (ConfigError, OSError) as exc:
            return self._reload_refused(exc)
        note = "" if (new.domains, new.listen) == (self.config.domains, self.config.listen) \
            else "served domains and listen addresses change only on restart"
        if new.admin_web != self.config.admin_web:
            note = "; ".join(filter(None, [note, "admin_web settings change only on restart"]))
        # Domains, listeners and the console are bound at start: the running ones stay.
        new = dataclasses.replace(new, domains=self.config.domains, listen=self.config.listen,
                                  admin_web=self.config.admin_web)
        # A certificate that does not authenticate a served domain would quietly turn
        # SASL EXTERNAL into dialback: keep the running one (gateway/auth/coverage.py).
        uncovered = coverage_problems(new.tls, new.domains)
        if uncovered:
            return self._reload_refused(ValueError("; ".join(map(str, uncovered))))
        try:
            closed, sip_note = await self._running.apply(new)
        except TlsConfigError as exc:
            return self._reload_refused(exc)
        self.config = new
        note = "; ".join(filter(None, [note, sip_note]))
        self.reloads += 1
        log_event(log, logging.INFO, "gateway.reloaded", partners=len(new.partners),
                  closed_sessions=closed, note=note)
        return {"ok": True, "closed_sessions": closed, "partners": len(new.partners),
                "note": note}

    def _reload_refused(self, exc: Exception) -> dict[str, Any]:
        log_event(log, logging.ERROR, "gateway.reload_refused", reason=str(exc))
        return {"ok": False, "error": str(exc)}

    async def probe(self, domain: str) -> dict[str, Any]:
        """``check connectivity``: a real outbound negotiation narrated step by step."""
        from gateway.domain import DomainError, normalize_domain
        from gateway.net.downgrade import explain
        from gateway.net.probe import probe

        try:
            remote = normalize_domain(domain)
        except DomainError as exc:
            return {"ok": False, "error": str(exc)}
        report = await probe(self.s2s, self.config.domains[0], remote)
        answer = report.as_dict()
        # A dialback where SASL EXTERNAL was permitted is a downgrade: say so, and why.
        answer["verdict"], answer["hint"] = explain(answer, self.config, self.config.domains[0])
        return {**answer, "error": "" if report.ok else answer["verdict"]}

    def status(self) -> dict[str, Any]:
        return self._running.status(self.reloads)


def _check_fd_limit(maximum: int) -> None:
    from gateway.net.fdlimit import ensure_fd_limit

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


async def run_gateway(config: GatewayConfig) -> int:
    configure_logging(config.logging.level, config.logging.format, config.logging.file)
    s2s_record.install_from_environment()  # a debugging aid, off unless asked for
    gc_tuning.tune_for_daemon()  # the collector's cost under load (see the module)
    gateway = Gateway(config)
    try:
        await gateway.serve_forever()
    except StartupError as exc:
        log_event(log, logging.ERROR, "gateway.start_failed", reason=str(exc))
        with contextlib.suppress(Exception):
            await gateway.stop()
        return 1
    return 0
