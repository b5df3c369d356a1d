"""Per-partner connection backoff (gateway/net/backoff.py): doubling from 1 s to 60 s
with jitter, reset by a success."""

from __future__ import annotations

import random

import pytest

from gateway.net.backoff import FIRST_DELAY, JITTER, MAX_DELAY, Backoff


def test_doubles_up_to_the_cap_with_jitter() -> None:
    backoff = Backoff(rng=random.Random(7))
    delays = [backoff.failed(100.0, f"round {n}") for n in range(10)]
    for n, delay in enumerate(delays):
        nominal = min(MAX_DELAY, FIRST_DELAY * 2 ** n)
        assert nominal * (1 - JITTER) <= delay <= nominal * (1 + JITTER)
    assert backoff.failures == 10 and backoff.last_failure == "round 9"
    assert backoff.waiting(100.0) == pytest.approx(delays[-1])
    assert backoff.waiting(100.0 + delays[-1]) == 0.0


def test_success_resets() -> None:
    backoff = Backoff(rng=random.Random(1))
    backoff.failed(0.0, "connection refused")
    assert backoff.waiting(0.0) > 0
    assert backoff.describe(0.0)["last_failure"] == "connection refused"
    backoff.succeeded()
    assert backoff.waiting(0.0) == 0.0 and backoff.describe(0.0) == {
        "failures": 0, "retry_in_seconds": 0.0, "last_failure": ""}
