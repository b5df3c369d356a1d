"""DANE (RFC 7673) toward a real Prosody 0.12: the namespace's DNS is a zone signed with
ldns-signzone, served by NSD and validated by unbound (tests/support/dnssec.py), with a
TLSA record for Prosody's target. The gateway's partner policy requires DANE.

The echo exchange of test_prosody.py shows the outbound direction: the echo's answer goes
gateway → Prosody, over a stream whose certificate DANE had to accept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from testbed.namespace import IPS, Namespace
from testbed.pki import Pki
from testbed.servers import GatewayProcess, Prosody
from tests.interop.xmpp_client import assert_echo_exchange, xmpp_client
from tests.support.dnssec import SignedZone, tools_missing

PARTNER = {"domain": "a.example", "type": "federated", "tls": "required", "sasl": "required",
           "dialback": "false", "dane": "required"}
TLSA_NAME = "_5269._tcp.xmpp.a.example"


def spki_sha256(certificate: Path) -> str:
    key = x509.load_pem_x509_certificate(certificate.read_bytes()).public_key()
    return hashlib.sha256(key.public_bytes(Encoding.DER,
                                           PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def signed_zone(ns: Namespace, pki: Pki, name: str, tlsa_of: str) -> SignedZone:
    """The namespace's DNS replaced by a signed zone whose TLSA for Prosody's target is
    the key of ``tlsa_of``'s certificate."""
    if tools_missing():
        pytest.fail(f"{', '.join(tools_missing())} not installed: run `make debs`")
    if ns.dns is not None:
        ns.dns.stop()
        ns.dns = None
    data = spki_sha256(Path(pki.tls_settings(tlsa_of).certificate))
    return SignedZone(
        ns.workdir / name,
        host_records={**{f"xmpp.{d}": ip for d, ip in IPS.items()}, **IPS},
        srv_records=[(f"_xmpp-server._tcp.{d}", f"xmpp.{d}", 5269, 0, 5) for d in IPS],
        tlsa_records=[(TLSA_NAME, 3, 1, 1, data)],
        prefix=tuple(ns.exec)).start()


@pytest.fixture
def zone_for(ns: Namespace, pki: Pki) -> Iterator:
    started: list[SignedZone] = []

    def start(tlsa_of: str) -> SignedZone:
        zone = signed_zone(ns, pki, f"zone-{len(started)}", tlsa_of)
        started.append(zone)
        return zone

    yield start
    for zone in started:
        zone.stop()


def run(ns: Namespace, pki: Pki, wait: float = 15) -> tuple[dict, Prosody, GatewayProcess]:
    server = Prosody(ns, pki).start()
    gateway = GatewayProcess(ns, pki, [PARTNER], dnssec=True)
    try:
        gateway.start()
        return xmpp_client(ns, "user@a.example", IPS["a.example"], "echo@gw.example",
                           wait), server, gateway
    except BaseException:
        server.stop()
        gateway.stop()
        raise


def test_matching_tlsa_is_accepted(ns: Namespace, pki: Pki, zone_for) -> None:
    zone = zone_for("a.example")
    result, server, gateway = run(ns, pki)
    try:
        why = f"{gateway.log[-3000:]}\n--- unbound ---\n{zone.log('unbound')}"
        assert_echo_exchange(result, "user@a.example", why)
        outbound = [s for s in gateway.status()["sessions"] if s["direction"] == "outbound"]
        assert [s["method"] for s in outbound] == ["SASL over TLS"], why
        assert "s2s.dane_refused" not in gateway.log, why
        # DANE had its say: secure records, one usable (and the stream went on).
        assert f"tlsa={TLSA_NAME} secure=True records=1" in gateway.log, why
    finally:
        server.stop()
        gateway.stop()


def test_wrong_tlsa_is_refused_when_required(ns: Namespace, pki: Pki, zone_for) -> None:
    zone = zone_for("gw.example")  # a TLSA record for another key than Prosody's
    result, server, gateway = run(ns, pki, wait=4)
    try:
        why = f"{gateway.log[-3000:]}\n--- unbound ---\n{zone.log('unbound')}"
        assert not [m for m in result["messages"] if m["type"] != "error"], why
        assert f"DANE: the certificate matches none of the 1 TLSA records at {TLSA_NAME}" \
            in gateway.log, why
        assert not [s for s in gateway.status()["sessions"]
                    if s["direction"] == "outbound" and s["method"]], why
    finally:
        server.stop()
        gateway.stop()
