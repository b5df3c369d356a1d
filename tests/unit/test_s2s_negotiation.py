"""Negotiation through two sans-I/O cores for every pairing of valid matrix rows.

A's policy for B x B's policy for A x peer certificates trusted or not (338 pairings).
The expected outcome comes from an oracle written here from the negotiation rules
(docs/configuration.md, "The negotiation matrix") and the CSV's ``expected_methods``
column alone — it does not call ``gateway.policy`` — so a wrong negotiation rule and a
wrong state machine cannot agree by construction:

1. TLS is used when neither side has tls=not-supported (used when the peer offers it);
   a side whose permitted set has no method without TLS never talks in the
   clear (never downgrade).
2. Over TLS: SASL over TLS when both permit it and the certificates verify; else TLS
   Dialback when both permit it; else failure.
3. Without TLS: TCP Dialback when both permit it; else failure.

For each failure the oracle also says who notices and what goes on the wire (asserted on
the cleartext each core parsed, i.e. inside TLS too).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.config.model import PartnerPolicy, PartnerType
from gateway.policy.negotiation import Support
from gateway.sip.development import message
from gateway.xmpp.events import PairAuthenticated, PairFailed, StanzaReceived, StreamClosed
from testbed.pki import Pki
from tests.support.matrix import MATRIX
from tests.unit.s2s_world import CoreServer, World, accepting_stream

SASL, TLS_DB, TCP_DB = "SASL over TLS", "TLS Dialback", "TCP Dialback"
A, B = "a.example", "b.example"


@dataclass(frozen=True)
class Row:
    tls: str  # as spelled in the CSV: Required / Optional / NotSupported
    sasl: str
    dialback: bool
    methods: frozenset[str]

    @property
    def label(self) -> str:
        return f"{self.tls}-{self.sasl}-{'db' if self.dialback else 'nodb'}"

    def policy_for(self, domain: str) -> PartnerPolicy:
        words = {"Required": "required", "Optional": "optional", "NotSupported": "not-supported"}
        return PartnerPolicy(
            domain,
            PartnerType.FEDERATED,
            Support(words[self.tls]),
            Support(words[self.sasl]),
            self.dialback,
        )


def load_valid_rows() -> list[Row]:
    with MATRIX.open(newline="", encoding="utf-8") as handle:
        rows = [
            Row(
                r["tls"].strip(),
                r["sasl"].strip(),
                r["dialback"].strip() == "True",
                frozenset(m.strip() for m in r["expected_methods"].split(";") if m.strip()),
            )
            for r in csv.DictReader(handle)
            if r["valid"].strip() == "yes"
        ]
    assert len(rows) == 13, "the matrix has 13 valid rows of 18"
    return rows


ROWS = load_valid_rows()


@dataclass(frozen=True)
class Outcome:
    method: str | None  # None = the pairing must fail
    # For failures: substring of A's PairFailed reason; the stream error A sends ("" = a
    # plain </stream:stream>); the dialback error B answers with ("" = none).
    reason: str = ""
    stream_error: str = ""
    dialback_error: str = ""


def oracle(a: Row, b: Row, trusted: bool) -> Outcome:
    """What the negotiation rules say must happen when A (policy ``a`` for B) connects to B
    (policy ``b`` for A). Written from the documented rules, independent of the implementation."""
    a_needs_tls = TCP_DB not in a.methods  # nothing A permits works in the clear
    b_needs_tls = TCP_DB not in b.methods
    if "NotSupported" not in (a.tls, b.tls):
        # Both allow TLS: it is used.
        if SASL in a.methods and SASL in b.methods and trusted:
            return Outcome(SASL)
        if TLS_DB in a.methods and TLS_DB in b.methods:
            return Outcome(TLS_DB)
        if TLS_DB not in a.methods:
            # A has nothing left to try: it refuses with a policy error itself.
            return Outcome(None, "cannot authenticate", "policy-violation")
        # A tries dialback; B's policy forbids it (XEP-0220 §2.4 error, then A closes).
        return Outcome(None, "answered dialback with error <not-authorized/>", "",
                       "not-authorized")
    # One side never does TLS.
    if b.tls == "NotSupported" and a_needs_tls:
        return Outcome(None, "does not offer STARTTLS", "policy-violation")
    if a.tls == "NotSupported" and b_needs_tls:
        # B offers STARTTLS as <required/>; A will not do TLS and leaves.
        return Outcome(None, "requires TLS", "")
    if TCP_DB in a.methods and TCP_DB in b.methods:
        return Outcome(TCP_DB)
    raise AssertionError(f"the oracle has no answer for {a} x {b}")  # pragma: no cover


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(Path(tmp_path_factory.mktemp("pki")))


def make_world(pki: Pki, row_a: Row, row_b: Row, trusted: bool) -> World:
    world = World()
    world.add(CoreServer(A, [row_a.policy_for(B)], pki.tls_settings(A, trusts_peers=trusted)))
    world.add(CoreServer(B, [row_b.policy_for(A)], pki.tls_settings(B, trusts_peers=trusted)))
    return world


def test_oracle_covers_every_kind_of_outcome() -> None:
    outcomes = {
        (o.method, o.stream_error, o.dialback_error, o.reason)
        for a in ROWS for b in ROWS for t in (True, False)
        for o in [oracle(a, b, t)]
    }
    methods = {o[0] for o in outcomes}
    assert methods == {SASL, TLS_DB, TCP_DB, None}
    assert len([o for o in outcomes if o[0] is None]) == 4


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted", "untrusted"])
@pytest.mark.parametrize("row_b", ROWS, ids=lambda r: "B:" + r.label)
@pytest.mark.parametrize("row_a", ROWS, ids=lambda r: "A:" + r.label)
def test_pairing(pki: Pki, row_a: Row, row_b: Row, trusted: bool) -> None:
    expected = oracle(row_a, row_b, trusted)
    world = make_world(pki, row_a, row_b, trusted)
    out = world.outbound(A, B)
    world.run()
    inbound = accepting_stream(world, out)
    a_auth = [e for o, s, e in world.events
              if o == A and s is out and isinstance(e, PairAuthenticated)]
    b_auth = [e for o, s, e in world.events
              if o == B and s is inbound and isinstance(e, PairAuthenticated)]
    if expected.method is not None:
        assert [(e.remote_domain, e.local_domain, str(e.method)) for e in a_auth] == [
            (B, A, expected.method)
        ]
        assert [(e.remote_domain, e.local_domain, str(e.method)) for e in b_auth] == [
            (A, B, expected.method)
        ]
        assert str(out.method) == str(inbound.method) == expected.method
        assert out.tls_active is inbound.tls_active is (expected.method != TCP_DB)
        assert not world.of(A, PairFailed)
        # And the session carries traffic.
        out.send_stanza(message("x@a.example/r", "y@b.example", "hello"))
        world.run()
        [received] = world.of(B, StanzaReceived)
        assert received.stanza.findtext("{jabber:server}body") == "hello"
        assert (received.remote_domain, received.local_domain) == (A, B)
        return

    assert not a_auth and not b_auth
    [failed] = world.of(A, PairFailed)
    assert (failed.remote_domain, failed.local_domain) == (B, A)
    assert expected.reason in failed.reason
    to_b = world.plaintext_to(B, inbound)
    to_a = world.plaintext_to(A, out)
    if expected.stream_error:
        assert (
            f'<stream:error><{expected.stream_error} xmlns="urn:ietf:params:xml:ns:'
            f'xmpp-streams"/><text xmlns="urn:ietf:params:xml:ns:xmpp-streams">'.encode()
            in to_b
        )
        [b_closed] = [e for o, s, e in world.events
                      if o == B and s is inbound and isinstance(e, StreamClosed)]
        assert (b_closed.error, b_closed.by_peer) == (expected.stream_error, True)
    else:
        assert b"<stream:error>" not in to_b and b"<stream:error>" not in to_a
    assert to_b.endswith(b"</stream:stream>")  # A always ends its stream
    if expected.dialback_error:
        assert (
            f'<db:result from="{B}" to="{A}" type="error"><error type="cancel">'
            f'<{expected.dialback_error} xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/>'.encode()
            in to_a
        )
    assert out.closed and inbound.closed
