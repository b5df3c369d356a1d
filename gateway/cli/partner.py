"""``xmpp-gateway partner add|set|show|list|remove`` — the XMPP allowed-partner cmdlets.

Mirrors New-/Set-/Get-/Remove-CsXmppAllowedPartner. An invalid (tls, sasl, dialback)
combination is refused with the negotiation matrix's words and exit status 2, and the file
is left untouched; a valid one prints the matrix's warnings, then what the entry means on
the wire ("in effect", gateway/policy/outcome.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gateway.cli.common import load_or_report
from gateway.cli.main import config_parent
from gateway.config.model import PartnerPolicy, PartnerType
from gateway.config.partner_changes import (
    PartnerChange,
    add_partner,
    partner_domain,
    remove_partner,
    update_partner,
)
from gateway.policy.negotiation import Support
from gateway.policy.outcome import in_effect

SUPPORTS = [s.value for s in Support]
TYPES = [t.value for t in PartnerType]


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def register(subparsers: Any) -> None:
    partner = subparsers.add_parser("partner", help="manage federation partners")
    commands = partner.add_subparsers(dest="partner_command", metavar="ACTION")
    commands.required = True

    def policy_options(p: argparse.ArgumentParser, *, creating: bool) -> None:
        p.add_argument("--type", choices=TYPES, required=creating,
                       help="contact rules (docs/configuration.md, Partner types)")
        p.add_argument("--tls", choices=SUPPORTS, help="STARTTLS" + (
            " (default optional)" if creating else ""))
        p.add_argument("--sasl", choices=SUPPORTS, help="SASL EXTERNAL with certificates, "
                       "XEP-0178" + (" (default optional)" if creating else ""))
        p.add_argument("--dialback", type=_bool, metavar="true|false",
                       help="server dialback, XEP-0220" + (" (default true)" if creating
                                                          else ""))
        p.add_argument("--description", help="free text" + (" (default empty)" if creating
                                                            else ""))

    add = commands.add_parser("add", parents=[config_parent()], help="add a partner")
    add.add_argument("domain", help="primary domain of the partner deployment")
    policy_options(add, creating=True)
    add.add_argument("--additional-domain", action="append", default=[], metavar="DOMAIN",
                     help="another domain of the same partner (repeatable)")
    add.set_defaults(func=_add)

    set_ = commands.add_parser("set", parents=[config_parent()], help="change a partner")
    set_.add_argument("domain", help="any domain of the partner entry")
    policy_options(set_, creating=False)
    set_.add_argument("--add-domain", action="append", default=[], metavar="DOMAIN",
                      help="add an additional domain (repeatable)")
    set_.add_argument("--remove-domain", action="append", default=[], metavar="DOMAIN",
                      help="remove an additional domain (repeatable)")
    set_.set_defaults(func=_set)

    show = commands.add_parser("show", parents=[config_parent()], help="show one partner")
    show.add_argument("domain", help="any domain of the partner entry")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=_show)

    list_ = commands.add_parser("list", parents=[config_parent()], help="list partners")
    list_.add_argument("--json", action="store_true", help="machine-readable output")
    list_.set_defaults(func=_list)

    remove = commands.add_parser("remove", parents=[config_parent()], help="remove a partner")
    remove.add_argument("domain", help="any domain of the partner entry")
    remove.set_defaults(func=_remove)


def _report(change: PartnerChange) -> int:
    """Print an edit's outcome (gateway.config.partner_changes) and return its status."""
    if change.ok:
        print(change.message)
        for warning in change.warnings:
            print(f"warning: {warning}")
        if change.in_effect:
            print(f"in effect: {change.in_effect}")
    else:
        print(change.error, file=sys.stderr)
    return change.status


def _add(args: argparse.Namespace) -> int:
    return _report(add_partner(
        args.config, args.domain, args.type, tls=args.tls, sasl=args.sasl,
        dialback=args.dialback, additional_domains=args.additional_domain,
        description=args.description))


def _set(args: argparse.Namespace) -> int:
    return _report(update_partner(
        args.config, args.domain, partner_type=args.type, tls=args.tls, sasl=args.sasl,
        dialback=args.dialback, description=args.description, add_domains=args.add_domain,
        remove_domains=args.remove_domain))


def _remove(args: argparse.Namespace) -> int:
    return _report(remove_partner(args.config, args.domain))


def _describe(policy: PartnerPolicy) -> dict[str, Any]:
    return {"domain": policy.primary_domain, "additional_domains": list(policy.additional_domains),
            "type": str(policy.partner_type), "tls": str(policy.tls), "sasl": str(policy.sasl),
            "dialback": policy.dialback, "description": policy.description,
            "permitted_methods": [str(m) for m in policy.negotiation.methods],
            "warnings": list(policy.negotiation.warnings),
            "in_effect": in_effect(policy.negotiation)}


def _show(args: argparse.Namespace) -> int:
    from gateway.domain import DomainError

    config = load_or_report(args)
    if config is None:
        return 1
    try:
        policy = config.partner_for(partner_domain(args.domain))
    except DomainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if policy is None:
        print(f"error: {args.domain} is not a partner in {args.config}", file=sys.stderr)
        return 1
    data = _describe(policy)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for key, value in data.items():
        if isinstance(value, list):
            value = "; ".join(str(v) for v in value) or "-"
        print(f"{key.replace('_', ' '):20} {value}")
    return 0


def _list(args: argparse.Namespace) -> int:
    config = load_or_report(args)
    if config is None:
        return 1
    rows = [_describe(p) for p in config.partners]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no partners in {args.config} (add one with: xmpp-gateway partner add)")
        return 0
    table = [("DOMAINS", "TYPE", "TLS", "SASL", "DIALBACK", "PERMITTED METHODS")]
    for row in rows:
        table.append((", ".join([row["domain"], *row["additional_domains"]]), row["type"],
                      row["tls"], row["sasl"], str(row["dialback"]).lower(),
                      "; ".join(row["permitted_methods"])))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0
