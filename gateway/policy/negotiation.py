"""The negotiation rule: which S2S authentication methods a partner entry permits.

The negotiation matrix (docs/configuration.md, "The negotiation matrix") lists 18 combinations of
(tls, sasl, dialback) in a table
(``negotiation-matrix.csv`` beside this module, from the Lync Server 2013 documentation;
see ``negotiation-matrix.md``). One rule reproduces the whole table, so we implement
the rule, not the table, and the tests check the rule against every row of the CSV.

This module is pure: plain values in, plain values out. The config validator, the
admin CLI and the wire code (what to offer inbound, what to try outbound) all call
:func:`negotiate`, so they can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cache


class Support(StrEnum):
    """Partner setting for ``tls`` and ``sasl``."""

    REQUIRED = "required"
    OPTIONAL = "optional"
    NOT_SUPPORTED = "not-supported"


class AuthMethod(StrEnum):
    """How an S2S stream was (or may be) authenticated, in order of preference."""

    SASL_TLS = "SASL over TLS"  # RFC 6120 §6 + XEP-0178 (SASL EXTERNAL, certificates)
    TLS_DIALBACK = "TLS Dialback"  # XEP-0220 on a TLS-protected stream
    TCP_DIALBACK = "TCP Dialback"  # XEP-0220 on an unencrypted stream


# Messages, in the words of the matrix (negotiation-matrix.csv, column "notes").
MSG_SASL_NEEDS_TLS = (
    "SASL requires TLS. Allowing TLS to be optional may result in failed session negotiations."
)
MSG_NO_DIALBACK_WITH_SASL_AND_TLS_REQUIRED = (
    "Dialback will not operate if both SASL and TLS are required."
)
MSG_SASL_REQUIRED_TLS_UNAVAILABLE = (
    "Because SASL requires TLS, and TLS is not available, SASL/TLS cannot succeed. "
    "TCP Dialback is set to false, and cannot be used."
)
MSG_SASL_OR_DIALBACK = "SASL or Dialback must be enabled."
MSG_TLS_DIALBACK_ONLY = "Configuration allows for TLS Dialback."
MSG_TLS_OR_TCP_DIALBACK = (
    "Based on negotiation choices of the other end point, TCP or TLS Dialback will be accepted."
)
MSG_TCP_DIALBACK_ONLY = "TCP Dialback is the only negotiation method available"


@dataclass(frozen=True, slots=True)
class Negotiation:
    """Outcome of the rule for one (tls, sasl, dialback) combination."""

    tls: Support
    sasl: Support
    dialback: bool
    methods: tuple[AuthMethod, ...]  # permitted, most preferred first
    message: str  # the matrix's note/warning/error text ("" when it has none)

    @property
    def valid(self) -> bool:
        """A configuration is invalid when it permits no method at all."""
        return bool(self.methods)

    @property
    def error(self) -> str | None:
        """Why the entry is refused, in the table's words; None when valid."""
        return None if self.valid else self.message

    @property
    def warnings(self) -> tuple[str, ...]:
        """Notes to show on save and on ``check`` for a valid entry."""
        return (self.message,) if self.valid and self.message else ()

    def permits(self, method: AuthMethod) -> bool:
        return method in self.methods

    def permits_dialback(self, *, over_tls: bool) -> bool:
        """Is dialback acceptable on a stream in this TLS state?"""
        return self.permits(AuthMethod.TLS_DIALBACK if over_tls else AuthMethod.TCP_DIALBACK)

    @property
    def tls_mandatory(self) -> bool:
        """No permitted method works without TLS: never talk in the clear."""
        return AuthMethod.TCP_DIALBACK not in self.methods

    @property
    def methods_text(self) -> str:
        return "; ".join(self.methods) if self.methods else "none"


def _message(tls: Support, sasl: Support, dialback: bool) -> str:
    """The matrix's text for a combination."""
    if sasl is Support.NOT_SUPPORTED:
        if not dialback:
            return MSG_SASL_OR_DIALBACK
        return {
            Support.REQUIRED: MSG_TLS_DIALBACK_ONLY,
            Support.OPTIONAL: MSG_TLS_OR_TCP_DIALBACK,
            Support.NOT_SUPPORTED: MSG_TCP_DIALBACK_ONLY,
        }[tls]
    if tls is Support.REQUIRED:
        both_required = sasl is Support.REQUIRED and dialback
        return MSG_NO_DIALBACK_WITH_SASL_AND_TLS_REQUIRED if both_required else ""
    if tls is Support.NOT_SUPPORTED and sasl is Support.REQUIRED and not dialback:
        return MSG_SASL_REQUIRED_TLS_UNAVAILABLE
    return MSG_SASL_NEEDS_TLS


@cache
def negotiate(tls: Support, sasl: Support, dialback: bool) -> Negotiation:
    """Apply the rule that reproduces the negotiation matrix.

    - SASL over TLS when tls and sasl are both not ``not-supported``;
    - TLS Dialback when tls is not ``not-supported``, dialback is on, and not both
      tls and sasl are ``required``;
    - TCP Dialback when tls is not ``required`` and dialback is on;
    - invalid when nothing is permitted.
    """
    tls, sasl, dialback = Support(tls), Support(sasl), bool(dialback)
    methods: list[AuthMethod] = []
    if tls is not Support.NOT_SUPPORTED and sasl is not Support.NOT_SUPPORTED:
        methods.append(AuthMethod.SASL_TLS)
    both_required = tls is Support.REQUIRED and sasl is Support.REQUIRED
    if tls is not Support.NOT_SUPPORTED and dialback and not both_required:
        methods.append(AuthMethod.TLS_DIALBACK)
    if tls is not Support.REQUIRED and dialback:
        methods.append(AuthMethod.TCP_DIALBACK)
    return Negotiation(tls, sasl, dialback, tuple(methods), _message(tls, sasl, dialback))
