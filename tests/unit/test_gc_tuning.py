"""The daemon's collector thresholds (gateway/gc_tuning.py): the young generation's raised,
the older generations' ratios kept; run_gateway applies them before the gateway starts."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from gateway import daemon, gc_tuning
from gateway.config.model import GatewayConfig


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    saved = gc.get_threshold()
    yield saved
    gc.set_threshold(*saved)


def test_young_threshold_raised_older_ratios_kept(thresholds: tuple[int, int, int]) -> None:
    gc_tuning.tune_for_daemon()
    assert gc.get_threshold() == (gc_tuning.GEN0_THRESHOLD, thresholds[1], thresholds[2])


def test_run_gateway_tunes_before_starting(thresholds: tuple[int, int, int],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int, int]] = []

    async def serve_forever(self: daemon.Gateway) -> None:
        seen.append(gc.get_threshold())

    monkeypatch.setattr(daemon.Gateway, "serve_forever", serve_forever)
    monkeypatch.setattr(daemon, "configure_logging", lambda *args: None)
    assert asyncio.run(daemon.run_gateway(GatewayConfig(domains=("b.example",)))) == 0
    assert seen == [(gc_tuning.GEN0_THRESHOLD, thresholds[1], thresholds[2])]
