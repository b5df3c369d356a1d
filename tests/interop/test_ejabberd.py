"""The gateway against a real ejabberd 23.01, both directions, for each scenario.

Same exchange as the Prosody tests; the method is asserted from the gateway's session
records and from ejabberd's debug log ("(tls|…)"/"(tcp|…)" stream lines, the SASL
<auth/> or dialback elements it received).
"""

from __future__ import annotations

import pytest

from testbed.namespace import Namespace
from testbed.pki import Pki
from testbed.servers import Ejabberd, GatewayProcess
from tests.interop.test_prosody import methods
from tests.interop.xmpp_client import assert_echo_exchange, xmpp_client


def run_scenario(ns: Namespace, pki: Pki, partner: dict, listed: bool = True, **ejabberd):
    server = Ejabberd(ns, pki, **ejabberd).start()
    entry = {"domain": "b.example" if listed else "c.example", "type": "federated", **partner}
    gateway = GatewayProcess(ns, pki, [entry], xmpp_addrs=False)
    try:
        gateway.start()
        return xmpp_client(ns, "user@b.example", "127.0.0.3", "echo@gw.example"), server, gateway
    except BaseException:
        gateway.stop()
        server.stop()
        raise


def explain(name: str, server: Ejabberd, gateway: GatewayProcess) -> str:
    lines = [line for line in server.log.splitlines()
             if "gw.example" in line or "s2s" in line.lower()]
    return (f"scenario {name}\n--- gateway log (tail) ---\n{gateway.log[-3000:]}\n"
            f"--- ejabberd log (s2s lines) ---\n" + "\n".join(lines)[-3000:])


CASES = {
    "sasl-external": ({"tls": "required", "sasl": "required", "dialback": "false"},
                      {"starttls": "required"}, "SASL over TLS"),
    "tls-dialback": ({"tls": "required", "sasl": "not-supported", "dialback": "true"},
                     {"starttls": "required", "trusts_gateway": False}, "TLS Dialback"),
    "tcp-dialback": ({"tls": "not-supported", "sasl": "not-supported", "dialback": "true"},
                     {"starttls": "false"}, "TCP Dialback"),
    "best-of-optional": ({"tls": "optional", "sasl": "optional", "dialback": "true"},
                         {"starttls": "optional"}, "SASL over TLS"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_scenario(ns: Namespace, pki: Pki, name: str) -> None:
    partner, options, expected = CASES[name]
    result, server, gateway = run_scenario(ns, pki, partner, **options)
    try:
        why = explain(name, server, gateway)
        assert_echo_exchange(result, "user@b.example", why)
        assert methods(gateway) == {"inbound": {expected}, "outbound": {expected}}, why
        log = server.log
        if expected == "SASL over TLS":
            assert 'mechanism=\\"EXTERNAL\\"' in log or "mechanism='EXTERNAL'" in log, why
        else:
            assert "db:result" in log and "db:verify" in log, why
        assert ("(tls|" in log) == (expected != "TCP Dialback"), why
    finally:
        gateway.stop()
        server.stop()


REFUSALS = {
    "tls-required-vs-tls-off": (
        {"tls": "required", "sasl": "optional", "dialback": "true"}, {"starttls": "false"},
        # ejabberd (s2s_use_starttls: false) gives up itself on our <required/> STARTTLS
        # and bounces; its log shows the features it refused.
        None),
    "sasl-required-vs-untrusted-cert": (
        {"tls": "required", "sasl": "required", "dialback": "false"},
        {"starttls": "required", "trusts_gateway": False},
        "b.example refused SASL EXTERNAL <not-authorized/>"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_refusal(ns: Namespace, pki: Pki, name: str) -> None:
    partner, options, reason = REFUSALS[name]
    result, server, gateway = run_scenario(ns, pki, partner, **options)
    try:
        why = explain(name, server, gateway)
        assert not [m for m in result["messages"] if m["type"] != "error"], why
        if reason is None:
            assert "<required/></starttls>" in server.log, why
            assert any(m["type"] == "error" for m in result["messages"]) or \
                "s2s_out_closed" in server.log, why
        else:
            assert reason in gateway.log, why
        assert not methods(gateway)["outbound"], why
    finally:
        gateway.stop()
        server.stop()


def test_unlisted_domain_is_refused(ns: Namespace, pki: Pki) -> None:
    result, server, gateway = run_scenario(ns, pki, {}, listed=False)
    try:
        why = explain("unlisted", server, gateway)
        assert not [m for m in result["messages"] if m["type"] != "error"], why
        assert "b.example is not a federation partner of this gateway" in gateway.log, why
    finally:
        gateway.stop()
        server.stop()
