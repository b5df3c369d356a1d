"""Every pairing of valid matrix rows through two sans-I/O cores (no sockets).

A's policy for B x B's policy for A x certificates trusted or not: the method recorded on
both ends equals the spec oracle, or the pairing fails with the reason on the wire.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.model import PartnerPolicy, PartnerType
from gateway.sip.development import message
from gateway.xmpp.events import PairAuthenticated, PairFailed, StanzaReceived
from gateway.xmpp.inbound import InboundStream
from tests.support.matrix import MatrixRow, expected_method, matrix_rows
from tests.unit.s2s_world import CoreServer, Pki, World

ROWS = [r for r in matrix_rows() if r.valid]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(Path(tmp_path_factory.mktemp("pki")))


def policy(domain: str, row: MatrixRow) -> PartnerPolicy:
    return PartnerPolicy(domain, PartnerType.FEDERATED, row.tls, row.sasl, row.dialback)


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted", "untrusted"])
@pytest.mark.parametrize("row_b", ROWS, ids=lambda r: r.label)
@pytest.mark.parametrize("row_a", ROWS, ids=lambda r: r.label)
def test_pairing(pki: Pki, row_a: MatrixRow, row_b: MatrixRow, trusted: bool) -> None:
    world = World()
    world.add(CoreServer("a.example", [policy("b.example", row_a)],
                         pki.tls_settings("a.example", trusts_peers=trusted)))
    world.add(CoreServer("b.example", [policy("a.example", row_b)],
                         pki.tls_settings("b.example", trusts_peers=trusted)))
    out = world.outbound("a.example", "b.example")
    world.run()
    expected = expected_method(row_a, row_b, trusted)
    a_auth = [e for o, s, e in world.events
              if o == "a.example" and s is out and isinstance(e, PairAuthenticated)]
    b_auth = [e for o, s, e in world.events
              if o == "b.example" and isinstance(s, InboundStream)
              and isinstance(e, PairAuthenticated) and e.remote_domain == "a.example"]
    if expected is None:
        assert not a_auth and not b_auth
        [failed] = [e for e in world.of("a.example", PairFailed)
                    if e.remote_domain == "b.example"]
        assert failed.reason
        return
    assert [str(e.method) for e in a_auth] == [expected]
    assert [str(e.method) for e in b_auth] == [expected]
    out.send_stanza(message("x@a.example/r", "y@b.example", "hello"))
    world.run()
    [received] = world.of("b.example", StanzaReceived)
    assert received.stanza.findtext("{jabber:server}body") == "hello"
