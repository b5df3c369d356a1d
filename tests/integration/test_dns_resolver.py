"""DnsPythonResolver against a real dnsmasq, a nameserver that never answers, and a validating
dnsmasq that answers SERVFAIL."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.config.model import DnsSettings
from gateway.dns.resolver import DnsPythonResolver, DnsResolutionError, parse_nameserver
from gateway.dns.srv import ConnectTarget
from testbed.dnsmasq import DnsmasqServer, SilentNameserver, servfail_dnsmasq

pytestmark = pytest.mark.integration

HOSTS = {
    "xmpp.a.example": "127.0.0.2",
    "backup.a.example": "127.0.0.3",
    "plain.example": "127.0.0.4",
    "dual.example": ("127.0.0.5", "::1"),
    "v6only.example": "::1",
    "p0.m.example": "127.0.0.6",
    "p1a.m.example": "127.0.0.7",
    "p1b.m.example": "127.0.0.8",
    "p2.m.example": "127.0.0.9",
    "x.tlsonly.example": "127.0.0.10",
    "x.nodirect.example": "127.0.0.11",
}
SRV = [
    ("_xmpp-server._tcp.a.example", "xmpp.a.example", 5269, 0, 5),
    ("_xmpp-server._tcp.a.example", "backup.a.example", 5299, 10, 5),
    ("_xmpps-server._tcp.a.example", "xmpp.a.example", 5270, 0, 5),
    # three priorities, two equal-weight records in the middle one
    ("_xmpp-server._tcp.m.example", "p2.m.example", 5271, 20, 1),
    ("_xmpp-server._tcp.m.example", "p1a.m.example", 5272, 10, 50),
    ("_xmpp-server._tcp.m.example", "p0.m.example", 5273, 0, 0),
    ("_xmpp-server._tcp.m.example", "p1b.m.example", 5274, 10, 50),
    # "." answers (RFC 2782 "decidedly not available")
    ("_xmpp-server._tcp.none.example", ".", 0, 0, 0),
    ("_xmpp-server._tcp.neither.example", ".", 0, 0, 0),
    ("_xmpps-server._tcp.neither.example", ".", 0, 0, 0),
    ("_xmpp-server._tcp.tlsonly.example", ".", 0, 0, 0),
    ("_xmpps-server._tcp.tlsonly.example", "x.tlsonly.example", 5223, 0, 0),
    ("_xmpps-server._tcp.nodirect.example", ".", 0, 0, 0),
    ("_xmpp-server._tcp.nodirect.example", "x.nodirect.example", 5269, 0, 0),
]


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsmasqServer]:
    server = DnsmasqServer(
        tmp_path_factory.mktemp("dns"),
        host_records=HOSTS,
        srv_records=SRV,
        extra_args=("--txt-record=noaddr.example,no addresses here",),
    )
    with server:
        yield server


def resolver_for(server: DnsmasqServer, **kwargs: object) -> DnsPythonResolver:
    return DnsPythonResolver((server.nameserver,), timeout=1.0, **kwargs)  # type: ignore[arg-type]


# --- SRV ----------------------------------------------------------------------------------


async def test_srv_targets_in_order_direct_tls_first(dns: DnsmasqServer) -> None:
    targets = await resolver_for(dns).resolve_targets("a.example")
    assert targets == [
        ConnectTarget("xmpp.a.example", 5270, True, "SRV _xmpps-server._tcp.a.example"),
        ConnectTarget("xmpp.a.example", 5269, False, "SRV _xmpp-server._tcp.a.example"),
        ConnectTarget("backup.a.example", 5299, False, "SRV _xmpp-server._tcp.a.example"),
    ]


async def test_multiple_priorities_and_weights(dns: DnsmasqServer) -> None:
    middle_first: set[str] = set()
    for seed in range(30):
        resolver = resolver_for(dns, rng=random.Random(seed))
        hosts = [t.host for t in await resolver.resolve_targets("m.example")]
        assert hosts[0] == "p0.m.example" and hosts[3] == "p2.m.example"
        assert set(hosts[1:3]) == {"p1a.m.example", "p1b.m.example"}
        middle_first.add(hosts[1])
    assert middle_first == {"p1a.m.example", "p1b.m.example"}  # equal weights share the load


async def test_direct_tls_lookup_can_be_disabled(dns: DnsmasqServer) -> None:
    targets = await resolver_for(dns, direct_tls=False).resolve_targets("nodirect.example")
    assert [(t.host, t.direct_tls) for t in targets] == [("x.nodirect.example", False)]
    asked = dns.queries()
    assert ("SRV", "_xmpp-server._tcp.nodirect.example") in asked
    assert ("SRV", "_xmpps-server._tcp.nodirect.example") not in asked


async def test_fallback_to_the_domain_without_srv(dns: DnsmasqServer) -> None:
    resolver = resolver_for(dns)
    assert await resolver.resolve_targets("plain.example") == [
        ConnectTarget(
            "plain.example", 5269, False, "fallback A/AAAA of plain.example (no SRV records)"
        )
    ]
    assert await resolver.resolve_addresses("plain.example") == ["127.0.0.4"]


async def test_nxdomain_domain_falls_back_then_has_no_address(dns: DnsmasqServer) -> None:
    resolver = resolver_for(dns)
    [target] = await resolver.resolve_targets("missing.example")  # NXDOMAIN SRV = no SRV
    assert (target.host, target.port) == ("missing.example", 5269)
    with pytest.raises(DnsResolutionError) as info:
        await resolver.resolve_addresses(target.host)
    assert info.value.kind == "nxdomain"
    assert str(info.value) == "A/AAAA missing.example.: the name does not exist (NXDOMAIN)"


# --- "." -----------------------------------------------------------------------------------


@pytest.mark.parametrize("domain", ["none.example", "neither.example"])
async def test_no_service(dns: DnsmasqServer, domain: str) -> None:
    with pytest.raises(DnsResolutionError) as info:
        await resolver_for(dns).resolve_targets(domain)
    assert info.value.kind == "no-service"
    assert f"SRV _xmpp-server._tcp.{domain} has the target '.'" in str(info.value)


async def test_direct_tls_only_domain(dns: DnsmasqServer) -> None:
    assert await resolver_for(dns).resolve_targets("tlsonly.example") == [
        ConnectTarget("x.tlsonly.example", 5223, True, "SRV _xmpps-server._tcp.tlsonly.example")
    ]
    with pytest.raises(DnsResolutionError) as info:
        await resolver_for(dns, direct_tls=False).resolve_targets("tlsonly.example")
    assert info.value.kind == "no-service"


async def test_dot_for_direct_tls_leaves_starttls(dns: DnsmasqServer) -> None:
    targets = await resolver_for(dns).resolve_targets("nodirect.example")
    assert [(t.host, t.port, t.direct_tls) for t in targets] == [
        ("x.nodirect.example", 5269, False)
    ]


# --- addresses ----------------------------------------------------------------------------


async def test_ipv6_first_then_ipv4(dns: DnsmasqServer) -> None:
    assert await resolver_for(dns).resolve_addresses("dual.example") == ["::1", "127.0.0.5"]
    assert await resolver_for(dns).resolve_addresses("v6only.example") == ["::1"]


async def test_name_without_addresses(dns: DnsmasqServer) -> None:
    with pytest.raises(DnsResolutionError) as info:
        await resolver_for(dns).resolve_addresses("noaddr.example")
    assert info.value.kind == "no-address"
    assert "noaddr.example" in str(info.value)


async def test_ip_literal_needs_no_lookup(dns: DnsmasqServer) -> None:
    assert await resolver_for(dns).resolve_addresses("127.0.0.1") == ["127.0.0.1"]


async def test_invalid_name_is_refused_before_asking(dns: DnsmasqServer) -> None:
    with pytest.raises(DnsResolutionError) as info:
        await resolver_for(dns).resolve_addresses("a..example")
    assert info.value.kind == "nxdomain"
    assert "not a valid domain name" in str(info.value)


# --- failures -----------------------------------------------------------------------------


async def test_timeout_against_a_silent_server(silent_nameserver: SilentNameserver) -> None:
    resolver = DnsPythonResolver((silent_nameserver.nameserver,), timeout=0.3)
    started = time.monotonic()
    with pytest.raises(DnsResolutionError) as info:
        await resolver.resolve_targets("a.example")
    assert time.monotonic() - started < 0.9  # both SRV queries run at once
    assert info.value.kind == "timeout"
    assert str(info.value) == (
        "SRV _xmpp-server._tcp.a.example.: no answer within 0.3 s from "
        f"{silent_nameserver.nameserver}"
    )
    with pytest.raises(DnsResolutionError) as info:
        await resolver.resolve_addresses("xmpp.a.example")
    assert info.value.kind == "timeout"


async def test_servfail(tmp_path: Path) -> None:
    with servfail_dnsmasq(tmp_path) as server:
        resolver = DnsPythonResolver((server.nameserver,), timeout=1.0)
        with pytest.raises(DnsResolutionError) as info:
            await resolver.resolve_targets("broken.example")
        assert info.value.kind == "servfail"
        assert str(info.value).startswith("SRV _xmpp-server._tcp.broken.example.: server failure")
        assert str(info.value).endswith(f"server failure: {server.nameserver} answered SERVFAIL")
        with pytest.raises(DnsResolutionError) as info:
            await resolver.resolve_addresses("xmpp.broken.example")
        assert info.value.kind == "servfail"


async def test_refused_counts_as_server_failure(
    dnsmasq_server: Callable[..., DnsmasqServer],
) -> None:
    # Without --local for a zone and without upstreams, dnsmasq answers REFUSED.
    server = dnsmasq_server(local_domains=())
    with pytest.raises(DnsResolutionError) as info:
        await resolver_for(server).resolve_addresses("anything.example")
    assert info.value.kind == "servfail"
    assert str(info.value) == (
        f"AAAA anything.example.: server failure: {server.nameserver} answered REFUSED"
    )


# --- cache and configuration --------------------------------------------------------------


async def _count_queries(server: DnsmasqServer, name: str, expected: int) -> int:
    deadline = time.monotonic() + 1.0  # dnsmasq writes its log asynchronously
    count = 0
    while time.monotonic() < deadline:
        count = sum(1 for kind, asked in server.queries() if (kind, asked) == ("A", name))
        if count >= expected:
            break
        time.sleep(0.02)
    return count


@pytest.mark.parametrize(("ttl", "queries"), [(0, 2), (300, 1)])
async def test_cache_respects_ttl(
    dnsmasq_server: Callable[..., DnsmasqServer], ttl: int, queries: int
) -> None:
    server = dnsmasq_server(host_records={"c.example": "127.0.0.2"}, local_ttl=ttl)
    resolver = resolver_for(server)
    for _ in range(2):
        assert await resolver.resolve_addresses("c.example") == ["127.0.0.2"]
    time.sleep(0.1)  # a second query, if any, reaches the log
    assert await _count_queries(server, "c.example", queries) == queries


async def test_from_settings(dnsmasq_server: Callable[..., DnsmasqServer]) -> None:
    server = dnsmasq_server(
        address="::1",
        host_records={"xmpp.s.example": "127.0.0.2"},
        srv_records=[
            ("_xmpp-server._tcp.s.example", "xmpp.s.example", 5269, 0, 0),
            ("_xmpps-server._tcp.s.example", "xmpp.s.example", 5270, 0, 0),
        ],
    )
    assert server.nameserver.startswith("[::1]:")
    resolver = DnsPythonResolver.from_settings(
        DnsSettings(nameservers=(server.nameserver,), timeout=1.0, direct_tls=False)
    )
    assert [(t.port, t.direct_tls) for t in await resolver.resolve_targets("s.example")] == [
        (5269, False)
    ]


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("127.0.0.53", ("127.0.0.53", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("::1", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
        ("[fe80::1]", ("fe80::1", 53)),
    ],
)
def test_nameserver_forms(spec: str, parsed: tuple[str, int]) -> None:
    assert parse_nameserver(spec) == parsed


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("dns.example", "is not an IP address"),
        ("127.0.0.1:0", "not a number from 1 to 65535"),
        ("127.0.0.1:dns", "not a number from 1 to 65535"),
        ("[::1", "expected [IPv6] or [IPv6]:port"),
    ],
)
def test_bad_nameserver_is_refused_at_construction(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        DnsPythonResolver((spec,))


async def test_failed_direct_tls_query_leaves_starttls_records(
    dnsmasq_server: Callable[..., DnsmasqServer],
    silent_nameserver: SilentNameserver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # dnsmasq forwards the two _xmpps-server names to a server that never answers.
    silent = silent_nameserver.nameserver.replace(":", "#")
    server = dnsmasq_server(
        host_records={"x.partial.example": "127.0.0.2"},
        srv_records=[("_xmpp-server._tcp.partial.example", "x.partial.example", 5269, 0, 0)],
        extra_args=(
            f"--server=/_xmpps-server._tcp.partial.example/{silent}",
            f"--server=/_xmpps-server._tcp.bare.example/{silent}",
        ),
    )
    resolver = DnsPythonResolver((server.nameserver,), timeout=0.3)
    with caplog.at_level("WARNING", logger="gateway.dns.resolver"):
        targets = await resolver.resolve_targets("partial.example")
    assert [(t.host, t.direct_tls) for t in targets] == [("x.partial.example", False)]
    assert [r.getMessage() for r in caplog.records] == ["dns.srv_failed"]
    # Without _xmpp-server records the failure decides: "no SRV" cannot be concluded.
    with pytest.raises(DnsResolutionError) as info:
        await resolver.resolve_targets("bare.example")
    assert info.value.kind == "timeout"
    assert str(info.value).startswith("SRV _xmpps-server._tcp.bare.example.: no answer within")
