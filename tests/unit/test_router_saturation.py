"""Senders that cannot be paused (SIP over UDP) are refused for now (503 + Retry-After)
only once the XMPP side is saturated, not at the marks where stream senders are paused:
a burst (5,000 phones subscribing at once) waits in the queues instead."""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element

from gateway.config.model import GatewayConfig
from gateway.router.backpressure import HIGH_WATER
from gateway.router.outbound import SATURATED_LANE, SATURATED_QUEUE_FACTOR, OutboundRouting


class Backend:
    """Records the router's word to hold senders back."""

    def __init__(self) -> None:
        self.paused = False

    def input_paused(self, paused: bool) -> None:
        self.paused = paused


def routing() -> tuple[OutboundRouting, Backend, dict[str, int]]:
    backend = Backend()
    config = GatewayConfig(domains=("b.example",))
    routed = OutboundRouting(config, backend, *(None,) * 3)  # type: ignore[arg-type]
    queues: dict[str, int] = {}
    routed._queues = lambda: queues
    return routed, backend, queues


def fill(routed: OutboundRouting, count: int) -> None:
    item: Any = (Element("{jabber:server}presence"), None)
    for _ in range(count):
        routed.lane.put(item)
    routed._update_pressure()


def test_a_full_lane_pauses_stream_senders_and_refuses_datagrams_only_past_a_burst() -> None:
    routed, backend, _ = routing()
    fill(routed, HIGH_WATER)
    assert backend.paused and routed.congested("a.example")
    assert not routed.saturated("a.example")
    fill(routed, SATURATED_LANE - HIGH_WATER)
    assert routed.saturated("a.example")


def test_a_congested_domain_refuses_datagrams_only_far_past_its_bound() -> None:
    routed, backend, queues = routing()
    bound = routed.config.limits.max_queue_per_domain
    queues["b.example->a.example"] = bound + 1
    routed.s2s_congestion("a.example", True)
    assert backend.paused and routed.congested("a.example")
    assert not routed.saturated("a.example")
    queues["b.example->a.example"] = SATURATED_QUEUE_FACTOR * bound
    assert routed.saturated("a.example") and not routed.saturated("c.example")
    routed.s2s_congestion("a.example", False)
    assert not backend.paused and not routed.saturated("a.example")
