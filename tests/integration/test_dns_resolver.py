"""DnsPythonResolver against a real dnsmasq (and a nameserver that never answers)."""

from __future__ import annotations

import socket

import pytest

from gateway.dns.resolver import DnsPythonResolver, DnsResolutionError
from tests.support.dnsmasq import DnsmasqServer


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory):
    server = DnsmasqServer(
        tmp_path_factory.mktemp("dns"),
        host_records={
            "xmpp.a.example": "127.0.0.2",
            "backup.a.example": "127.0.0.3",
            "plain.example": "127.0.0.4",
        },
        srv_records=[
            ("_xmpp-server._tcp.a.example", "xmpp.a.example", 5269, 0, 5),
            ("_xmpp-server._tcp.a.example", "backup.a.example", 5299, 10, 5),
            ("_xmpps-server._tcp.a.example", "xmpp.a.example", 5270, 0, 5),
            ("_xmpp-server._tcp.none.example", ".", 0, 0, 0),
        ],
    )
    with server:
        yield server


async def test_srv_targets_in_order(dns: DnsmasqServer) -> None:
    resolver = DnsPythonResolver((dns.nameserver,), timeout=2)
    targets = await resolver.resolve_targets("a.example")
    assert [(t.host, t.port, t.direct_tls) for t in targets] == [
        ("xmpp.a.example", 5270, True),
        ("xmpp.a.example", 5269, False),
        ("backup.a.example", 5299, False),
    ]
    assert await resolver.resolve_addresses("backup.a.example") == ["127.0.0.3"]


async def test_direct_tls_lookup_can_be_disabled(dns: DnsmasqServer) -> None:
    resolver = DnsPythonResolver((dns.nameserver,), timeout=2, direct_tls=False)
    assert all(not t.direct_tls for t in await resolver.resolve_targets("a.example"))


async def test_fallback_to_a_record(dns: DnsmasqServer) -> None:
    resolver = DnsPythonResolver((dns.nameserver,), timeout=2)
    [target] = await resolver.resolve_targets("plain.example")
    assert (target.host, target.port) == ("plain.example", 5269)
    assert await resolver.resolve_addresses("plain.example") == ["127.0.0.4"]


async def test_no_service(dns: DnsmasqServer) -> None:
    resolver = DnsPythonResolver((dns.nameserver,), timeout=2)
    with pytest.raises(DnsResolutionError) as info:
        await resolver.resolve_targets("none.example")
    assert info.value.kind == "no-service"


async def test_nxdomain(dns: DnsmasqServer) -> None:
    resolver = DnsPythonResolver((dns.nameserver,), timeout=2)
    with pytest.raises(DnsResolutionError) as info:
        await resolver.resolve_addresses("missing.example")
    assert info.value.kind == "nxdomain"


async def test_timeout_against_a_silent_server() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        resolver = DnsPythonResolver((f"127.0.0.1:{port}",), timeout=0.3)
        with pytest.raises(DnsResolutionError) as info:
            await resolver.resolve_targets("a.example")
    assert info.value.kind == "timeout"
