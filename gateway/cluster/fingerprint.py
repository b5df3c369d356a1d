"""What the nodes of one cluster must agree on, compared without revealing secrets."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gateway.config.model import GatewayConfig


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_fingerprint(config: GatewayConfig) -> dict[str, Any]:
    """What the nodes of one cluster must agree on (``check config --cluster``): served
    domains, the partner entries (by digest: the list can be long) and the dialback secret
    (by digest: XEP-0185 keys issued by one node are verified by another only if they share
    it; the secret itself never leaves the host)."""
    partners = sorted(
        (p.primary_domain, str(p.partner_type), str(p.tls), str(p.sasl), p.dialback,
         sorted(p.additional_domains)) for p in config.partners)
    secret = config.dialback.secret
    return {
        "domains": sorted(config.domains),
        "partners": _digest(json.dumps(partners)),
        "partner_count": len(partners),
        "secret": _digest("xmpp-gateway dialback secret\0" + secret) if secret else "",
    }


def compare_fingerprints(mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """The differences between two nodes' fingerprints, as sentences (empty = agree)."""
    problems = []
    if mine.get("domains") != theirs.get("domains"):
        problems.append(f"serves {', '.join(theirs.get('domains') or []) or 'nothing'} "
                        f"(this configuration: {', '.join(mine.get('domains') or [])})")
    if mine.get("partners") != theirs.get("partners"):
        problems.append(f"has different partner entries ({theirs.get('partner_count', '?')} "
                        f"partners, digest {theirs.get('partners')}; this configuration: "
                        f"{mine.get('partner_count')}, digest {mine.get('partners')})")
    if not theirs.get("secret"):
        problems.append("has no dialback.secret (a random one per start): keys it issues "
                        "cannot be verified by other nodes")
    elif mine.get("secret") != theirs.get("secret"):
        problems.append("uses a different dialback.secret (digests differ): a partner "
                        "verifying a key with another node gets 'invalid'")
    return problems
