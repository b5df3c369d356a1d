"""Prometheus metrics after a known exchange between two gateways."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import urllib.request

from gateway.config.model import MetricsSettings
from gateway.daemon import Gateway
from gateway.dns.resolver import DnsPythonResolver
from gateway.policy.negotiation import Support
from gateway.sip.development import message
from testbed.dnsmasq import free_port
from tests.integration.test_two_gateways import Pair, _policy, pair, partner  # noqa: F401


async def test_metrics_after_three_messages(pair: Pair) -> None:  # noqa: F811
    sasl = _policy(Support.REQUIRED, Support.REQUIRED, False)
    await pair.start(partner("b.example", sasl), partner("a.example", sasl))
    # Restart A with metrics on (same config otherwise).
    port = free_port(kind=socket.SOCK_STREAM)
    config = dataclasses.replace(pair.a.config, metrics=MetricsSettings(True, "127.0.0.1", port))
    await pair.a.stop()
    a = Gateway(config, resolver=DnsPythonResolver(nameservers=(pair.dns,), timeout=2.0))
    await a.start()
    pair.gateways["a.example"] = a
    for index in range(3):
        await a.backend.inject(message("alice@a.example/pc", "bob@b.example", f"m{index}"))
    for _ in range(3):
        await pair.b.backend.next_delivered(10)
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read())
    text = body.decode()
    assert 'xmpp_gateway_stanzas_out_total{peer="b.example"} 3.0' in text
    assert ('xmpp_gateway_sessions_authenticated_total{direction="outbound",'
            'method="SASL over TLS"} 1.0') in text
    assert 'xmpp_gateway_handshake_seconds_count{method="SASL over TLS"} 1.0' in text
    assert "xmpp_gateway_queue_depth 0.0" in text
    assert "xmpp_gateway_streams 1.0" in text  # A: its one outbound stream to B
