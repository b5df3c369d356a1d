"""Error mapping between SIP responses and XMPP stanza errors (RFC 7247 §8).

Both tables follow RFC 7247 §8.1 (XMPP → SIP) and §8.2 (SIP → XMPP); where the RFC
leaves a choice we note it. The XMPP error ``type`` for a condition comes from
:data:`gateway.xmpp.errors.STANZA_CONDITION_TYPES`, like every other error we generate.
"""

from __future__ import annotations

# RFC 7247 §8.1, Table 5: XMPP stanza error condition → SIP response code.
XMPP_TO_SIP: dict[str, int] = {
    "bad-request": 400,
    "conflict": 400,
    "feature-not-implemented": 501,
    "forbidden": 403,
    "gone": 410,
    "internal-server-error": 500,
    "item-not-found": 404,
    "jid-malformed": 400,
    "not-acceptable": 406,
    "not-allowed": 403,
    "not-authorized": 401,
    "policy-violation": 403,
    "recipient-unavailable": 480,
    "redirect": 302,
    "registration-required": 400,
    "remote-server-not-found": 404,
    "remote-server-timeout": 408,
    "resource-constraint": 500,
    "service-unavailable": 503,
    "subscription-required": 400,
    "undefined-condition": 400,
    "unexpected-request": 491,
}

# RFC 7247 §8.2, Table 6: SIP response code → XMPP stanza error condition.
SIP_TO_XMPP: dict[int, str] = {
    400: "bad-request",
    401: "not-authorized",
    402: "bad-request",
    403: "forbidden",
    404: "item-not-found",
    405: "feature-not-implemented",
    406: "not-acceptable",
    407: "registration-required",
    408: "remote-server-timeout",
    410: "gone",
    413: "bad-request",
    414: "bad-request",
    415: "bad-request",
    416: "bad-request",
    420: "bad-request",
    421: "bad-request",
    423: "bad-request",
    480: "recipient-unavailable",
    481: "item-not-found",
    482: "not-acceptable",
    483: "not-acceptable",
    484: "item-not-found",
    485: "item-not-found",
    486: "recipient-unavailable",
    487: "service-unavailable",
    488: "not-acceptable",
    489: "feature-not-implemented",
    491: "unexpected-request",
    493: "bad-request",
    500: "internal-server-error",
    501: "feature-not-implemented",
    502: "remote-server-not-found",
    503: "service-unavailable",
    504: "remote-server-timeout",
    505: "not-acceptable",
    513: "bad-request",
    600: "service-unavailable",
    603: "service-unavailable",
    604: "item-not-found",
    606: "not-acceptable",
}

def sip_status_for(condition: str) -> int:
    """The SIP final response for an XMPP error condition (unknown → 400, as RFC 7247
    maps undefined-condition)."""
    return XMPP_TO_SIP.get(condition, 400)


def xmpp_condition_for(status: int) -> str:
    """The XMPP error condition for a SIP final failure response. Codes the table does not
    list fall back to their class (§21: a UAC treats an unknown code as x00)."""
    if status in SIP_TO_XMPP:
        return SIP_TO_XMPP[status]
    if 300 <= status < 400:
        return "redirect"
    return SIP_TO_XMPP.get(status // 100 * 100, "undefined-condition")
