"""Is the SIP proxy there? An OPTIONS every :data:`INTERVAL` seconds, the answer kept.

``xmpp-gateway check sip`` asks once, from the terminal; a running gateway needs to know
all the time, for the console's overview and for the ``xmpp_gateway_sip_proxy_up`` alert
(deploy/monitoring/). The request is the one ``check sip`` sends (RFC 3261 §11, through
the backend's own transport and transaction layer, so UDP retransmissions and TLS are the
real ones); any final answer, even 404 or 503, means the proxy is up and speaking SIP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from gateway.config.model import SipSettings
from gateway.logs import log_event

log = logging.getLogger("gateway.sip.health")

INTERVAL = 15.0
TIMEOUT = 5.0


class OptionsAnswer(Protocol):
    status: int
    reason: str


def proxy_health(backend: object, settings: SipSettings) -> ProxyHealth | None:
    """The monitor of the SIP backend's proxy; None for a backend without one (the
    development backend serves its users in process)."""
    from gateway.sip.backend import SipBackend

    if not isinstance(backend, SipBackend):
        return None
    transport = backend.transport
    return ProxyHealth(backend.options, f"{settings.proxy_host}:{settings.proxy_port}",
                       settings.transport, lambda: transport.last_error or "")


class ProxyHealth:
    """Asks ``ping(timeout)`` periodically; ``describe()`` says what the last answer was."""

    def __init__(self, ping: Callable[[float], Awaitable[OptionsAnswer | None]], proxy: str,
                 transport: str, last_error: Callable[[], str],
                 interval: float = INTERVAL, timeout: float = TIMEOUT) -> None:
        self.ping, self.proxy, self.transport = ping, proxy, transport
        self.last_error = last_error
        self.interval, self.timeout = interval, timeout
        self.up: bool | None = None
        self.status = 0
        self.reason = ""
        self.rtt = 0.0
        self.problem = ""
        self.checked_at: float | None = None  # Unix time of the last answer or timeout
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sip-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.interval)

    async def check(self) -> None:
        started = time.monotonic()
        try:
            answer = await self.ping(self.timeout)
        except (OSError, ValueError) as exc:
            answer, error = None, str(exc) or type(exc).__name__
        else:
            error = self.last_error()
        was = self.up
        self.checked_at = time.time()
        if answer is not None:
            self.up, self.status, self.reason = True, answer.status, answer.reason
            self.rtt = time.monotonic() - started
            self.problem, self.failures = "", 0
        else:
            self.up = False
            self.failures += 1
            self.problem = f"cannot connect: {error}" if error else \
                f"no answer to OPTIONS within {self.timeout:g} s"
        if was is not self.up:
            log_event(log, logging.INFO if self.up else logging.WARNING,
                      "sip.proxy_up" if self.up else "sip.proxy_down", proxy=self.proxy,
                      transport=self.transport,
                      **({"status": self.status, "rtt_ms": f"{self.rtt * 1000:.1f}"}
                         if self.up else {"reason": self.problem}))

    def describe(self) -> dict[str, Any]:
        return {"proxy": self.proxy, "transport": self.transport,
                "up": None if self.up is None else int(self.up),
                "status": self.status, "reason": self.reason,
                "rtt_seconds": self.rtt if self.up else None,
                "rtt_ms": round(self.rtt * 1000, 1), "problem": self.problem,
                "checked_at": self.checked_at, "failures": self.failures,
                "checked_ago": None if self.checked_at is None
                else round(time.time() - self.checked_at)}
