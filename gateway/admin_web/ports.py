"""What the console needs from the gateway, as small typed Protocols.

The console reads and acts through the same objects ``xmpp-gateway status``, ``reload``,
``drain``, ``check connectivity`` and ``users``/``contacts`` use; these Protocols name
exactly the part of each it relies on, and the gateway's assembly hands it one object for
each (:class:`ConsoleParts`). Nothing here is probed at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.config.model import GatewayConfig
from gateway.store.authorizations import Authorization, UserSetting
from gateway.store.membership import NodeState


class GatewayControl(Protocol):
    """The running gateway as the admin socket sees it (``gateway.net.admin``)."""

    @property
    def config(self) -> GatewayConfig: ...

    @property
    def node_id(self) -> str: ...

    @property
    def started_at(self) -> str: ...

    def status(self) -> dict[str, Any]:
        """What ``xmpp-gateway status --json`` prints (sessions, router, drops, backend)."""
        ...

    async def reload(self) -> dict[str, Any]:
        """``xmpp-gateway reload``: ``{"ok": …, "error"|"partners", "closed_sessions", …}``."""
        ...

    def start_drain(self) -> dict[str, Any]:
        """``xmpp-gateway drain``: starts draining this node and answers at once."""
        ...

    async def probe(self, domain: str) -> dict[str, Any]:
        """``xmpp-gateway check connectivity``: ``steps``, ``ok``, ``verdict``, ``hint``."""
        ...

    def user_switch_changed(self, local_user: str) -> None:
        """A federation switch was changed in the store: route with it from now on."""
        ...


class UserDirectory(Protocol):
    """The contact-rule store as ``xmpp-gateway users|contacts`` change it (async side)."""

    async def list_users(self) -> list[UserSetting]: ...

    async def set_user_enabled(self, local_user: str, enabled: bool | None) -> None: ...

    async def list_contacts(self, local_user: str) -> list[Authorization]: ...

    async def allow(self, local_user: str, remote_jid: str, source: str = "cli") -> bool: ...

    async def revoke(self, local_user: str, remote_jid: str) -> bool: ...


class ClusterDirectory(Protocol):
    """The cluster table of the shared store (``xmpp-gateway status --cluster``)."""

    async def list_nodes(self) -> list[NodeState]: ...


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
    cluster: ClusterDirectory | None = None  # None: not part of a cluster
    proxy: ProxyHealthView | None = None  # None: no SIP proxy (development backend)
    version: str = ""


def distinct(values: Sequence[str]) -> list[str]:
    """Values in first-seen order without repeats (domains and users shown in lists)."""
    return list(dict.fromkeys(values))
