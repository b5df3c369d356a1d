"""TLSA lookups through a real validating resolver: unbound in front of NSD serving a zone
signed with ldns-signzone (tests/support/dnssec.py), on loopback ports of their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.dns.resolver import DnsPythonResolver, DnsResolutionError
from testbed.dnsmasq import free_dns_port
from tests.support.dnssec import SignedZone, tools_missing

LEAF_SPKI = "aa" * 32


@pytest.fixture(scope="module")
def zone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SignedZone]:
    if tools_missing():
        pytest.fail(f"{', '.join(tools_missing())} not installed: run `make debs` (make test "
                    "does)")
    signed = SignedZone(
        Path(tmp_path_factory.mktemp("dnssec")),
        host_records={"xmpp.b.example": "127.0.0.3", "c.example": "127.0.0.7"},
        srv_records=[("_xmpp-server._tcp.b.example", "xmpp.b.example", 5269, 0, 5)],
        tlsa_records=[("_5269._tcp.xmpp.b.example", 3, 1, 1, LEAF_SPKI)],
        unsigned_names=["forged.example"],
        address="127.0.0.1", authority="127.0.0.1", port=free_dns_port(),
        authority_port=free_dns_port())
    try:
        yield signed.start()
    finally:
        signed.stop()


def resolver(zone: SignedZone, dnssec: bool = True) -> DnsPythonResolver:
    return DnsPythonResolver((zone.nameserver,), timeout=3, direct_tls=False, dnssec=dnssec,
                             cache_size=0)


async def test_secure_tlsa_through_srv(zone: SignedZone) -> None:
    dns = resolver(zone)
    [target] = await dns.resolve_targets("b.example")
    answer = await dns.resolve_tlsa("b.example", target)
    assert answer.secure, zone.log("unbound")
    assert answer.name == "_5269._tcp.xmpp.b.example"
    assert [(r.usage, r.selector, r.matching_type, r.data.hex()) for r in answer.records] == [
        (3, 1, 1, LEAF_SPKI)]


async def test_secure_absence_of_tlsa(zone: SignedZone) -> None:
    dns = resolver(zone)
    [target] = await dns.resolve_targets("c.example")  # no SRV: the domain itself
    answer = await dns.resolve_tlsa("c.example", target)
    assert answer.records == () and answer.secure and answer.note.startswith("no TLSA")


async def test_without_dnssec_nothing_is_believed(zone: SignedZone) -> None:
    dns = resolver(zone, dnssec=False)
    [target] = await dns.resolve_targets("b.example")
    answer = await dns.resolve_tlsa("b.example", target)
    assert not answer.secure and not answer.usable and "dns.dnssec is off" in answer.note


async def test_bogus_data_is_a_failure(zone: SignedZone) -> None:
    dns = resolver(zone)
    with pytest.raises(DnsResolutionError) as raised:
        await dns.resolve_addresses("forged.example")
    assert raised.value.kind == "servfail"
