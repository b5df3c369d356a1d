"""SRV ordering and target planning (RFC 2782, RFC 6120 §3.2, XEP-0368)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.dns.srv import SrvRecord, order_srv, plan_targets


def test_priority_ascending() -> None:
    records = [SrvRecord(20, 5, 1, "c."), SrvRecord(10, 5, 2, "a."), SrvRecord(15, 0, 3, "b.")]
    assert [r.target for r in order_srv(records, random.Random(1))] == ["a.", "b.", "c."]


def test_weights_are_respected_statistically() -> None:
    records = [SrvRecord(0, 90, 1, "heavy."), SrvRecord(0, 10, 2, "light.")]
    rng = random.Random(7)
    firsts = Counter(order_srv(records, rng)[0].target for _ in range(2000))
    assert 0.85 < firsts["heavy."] / 2000 < 0.95


def test_every_record_is_kept_once() -> None:
    records = [SrvRecord(p, w, i, f"h{i}.") for i, (p, w) in enumerate([(0, 0), (0, 0), (1, 3)])]
    assert sorted(order_srv(records, random.Random(3)), key=lambda r: r.port) == records


def test_fallback_without_srv() -> None:
    [target] = plan_targets("b.example", [], [], random.Random(1))
    assert (target.host, target.port, target.direct_tls) == ("b.example", 5269, False)


def test_dot_target_means_no_service() -> None:
    with pytest.raises(LookupError, match="no XMPP server service"):
        plan_targets("b.example", [], [SrvRecord(0, 0, 0, ".")], random.Random(1))


def test_direct_tls_preferred_on_equal_priority() -> None:
    targets = plan_targets(
        "a.example",
        [SrvRecord(0, 5, 5270, "x.a.example.")],
        [SrvRecord(0, 5, 5269, "x.a.example.")],
        random.Random(1),
    )
    assert [(t.port, t.direct_tls) for t in targets] == [(5270, True), (5269, False)]
    assert targets[0].host == "x.a.example"


def test_lower_priority_starttls_before_direct_tls() -> None:
    targets = plan_targets(
        "a.example", [SrvRecord(10, 5, 5270, "x.")], [SrvRecord(0, 5, 5269, "y.")], random.Random(1)
    )
    assert [t.port for t in targets] == [5269, 5270]
