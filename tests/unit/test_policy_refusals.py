"""A policy mismatch is named as one: policy-violation with the policy in its text toward
users, and the setting to change for the admin."""

from __future__ import annotations

from gateway.config.model import PartnerPolicy, PartnerType
from gateway.policy.negotiation import Support
from gateway.policy.refusals import bounce_for, is_policy_failure, setting_to_change


def partner(tls: str, sasl: str = "optional", dialback: bool = True) -> PartnerPolicy:
    return PartnerPolicy("fabrikam.example", PartnerType.FEDERATED, Support(tls),
                         Support(sasl), dialback)


def test_a_policy_failure_bounces_as_policy_violation_with_the_policy() -> None:
    reason = "fabrikam.example requires TLS but partner policy tls=not-supported"
    assert bounce_for("remote-server-not-found", reason, "contoso.example",
                      "fabrikam.example") == (
        "policy-violation",
        "the server policies of contoso.example and fabrikam.example do not allow a "
        "connection: fabrikam.example requires TLS but partner policy tls=not-supported")
    # The partner closed our stream with its own policy error.
    condition, text = bounce_for(
        "remote-server-not-found", "stream error from peer: Encrypted server-to-server "
        "communication is required but was not offered", "contoso.example",
        "fabrikam.example", stream_error="policy-violation")
    assert condition == "policy-violation" and "was not offered" in text


def test_network_failures_keep_their_condition() -> None:
    for condition, reason in (("remote-server-not-found", "DNS: fabrikam.example: NXDOMAIN"),
                              ("remote-server-timeout", "192.0.2.20:5269: timed out"),
                              ("remote-server-not-found", "Connection refused")):
        assert bounce_for(condition, reason, "contoso.example", "fabrikam.example") == (
            condition, reason)
        assert not is_policy_failure(reason)


def test_the_setting_to_change_is_named_with_its_command() -> None:
    assert setting_to_change(
        "fabrikam.example", partner("not-supported"),
        "policy-violation: Encrypted server-to-server communication is required but was "
        "not offered") == (
        "our policy for fabrikam.example is tls=not-supported sasl=optional dialback=true "
        "while fabrikam.example requires encryption: xmpp-gateway partner set "
        "fabrikam.example --tls optional (or required)")
    assert "ask its admin to enable TLS for server-to-server, or xmpp-gateway partner set " \
        "fabrikam.example --tls optional" in setting_to_change(
            "fabrikam.example", partner("required"),
            "fabrikam.example does not offer STARTTLS; partner policy requires TLS")
    assert setting_to_change("fabrikam.example", partner("required", "required", False),
                             "dialback over TLS not permitted").endswith(
        "xmpp-gateway partner set fabrikam.example --dialback true --sasl optional")
    assert "--sasl optional --dialback true" in setting_to_change(
        "fabrikam.example", partner("optional", "required", False),
        "SASL is not permitted: certificate name mismatch")
    assert setting_to_change("other.example", None, "not a federation partner").startswith(
        "other.example is not a federation partner: xmpp-gateway partner add other.example")
