"""What a partner entry means on the wire, in the operator's words.

The negotiation matrix (:mod:`gateway.policy.negotiation`) says which methods an entry
permits and keeps the Lync documentation's notes verbatim; those notes speak of settings
("SASL requires TLS. Allowing TLS to be optional …") even where TLS is not optional at
all. This module states the consequence: which connections the partner will really get,
and which settings have no effect, so that ``tls=not-supported, sasl=required,
dialback=true`` reads "unencrypted TCP dialback only; sasl=required has no effect" rather
than a warning about optional TLS. It never changes the verdict: the methods come from
:func:`gateway.policy.negotiation.negotiate` alone.

On the wire (docs/configuration.md, The negotiation matrix): STARTTLS is used whenever both
sides allow it; SASL EXTERNAL (XEP-0178) needs TLS and a certificate that verifies for the
peer's domain; dialback (XEP-0220) is accepted only in a TLS state the methods permit.
"""

from __future__ import annotations

from gateway.policy.negotiation import AuthMethod, Negotiation, Support

SASL = "SASL EXTERNAL over TLS (certificates must verify both ways)"


def in_effect(negotiation: Negotiation) -> str:
    """One sentence: the connections this partner will use, then settings without effect.

    Empty for an invalid entry (the matrix's error says why it is refused)."""
    if not negotiation.valid:
        return ""
    methods = set(negotiation.methods)
    tls, sasl, dialback = negotiation.tls, negotiation.sasl, negotiation.dialback
    sasl_ok = AuthMethod.SASL_TLS in methods
    tls_dialback = AuthMethod.TLS_DIALBACK in methods
    tcp_dialback = AuthMethod.TCP_DIALBACK in methods

    if methods == {AuthMethod.TCP_DIALBACK}:
        use = "this partner will use unencrypted TCP dialback only (no TLS, no certificates)"
    elif not tcp_dialback:
        if sasl_ok and tls_dialback:
            use = (f"this partner will always be encrypted: {SASL}, else dialback over TLS")
        elif sasl_ok:
            use = (f"this partner will always be encrypted and must use {SASL}; a partner "
                   "without TLS, or whose certificate does not verify, is refused")
        else:
            use = ("this partner will always be encrypted and authenticated by dialback "
                   "over TLS (certificates are not used to authenticate)")
    elif sasl_ok:
        use = (f"this partner will use {SASL} when it can, else dialback over TLS, and "
               "unencrypted TCP dialback when it offers no TLS")
    else:
        use = ("this partner will use dialback only: over TLS when it offers TLS, "
               "unencrypted TCP dialback otherwise")

    no_effect: list[str] = []
    if sasl is Support.REQUIRED and tls is Support.NOT_SUPPORTED:
        no_effect.append("sasl=required has no effect (SASL EXTERNAL needs TLS, which "
                         "tls=not-supported rules out)")
    elif sasl is Support.OPTIONAL and tls is Support.NOT_SUPPORTED:
        no_effect.append("sasl=optional has no effect (SASL EXTERNAL needs TLS)")
    elif sasl is Support.REQUIRED and (tls_dialback or tcp_dialback):
        no_effect.append("sasl=required does not stop the dialback fallback (set "
                         "dialback false to require certificates)")
    if dialback and tls is Support.REQUIRED and sasl is Support.REQUIRED:
        no_effect.append("dialback=true has no effect (tls and sasl are both required)")
    if tls is Support.OPTIONAL and not dialback:
        no_effect.append("tls=optional acts as required (without dialback only SASL "
                         "EXTERNAL over TLS remains)")
    return "; ".join([use, *no_effect])
