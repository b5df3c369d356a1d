"""Fixtures for integration tests: a PKI, and a real dnsmasq with the test domains."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.router import Router
from testbed.dnsmasq import DnsmasqServer, SilentNameserver, free_port
from testbed.pki import Pki


@pytest.fixture(autouse=True)
def no_stanza_dropped(request: pytest.FixtureRequest,
                      monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Router]]:
    """Every gateway a test starts must end with its drop counter at 0 (nothing is
    dropped silently): a test that provokes drops on purpose says so with
    ``@pytest.mark.drops_expected`` and asserts the count itself."""
    routers: list[Router] = []
    original = Router.__init__

    def remember(self: Router, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        routers.append(self)

    monkeypatch.setattr(Router, "__init__", remember)
    yield routers
    if request.node.get_closest_marker("drops_expected") is None:
        dropped = [router.drops.describe() for router in routers if router.drops.total]
        assert not dropped, f"stanzas dropped: {dropped}"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def dns_for_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, int]]]:
    """dnsmasq holding SRV records: a.example and b.example on 127.0.0.1, distinct ports."""
    import socket

    ports = {
        "a.example": free_port(kind=socket.SOCK_STREAM),
        "b.example": free_port(kind=socket.SOCK_STREAM),
    }
    server = DnsmasqServer(
        tmp_path_factory.mktemp("dns"),
        host_records={"xmpp.a.example": "127.0.0.1", "xmpp.b.example": "127.0.0.1"},
        srv_records=[(f"_xmpp-server._tcp.{d}", f"xmpp.{d}", p, 0, 5) for d, p in ports.items()],
    )
    with server:
        yield server.nameserver, ports


@pytest.fixture
def dnsmasq_server(tmp_path: Path) -> Iterator[Callable[..., DnsmasqServer]]:
    """Factory fixture: ``dnsmasq_server(host_records=..., srv_records=..., ...)`` starts a
    :class:`DnsmasqServer` in the test's tmp_path; all are stopped at teardown."""
    servers: list[DnsmasqServer] = []

    def start(**kwargs: Any) -> DnsmasqServer:
        server = DnsmasqServer(tmp_path / f"dnsmasq-{len(servers)}", **kwargs)
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in reversed(servers):
            server.stop()


@pytest.fixture
def silent_nameserver() -> Iterator[SilentNameserver]:
    """A nameserver address that never answers (for timeout tests)."""
    with SilentNameserver() as server:
        yield server
