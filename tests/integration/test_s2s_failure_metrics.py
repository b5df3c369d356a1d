"""``xmpp_gateway_s2s_failures_total{reason}``: an outbound session the partner policy
cannot negotiate is one failure, counted once, under the XMPP condition its bounce carries
(the alert rule and the dashboard in deploy/monitoring/ read this counter)."""

from __future__ import annotations

import dataclasses
import socket

import pytest

from gateway.config.model import MetricsSettings
from gateway.daemon import Gateway
from gateway.dns.resolver import DnsPythonResolver
from gateway.policy.negotiation import Support
from gateway.sip.development import message
from testbed.dnsmasq import free_port
from tests.integration.test_two_gateways import Pair, _policy, pair, partner  # noqa: F401
from tests.support.matrix import MatrixRow

TLS_REQUIRED_AGAINST_NONE = (_policy(Support.REQUIRED, Support.OPTIONAL, True),
                             _policy(Support.NOT_SUPPORTED, Support.NOT_SUPPORTED, True), True)
SASL_AGAINST_UNTRUSTED = (_policy(Support.REQUIRED, Support.REQUIRED, False),
                          _policy(Support.REQUIRED, Support.REQUIRED, False), False)


@pytest.mark.parametrize(("ours", "theirs", "trusting"),
                         [TLS_REQUIRED_AGAINST_NONE, SASL_AGAINST_UNTRUSTED],
                         ids=["tls-required-against-none", "sasl-against-untrusted"])
async def test_a_session_the_policy_cannot_negotiate_is_one_failure(
        pair: Pair, ours: MatrixRow, theirs: MatrixRow, trusting: bool) -> None:  # noqa: F811
    await pair.start(partner("b.example", ours), partner("a.example", theirs),
                     a_trusts_b=trusting)
    config = dataclasses.replace(pair.a.config, metrics=MetricsSettings(
        True, "127.0.0.1", free_port(kind=socket.SOCK_STREAM)))
    await pair.a.stop()
    a = Gateway(config, resolver=DnsPythonResolver(nameservers=(pair.dns,), timeout=2.0))
    await a.start()
    pair.gateways["a.example"] = a
    await a.backend.inject(message("alice@a.example/pc", "bob@b.example", "hello"))
    bounce = await a.backend.next_delivered(15)
    assert bounce.get("type") == "error"
    condition = bounce.find("{jabber:server}error/*")
    assert condition is not None
    assert a.parts.metrics is not None
    failures = {k: v for k, v in a.parts.metrics.s2s_failures.values.items() if v}
    assert failures == {condition.tag.rpartition("}")[2]: 1.0}, failures
