"""What the console needs from the gateway, as small typed Protocols.

The console reads and acts through the same objects ``xmpp-gateway status``, ``reload``,
``drain``, ``check connectivity`` and ``users``/``contacts`` use; these Protocols name
exactly the part of each it relies on, and the gateway's assembly hands it one object for
each (:class:`ConsoleParts`). Nothing here is probed at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from gateway.config.model import GatewayConfig
from gateway.contracts import AdminCommands
from gateway.store.protocols import AsyncAuthorizations, AsyncMembership, AsyncUserSwitches


class GatewayControl(AdminCommands, Protocol):
    """The running gateway as the admin socket sees it (``status``, ``reload``,
    ``start_drain``, ``probe``: :class:`gateway.contracts.AdminCommands`), and what the
    console shows or does besides."""

    @property
    def config(self) -> GatewayConfig: ...

    @property
    def node_id(self) -> str: ...

    @property
    def started_at(self) -> str: ...

    def user_switch_changed(self, local_user: str) -> None:
        """A federation switch was changed in the store: route with it from now on."""
        ...


class UserDirectory(AsyncAuthorizations, AsyncUserSwitches, Protocol):
    """The contact-rule store as ``xmpp-gateway users|contacts`` change it (async side)."""


class TrafficCounters(Protocol):
    """Cumulative counters since start (the Prometheus metrics' own numbers)."""

    def traffic(self) -> dict[str, Any]:
        """``stanzas_in``, ``stanzas_out``, ``bounces`` (totals) and ``refusals``,
        ``s2s_failures`` (by reason)."""
        ...


class ProxyHealthView(Protocol):
    """The SIP proxy's answer to the gateway's periodic OPTIONS (``sip.backend: sip``)."""

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class ConsoleParts:
    gateway: GatewayControl
    users: UserDirectory
    traffic: TrafficCounters
    cluster: AsyncMembership | None = None  # the cluster table; None: not in a cluster
    proxy: ProxyHealthView | None = None  # None: no SIP proxy (development backend)
    version: str = ""
