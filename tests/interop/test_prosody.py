"""The gateway against a real Prosody, both directions, for each negotiation scenario.

Prosody a.example user sends a message to echo@gw.example (Prosody → gateway, inbound for
us) and gets the echo back (gateway → Prosody, outbound), and subscribes to its presence
(the development backend approves and sends presence back). The method is asserted from
the gateway's session records and from Prosody's own debug log.
"""

from __future__ import annotations

import pytest

from testbed.namespace import Namespace
from testbed.pki import Pki
from testbed.servers import GatewayProcess, Prosody
from tests.interop.xmpp_client import assert_echo_exchange, xmpp_client


def scenario(ns: Namespace, pki: Pki, partner: dict, **prosody) -> tuple[dict, Prosody,
                                                                          GatewayProcess]:
    server = Prosody(ns, pki, **prosody).start()
    gateway = GatewayProcess(ns, pki, [{"domain": "a.example", "type": "federated", **partner}])
    try:
        gateway.start()
        result = xmpp_client(ns, "user@a.example", "127.0.0.2", "echo@gw.example")
        return result, server, gateway
    except BaseException:
        server.stop()
        gateway.stop()
        raise


def explain(name: str, server: Prosody, gateway: GatewayProcess) -> str:
    return (f"scenario {name}\n--- gateway log (tail) ---\n{gateway.log[-3000:]}\n"
            f"--- prosody log (s2s lines) ---\n" + "\n".join(
                line for line in server.log.splitlines() if "s2s" in line or "dialback" in line
                or "TLS" in line)[-3000:])


def methods(gateway: GatewayProcess) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {"inbound": set(), "outbound": set()}
    for session in gateway.status()["sessions"]:
        if session["method"]:
            found[session["direction"]].add(session["method"])
    return found


CASES = {
    "sasl-external": ({"tls": "required", "sasl": "required", "dialback": "false"},
                      {"secure_auth": True}, "SASL over TLS"),
    "tls-dialback": ({"tls": "required", "sasl": "not-supported", "dialback": "true"},
                     {"secure_auth": False, "trusts_gateway": False}, "TLS Dialback"),
    "tcp-dialback": ({"tls": "not-supported", "sasl": "not-supported", "dialback": "true"},
                     {"tls": False, "secure_auth": False, "require_encryption": False},
                     "TCP Dialback"),
    "best-of-optional": ({"tls": "optional", "sasl": "optional", "dialback": "true"},
                         {"secure_auth": False}, "SASL over TLS"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_scenario(ns: Namespace, pki: Pki, name: str) -> None:
    partner, prosody, expected = CASES[name]
    result, server, gateway = scenario(ns, pki, partner, **prosody)
    try:
        assert_echo_exchange(result, "user@a.example", explain(name, server, gateway))
        assert methods(gateway) == {"inbound": {expected}, "outbound": {expected}}, \
            explain(name, server, gateway)
        log = server.log
        if expected == "SASL over TLS":
            assert "mechanism='EXTERNAL'" in log or 'mechanism="EXTERNAL"' in log, log[-2000:]
        else:
            assert "dialback" in log.lower() and "verified dialback key" in log, log[-2000:]
        if expected != "TCP Dialback":
            assert "Stream encrypted" in log
    finally:
        server.stop()
        gateway.stop()


REFUSALS = {
    "tls-required-vs-tls-off": (
        {"tls": "required", "sasl": "optional", "dialback": "true"},
        {"tls": False, "secure_auth": False, "require_encryption": False},
        "TLS is required for a.example before anything else"),
    "sasl-required-vs-untrusted-cert": (
        {"tls": "required", "sasl": "required", "dialback": "false"},
        {"secure_auth": False, "trusts_gateway": False},
        "did not offer SASL EXTERNAL"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_refusal(ns: Namespace, pki: Pki, name: str) -> None:
    partner, prosody, reason = REFUSALS[name]
    result, server, gateway = scenario(ns, pki, partner, **prosody)
    try:
        why = explain(name, server, gateway)
        assert not [m for m in result["messages"] if m["type"] != "error"], why
        assert reason in gateway.log, why
        # The refused direction has no authenticated session (the other may: Prosody
        # trusts us in the sasl case, we do not get its trust back).
        assert not methods(gateway)["outbound"], why
    finally:
        server.stop()
        gateway.stop()


def test_unlisted_domain_is_refused(ns: Namespace, pki: Pki) -> None:
    server = Prosody(ns, pki, secure_auth=False).start()
    gateway = GatewayProcess(ns, pki, [{"domain": "b.example", "type": "federated"}]).start()
    try:
        result = xmpp_client(ns, "user@a.example", "127.0.0.2", "echo@gw.example")
        why = explain("unlisted", server, gateway)
        assert not [m for m in result["messages"] if m["type"] != "error"], why
        assert "a.example is not a federation partner of this gateway" in gateway.log, why
    finally:
        server.stop()
        gateway.stop()


def test_check_connectivity_against_prosody(ns: Namespace, pki: Pki) -> None:
    """`xmpp-gateway check connectivity` narrates a real negotiation with Prosody: OK for a
    matching policy, a precise failure with a hint for a misconfigured one."""
    import subprocess
    import sys

    from testbed.namespace import REPO

    server = Prosody(ns, pki, tls=False, secure_auth=False, require_encryption=False).start()
    gateway = GatewayProcess(ns, pki, [
        {"domain": "a.example", "type": "federated", "tls": "optional", "sasl": "optional"}])
    try:
        gateway.start()

        def check() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*ns.exec, sys.executable, "-m", "gateway.cli.main", "-c", str(gateway.config),
                 "check", "connectivity", "a.example"],
                capture_output=True, text=True, timeout=60, cwd=REPO)

        good = check()
        assert good.returncode == 0, good.stdout + good.stderr
        # Authenticated, but not as the policy prefers: called a downgrade, with its cause.
        assert ("OK via TCP Dialback — SASL EXTERNAL was not possible because a.example "
                "offered no TLS") in good.stdout
        assert "hint: ask a.example to enable TLS for server-to-server" in good.stdout
        assert "DNS: xmpp.a.example:5269" in good.stdout
        gateway.stop()
        gateway = GatewayProcess(ns, pki, [
            {"domain": "a.example", "type": "federated", "tls": "required", "sasl": "optional"}])
        gateway.start()
        bad = check()
        assert bad.returncode == 1
        assert "a.example does not offer STARTTLS" in bad.stdout
        assert "hint: the partner has TLS off" in bad.stdout
    finally:
        gateway.stop()
        server.stop()
