"""Adding, changing and removing a partner entry: one implementation, two front ends.

``xmpp-gateway partner add|set|remove`` and the admin console both call these functions,
so an operator reads the same words in the terminal and in the browser: an invalid
(tls, sasl, dialback) combination is refused in the negotiation matrix's own words
(:func:`gateway.policy.negotiation.negotiate`) before the file is touched, the edit itself
goes through :mod:`gateway.config.editor` (comment-preserving, validated, atomic), and a
valid result carries the matrix's warnings and what the entry means on the wire
(:func:`gateway.policy.outcome.in_effect`). Nothing here prints: a :class:`PartnerChange`
says what to show and with which exit status.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from gateway.config.model import GatewayConfig, PartnerPolicy
from gateway.policy.negotiation import Support, negotiate

# Exit statuses of ``xmpp-gateway partner …`` (documented in the CLI's help).
DONE, FAILED, REFUSED = 0, 1, 2


@dataclass(frozen=True, slots=True)
class PartnerChange:
    """What an edit did: ``message`` and ``warnings`` on success, ``error`` otherwise."""

    status: int  # DONE, FAILED (not found, I/O, concurrent edit) or REFUSED (invalid)
    message: str = ""
    warnings: tuple[str, ...] = ()  # the matrix's notes, verbatim
    in_effect: str = ""  # what the entry means on the wire (gateway.policy.outcome)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == DONE


def refusal(tls: Support, sasl: Support, dialback: bool) -> str:
    """The matrix's refusal of a combination, or "" when it is valid."""
    outcome = negotiate(tls, sasl, dialback)
    if outcome.valid:
        return ""
    return (f"refused: tls={tls}, sasl={sasl}, dialback={str(dialback).lower()}: "
            f"{outcome.error}")


def partner_domain(text: str) -> str:
    """Normalised domain, or a DomainError that names the text it was about."""
    from gateway.domain import DomainError, normalize_domain

    try:
        return normalize_domain(text)
    except DomainError as exc:
        raise DomainError(f"{text!r} is not a valid domain: {exc}") from None


def _done(verb: str, policy: PartnerPolicy | None) -> PartnerChange:
    from gateway.policy.outcome import in_effect

    assert policy is not None
    return PartnerChange(DONE, f"{verb} {policy.primary_domain}: permits "
                         f"{policy.negotiation.methods_text}",
                         tuple(policy.negotiation.warnings), in_effect(policy.negotiation))


def _edit(path: Path, action: Callable[[], PartnerChange]) -> PartnerChange:
    """Run an edit, turning each way it can fail into the words the CLI has always used."""
    from gateway.config.editor import ConcurrentEdit, PartnerNotFound
    from gateway.config.loader import ConfigError
    from gateway.domain import DomainError

    try:
        return action()
    except PartnerNotFound as exc:
        return PartnerChange(FAILED, error=f"error: {exc} is not a partner in {path}")
    except ConfigError as exc:
        return PartnerChange(REFUSED, error=f"refused, {path} unchanged:\n{exc}")
    except DomainError as exc:
        return PartnerChange(REFUSED, error=f"error: {exc}")
    except ConcurrentEdit as exc:
        return PartnerChange(FAILED, error=f"error: {exc}")
    except OSError as exc:
        return PartnerChange(FAILED, error=f"error: {path}: {exc.strerror or exc}")


def add_partner(path: Path, domain: str, partner_type: str, *, tls: str | None = None,
                sasl: str | None = None, dialback: bool | None = None,
                additional_domains: Iterable[str] = (),
                description: str | None = None) -> PartnerChange:
    """A new entry; tls and sasl default to optional, dialback to true."""
    from gateway.config.editor import add_partner as write

    chosen = (Support(tls or "optional"), Support(sasl or "optional"),
              True if dialback is None else dialback)
    refused = refusal(*chosen)
    if refused:
        return PartnerChange(REFUSED, error=refused)

    def action() -> PartnerChange:
        primary = partner_domain(domain)
        entry = {"domain": primary, "type": partner_type, "tls": str(chosen[0]),
                 "sasl": str(chosen[1]), "dialback": chosen[2],
                 "additional_domains": [partner_domain(d) for d in additional_domains] or None,
                 "description": description}
        config = write(path, entry)
        return _done("added", config.partner_for(primary))

    return _edit(path, action)


def update_partner(path: Path, domain: str, *, partner_type: str | None = None,
                   tls: str | None = None, sasl: str | None = None,
                   dialback: bool | None = None, description: str | None = None,
                   add_domains: Iterable[str] = (),
                   remove_domains: Iterable[str] = ()) -> PartnerChange:
    """Change the entry that has ``domain``; None leaves a setting as it is."""
    from gateway.config.editor import PartnerNotFound, set_partner
    from gateway.config.loader import load_config

    adding, removing = list(add_domains), list(remove_domains)
    changes = (partner_type, tls, sasl, dialback, description)
    if all(c is None for c in changes) and not (adding or removing):
        return PartnerChange(REFUSED, error="error: nothing to change: give --type, --tls, "
                             "--sasl, --dialback, --description, --add-domain or "
                             "--remove-domain")

    def action() -> PartnerChange:
        current = load_config(path).partner_for(partner_domain(domain))
        if current is None:
            raise PartnerNotFound(domain)
        refused = refusal(Support(tls) if tls else current.tls,
                          Support(sasl) if sasl else current.sasl,
                          current.dialback if dialback is None else dialback)
        if refused:
            return PartnerChange(REFUSED, error=refused)
        updates = {"type": partner_type, "tls": tls, "sasl": sasl, "dialback": dialback,
                   "description": description}
        config: GatewayConfig = set_partner(path, domain, updates,
                                            [partner_domain(d) for d in adding],
                                            [partner_domain(d) for d in removing])
        return _done("updated", config.partner_for(current.primary_domain))

    return _edit(path, action)


def remove_partner(path: Path, domain: str) -> PartnerChange:
    """Remove the entry that has ``domain`` (primary or additional)."""
    from gateway.config.editor import remove_partner as write

    def action() -> PartnerChange:
        name = partner_domain(domain)
        write(path, name)
        return PartnerChange(DONE, f"removed the partner entry of {name}")

    return _edit(path, action)
