"""When two servers' policies do not meet: what each side's users and the admin are told.

A stream that fails because of a policy — ours (``tls=not-supported`` toward a partner that
requires encryption, ``sasl=required`` without certificates that verify) or the partner's
(Prosody's ``s2s_require_encryption``, ``s2s_secure_auth``) — is not a missing server:
the stanzas waiting for it bounce with ``<policy-violation/>`` (RFC 6120 §8.3.3.12: "the
server MAY choose to specify the policy in the <text/> element"), not
``<remote-server-not-found/>`` (§8.3.3.15, a server that cannot be found or reached), and
the text says which policy. The admin gets a WARNING naming the partner and the setting to
change (:func:`setting_to_change`).

Pure: policy values and reason texts in, words out.
"""

from __future__ import annotations

from gateway.config.model import PartnerPolicy
from gateway.policy.negotiation import Support

POLICY_VIOLATION = "policy-violation"

# Words of the stream-level reasons (ours from gateway/xmpp, or a peer's <text/>) that
# say the streams failed on a policy rather than on the network.
_POLICY_WORDS = ("policy", "requires tls", "tls is required", "starttls", "encrypt",
                 "sasl", "dialback", "certificate", "not a federation partner",
                 "cannot authenticate", "not-authorized", "secure")


def is_policy_failure(reason: str, stream_error: str = "") -> bool:
    """Did the streams fail on a policy (either side's), rather than on the network?"""
    if stream_error in (POLICY_VIOLATION, "not-authorized"):
        return True
    text = reason.lower()
    return any(word in text for word in _POLICY_WORDS)


def bounce_for(condition: str, reason: str, local: str, remote: str,
               stream_error: str = "") -> tuple[str, str]:
    """The stanza error (condition, text) for stanzas that could not be sent to ``remote``.

    Network failures keep their condition (remote-server-not-found / -timeout); a policy
    failure becomes ``policy-violation`` with a text naming the policy."""
    if condition in ("remote-server-not-found", "remote-server-timeout") and \
            is_policy_failure(reason, stream_error):
        return POLICY_VIOLATION, (f"the server policies of {local} and {remote} do not "
                                  f"allow a connection: {reason}")
    return condition, reason


def _policy(partner: PartnerPolicy) -> str:
    return (f"tls={partner.tls} sasl={partner.sasl} "
            f"dialback={str(partner.dialback).lower()}")


def setting_to_change(domain: str, partner: PartnerPolicy | None, reason: str) -> str:
    """The setting (and the command) that would let the streams with ``domain`` succeed,
    for the WARNING an admin reads; the partner's own settings when ours are not the
    obstacle."""
    if partner is None:
        return (f"{domain} is not a federation partner: xmpp-gateway partner add {domain} "
                "--type federated (or federation.allow_unlisted: true)")
    text = reason.lower()
    command = f"xmpp-gateway partner set {partner.primary_domain}"
    ours = f"our policy for {partner.primary_domain} is {_policy(partner)}"
    mentions_tls = any(word in text for word in ("tls", "encrypt", "starttls", "secure"))
    if partner.tls is Support.NOT_SUPPORTED and mentions_tls:
        return (f"{ours} while {domain} requires encryption: {command} --tls optional "
                "(or required)")
    if partner.tls is Support.REQUIRED and ("does not offer starttls" in text
                                            or "not offered" in text):
        return (f"{ours} but {domain} offers no TLS: ask its admin to enable TLS for "
                f"server-to-server, or {command} --tls optional")
    if "dialback" in text and not partner.negotiation.permits_dialback(over_tls=True) \
            and not partner.negotiation.permits_dialback(over_tls=False):
        return (f"{ours}, which excludes dialback: make SASL EXTERNAL work (xmpp-gateway "
                f"check connectivity {domain} says why it did not), or {command} "
                "--dialback true" + (" --sasl optional" if partner.tls is Support.REQUIRED
                                     and partner.sasl is Support.REQUIRED else ""))
    if ("sasl" in text or "certificate" in text) and partner.sasl is Support.REQUIRED:
        return (f"{ours}: SASL EXTERNAL must succeed (the CA of {domain}'s certificate in "
                "tls.ca_file here, ours in its trust store; xmpp-gateway check connectivity "
                f"{domain}), or {command} --sasl optional --dialback true")
    return (f"{ours}; xmpp-gateway check connectivity {domain} shows where the negotiation "
            "stops (the partner's own policy may be the obstacle)")
