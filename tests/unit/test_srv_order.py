"""SRV ordering (RFC 2782) and target planning (RFC 6120 §3.2, XEP-0368), pure functions."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.dns.srv import (
    DEFAULT_PORT,
    ConnectTarget,
    NoServiceError,
    SrvRecord,
    is_no_service,
    order_srv,
    plan_targets,
)

DOT = SrvRecord(0, 0, 0, ".")


class ScriptedRandom(random.Random):
    """Draws given numbers for randint and keeps the order on shuffle, so the RFC 2782
    running-sum rule can be checked at its exact boundaries."""

    def __init__(self, draws: Sequence[int]) -> None:
        super().__init__(0)
        self.draws = list(draws)
        self.ranges: list[tuple[int, int]] = []

    def randint(self, a: int, b: int) -> int:
        self.ranges.append((a, b))
        return self.draws.pop(0)

    def shuffle(self, x: Any) -> None:  # keep the given order
        return None


def targets(records: list[SrvRecord], draws: Sequence[int]) -> list[str]:
    return [r.target for r in order_srv(records, ScriptedRandom(draws))]


# --- order_srv ---------------------------------------------------------------------------


def test_priority_ascending_whatever_the_weights() -> None:
    records = [SrvRecord(20, 99, 1, "c."), SrvRecord(10, 0, 2, "a."), SrvRecord(15, 1, 3, "b.")]
    for seed in range(20):
        assert [r.target for r in order_srv(records, random.Random(seed))] == ["a.", "b.", "c."]


@pytest.mark.parametrize(
    ("draw", "first"),
    [(0, "zero."), (1, "ten."), (10, "ten."), (11, "twenty."), (30, "twenty.")],
)
def test_running_sum_rule_at_its_boundaries(draw: int, first: str) -> None:
    # Arranged as given (scripted shuffle) but the weight-0 record moved first, so the
    # running sums are 0, 10, 30; the first record whose sum is >= the draw wins.
    records = [
        SrvRecord(0, 10, 3, "ten."),
        SrvRecord(0, 0, 2, "zero."),
        SrvRecord(0, 20, 1, "twenty."),
    ]
    rng = ScriptedRandom([draw, 0, 0])
    assert order_srv(records, rng)[0].target == first
    assert rng.ranges[0] == (0, 30)  # drawn from 0..sum inclusive (RFC 2782)


def test_selected_record_leaves_and_sum_shrinks() -> None:
    records = [SrvRecord(0, 20, 1, "twenty."), SrvRecord(0, 10, 3, "ten.")]
    rng = ScriptedRandom([15, 10])  # running sums 20, 30: 15 picks "twenty."
    assert [r.target for r in order_srv(records, rng)] == ["twenty.", "ten."]
    assert rng.ranges == [(0, 30), (0, 10)]


def test_same_seed_same_order_and_seeds_vary_the_order() -> None:
    records = [SrvRecord(0, 10, i, f"h{i}.") for i in range(4)]
    first = [r.target for r in order_srv(records, random.Random(42))]
    assert first == [r.target for r in order_srv(records, random.Random(42))]
    orders = {tuple(r.target for r in order_srv(records, random.Random(s))) for s in range(200)}
    assert len(orders) > 12  # 24 permutations exist; equal weights reach many of them


def test_weights_are_respected_statistically() -> None:
    records = [SrvRecord(0, 90, 1, "heavy."), SrvRecord(0, 10, 2, "light.")]
    rng = random.Random(7)
    trials = 4000
    heavy_first = Counter(order_srv(records, rng)[0].target for _ in range(trials))["heavy."]
    # Either arrangement is equally likely: P(heavy first) = (91/101 + 90/101) / 2.
    expected = (91 + 90) / 101 / 2
    sigma = math.sqrt(expected * (1 - expected) / trials)
    assert abs(heavy_first / trials - expected) < 5 * sigma


def test_weight_zero_gets_a_small_chance() -> None:
    records = [SrvRecord(0, 0, 1, "zero."), SrvRecord(0, 9, 2, "nine.")]
    rng = random.Random(11)
    trials = 4000
    zero_first = Counter(order_srv(records, rng)[0].target for _ in range(trials))["zero."]
    expected = 1 / 10  # the draw must be exactly 0 out of 0..9
    sigma = math.sqrt(expected * (1 - expected) / trials)
    assert abs(zero_first / trials - expected) < 5 * sigma


def test_all_zero_weights_share_the_load() -> None:
    records = [SrvRecord(0, 0, i, f"h{i}.") for i in range(3)]
    rng = random.Random(5)
    trials = 3000
    firsts = Counter(order_srv(records, rng)[0].target for _ in range(trials))
    sigma = math.sqrt((1 / 3) * (2 / 3) / trials)
    for host in ("h0.", "h1.", "h2."):
        assert abs(firsts[host] / trials - 1 / 3) < 5 * sigma


records_strategy = st.lists(
    st.builds(
        SrvRecord,
        priority=st.integers(0, 3),
        weight=st.integers(0, 5),
        port=st.integers(1, 65535),
        target=st.sampled_from(["a.", "b.", "c.", "d."]),
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(records=records_strategy, seed=st.integers(0, 2**32))
def test_every_record_exactly_once_priorities_non_decreasing(
    records: list[SrvRecord], seed: int
) -> None:
    ordered = order_srv(records, random.Random(seed))
    assert Counter(ordered) == Counter(records)
    assert [r.priority for r in ordered] == sorted(r.priority for r in records)


def test_no_records_no_order() -> None:
    assert order_srv([], random.Random(1)) == []


# --- "." ---------------------------------------------------------------------------------


def test_is_no_service_needs_the_single_root_target() -> None:
    assert is_no_service([DOT])
    assert is_no_service([SrvRecord(0, 0, 0, "")])
    assert not is_no_service([])
    assert not is_no_service([DOT, SrvRecord(0, 0, 5269, "x.example.")])
    assert not is_no_service([SrvRecord(0, 0, 5269, "x.example.")])


def test_dot_for_xmpp_server_is_no_service_without_fallback() -> None:
    with pytest.raises(NoServiceError) as info:
        plan_targets("b.example", [], [DOT], random.Random(1))
    assert info.value.domain == "b.example"
    assert "_xmpp-server._tcp.b.example" in str(info.value)
    assert isinstance(info.value, LookupError)


def test_dot_for_both_services_is_no_service() -> None:
    with pytest.raises(NoServiceError):
        plan_targets("b.example", [DOT], [DOT], random.Random(1))


def test_dot_for_direct_tls_only_rules_out_direct_tls() -> None:
    plan = plan_targets(
        "b.example", [DOT], [SrvRecord(0, 1, 5269, "x.b.example.")], random.Random(1)
    )
    assert plan == [ConnectTarget("x.b.example", 5269, False, "SRV _xmpp-server._tcp.b.example")]


def test_dot_for_direct_tls_alone_still_falls_back() -> None:
    # "." speaks for _xmpps-server only; RFC 6120 §3.2.2 concerns _xmpp-server records.
    [target] = plan_targets("b.example", [DOT], [], random.Random(1))
    assert (target.host, target.port, target.direct_tls) == ("b.example", DEFAULT_PORT, False)


def test_direct_tls_only_domain_is_reached_over_direct_tls() -> None:
    plan = plan_targets(
        "b.example", [SrvRecord(0, 1, 5223, "t.b.example.")], [DOT], random.Random(1)
    )
    assert plan == [ConnectTarget("t.b.example", 5223, True, "SRV _xmpps-server._tcp.b.example")]


def test_stray_dot_among_real_records_is_dropped() -> None:
    real = SrvRecord(5, 1, 5269, "x.b.example.")
    plan = plan_targets("b.example", [], [DOT, real], random.Random(1))
    assert [(t.host, t.port) for t in plan] == [("x.b.example", 5269)]


# --- fallback and merging ----------------------------------------------------------------


def test_fallback_without_srv_is_the_domain_on_5269_with_starttls() -> None:
    [target] = plan_targets("b.example", [], [], random.Random(1))
    assert (target.host, target.port, target.direct_tls) == ("b.example", 5269, False)
    assert target.source.startswith("fallback A/AAAA")


def test_direct_tls_first_on_equal_priority_when_preferred() -> None:
    direct = [SrvRecord(0, 0, 5270, "x.a.example.")]  # even with weight 0 against 100
    starttls = [SrvRecord(0, 100, 5269, "x.a.example.")]
    for seed in range(50):
        plan = plan_targets("a.example", direct, starttls, random.Random(seed))
        assert [(t.port, t.direct_tls) for t in plan] == [(5270, True), (5269, False)]
    assert plan[0] == ConnectTarget("x.a.example", 5270, True, "SRV _xmpps-server._tcp.a.example")


def test_without_preference_weights_mix_both_sets() -> None:
    direct = [SrvRecord(0, 0, 5270, "x.a.example.")]
    starttls = [SrvRecord(0, 100, 5269, "x.a.example.")]
    rng = random.Random(3)
    trials = 2000
    firsts = Counter(
        plan_targets("a.example", direct, starttls, rng, prefer_direct_tls=False)[0].direct_tls
        for _ in range(trials)
    )
    expected = 1 / 101  # the weight-0 direct-TLS record wins only on a draw of 0
    assert firsts[True] / trials < expected + 5 * math.sqrt(expected / trials)
    assert firsts[True] + firsts[False] == trials


def test_priority_decides_across_both_sets() -> None:
    plan = plan_targets(
        "a.example",
        [SrvRecord(10, 5, 5270, "d.a.example."), SrvRecord(30, 5, 5271, "e.a.example.")],
        [SrvRecord(0, 5, 5269, "s.a.example."), SrvRecord(20, 5, 5299, "t.a.example.")],
        random.Random(1),
    )
    assert [(t.host, t.port, t.direct_tls) for t in plan] == [
        ("s.a.example", 5269, False),
        ("d.a.example", 5270, True),
        ("t.a.example", 5299, False),
        ("e.a.example", 5271, True),
    ]


def test_same_record_in_both_sets_keeps_its_connection_type() -> None:
    shared = SrvRecord(0, 1, 5269, "x.a.example.")
    plan = plan_targets("a.example", [shared], [shared], random.Random(1))
    assert [t.direct_tls for t in plan] == [True, False]
