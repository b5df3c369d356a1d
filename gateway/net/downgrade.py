"""What a ``check connectivity`` result means, in the operator's terms.

The running gateway negotiates for real and reports its steps (gateway/net/probe.py);
this module turns the report into a verdict and a hint before it leaves the daemon, so
the CLI and the admin console say the same thing.
"OK" is not the whole answer: a partner whose policy permits SASL EXTERNAL but that ends
up authenticated by dialback has been *downgraded* — TLS may still be there, but the
certificates did not do their job, and with ``sasl: required`` such a partner would have
been refused. The reason is almost always one of two, with opposite fixes:

* **our certificate does not name our domain** (RFC 6125 name mismatch): the partner
  refuses it whatever CA signed it; fix our certificate (``cert issue``/``cert import``);
* **the partner does not trust the CA that issued it**: our certificate is right; the
  partner needs our CA in its trust store (Prosody ``ssl.cafile``, ejabberd ``ca_file``).

We can tell them apart locally: the first is a property of our own certificate file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.policy.negotiation import AuthMethod


@dataclass(frozen=True, slots=True)
class SaslCause:
    """Why a partner would not accept our certificate for SASL EXTERNAL, and how to confirm."""

    reason: str
    hint: str


def sasl_refusal_cause(config: Any, local_domain: str) -> SaslCause:
    """The likely reason a partner did not authenticate us with SASL EXTERNAL."""
    from gateway.auth.coverage import certificate_for, coverage_problems

    setting, path = certificate_for(config.tls, local_domain)
    if not Path(path).is_file():
        return SaslCause(
            f"we have no certificate ({setting} {path} does not exist)",
            "make one: xmpp-gateway cert issue (lab CA) or cert request + cert import; "
            "confirm with: xmpp-gateway check certs --no-partners")
    problems = coverage_problems(config.tls, (local_domain,))
    if problems:
        return SaslCause(
            f"our certificate does not name {local_domain}: {problems[0].reason}",
            f"the partner is right to refuse it: issue a certificate for {local_domain} "
            "(xmpp-gateway cert issue, or cert request + cert import); confirm with: "
            "xmpp-gateway check certs --no-partners")
    issuer = _issuer(path)
    ca = config.tls.ca_file or "the CA certificate that issued it"
    return SaslCause(
        f"the partner does not accept our certificate, which names {local_domain} "
        f"correctly: it does not trust its issuer ({issuer})",
        f"give the partner {ca} (Prosody: ssl = {{ cafile = ... }}; ejabberd: ca_file) and "
        f"restart it; confirm on the partner's host: openssl verify -CAfile "
        f"PARTNER_CA_FILE {Path(path).resolve()}")


def _issuer(path: Path) -> str:
    from cryptography import x509

    try:
        leaf = x509.load_pem_x509_certificates(Path(path).read_bytes())[0]
    except (OSError, ValueError):
        return "unreadable certificate"
    return leaf.issuer.rfc4514_string() or "empty issuer name"


def _tls_was_used(answer: dict[str, Any]) -> bool:
    return any(str(step).startswith("TLS:") for step in answer.get("steps", []))


def _peer_certificate_problem(answer: dict[str, Any]) -> str | None:
    """The reason the partner's own certificate did not verify here, if it did not."""
    for step in answer.get("steps", []):
        text = str(step)
        if text.startswith("certificate: NOT valid"):
            return text.partition(" — ")[2] or text
    return None


def peer_certificate_cause(domain: str, reason: str) -> SaslCause:
    """We refused the partner's certificate (so we did not offer it SASL EXTERNAL)."""
    if "issuer not trusted" in reason:
        hint = (f"add the CA that issued {domain}'s certificate to tls.ca_file (a lab "
                "partner: the ca.crt of `xmpp-gateway cert ca`), then xmpp-gateway reload; "
                "confirm with: xmpp-gateway check certs")
    elif "name mismatch" in reason:
        hint = (f"{domain} presents a certificate for other names: it must get one naming "
                f"{domain} (a lab partner: xmpp-gateway cert issue {domain}); confirm with: "
                "xmpp-gateway check certs")
    else:
        hint = f"{domain} must renew or fix its certificate; confirm with: xmpp-gateway check certs"
    return SaslCause(f"{domain}'s certificate did not verify here: {reason}", hint)


def explain(answer: dict[str, Any], config: Any, local_domain: str) -> tuple[str, str]:
    """(verdict, hint) for a probe answer: a downgrade from SASL EXTERNAL is named as
    such with its cause; a SASL failure gets the hint for its real cause."""
    verdict = str(answer.get("verdict") or answer.get("error") or "")
    hint = str(answer.get("hint") or "")
    domain = str(answer.get("domain") or "")
    partner = config.partner_for(domain) if domain else None
    sasl_permitted = partner is not None and partner.negotiation.permits(AuthMethod.SASL_TLS)
    method = str(answer.get("method") or "")
    peer_problem = _peer_certificate_problem(answer)
    if answer.get("ok") and sasl_permitted and method != AuthMethod.SASL_TLS:
        if not _tls_was_used(answer):
            return (f"OK via {method} — SASL EXTERNAL was not possible because {domain} "
                    "offered no TLS",
                    f"ask {domain} to enable TLS for server-to-server connections (Prosody: "
                    "s2s_require_encryption; ejabberd: s2s_use_starttls)")
        cause = (peer_certificate_cause(domain, peer_problem) if peer_problem
                 else sasl_refusal_cause(config, local_domain))
        return f"OK via {method} — SASL EXTERNAL was refused because {cause.reason}", cause.hint
    if not answer.get("ok") and "SASL EXTERNAL" in verdict:
        cause = (peer_certificate_cause(domain, peer_problem) if peer_problem
                 else sasl_refusal_cause(config, local_domain))
        return verdict, f"{cause.reason}; {cause.hint}"
    return verdict, hint
