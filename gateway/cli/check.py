"""``xmpp-gateway check config|connectivity`` — diagnostics.

``check config`` validates a file offline; ``check connectivity DOMAIN`` asks the running
gateway (admin socket) to negotiate with DOMAIN for real and narrates each step.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gateway.cli.main import config_parent


def register(subparsers: Any) -> None:
    check = subparsers.add_parser("check", help="diagnostics")
    checks = check.add_subparsers(dest="check_command", metavar="WHAT")
    checks.required = True
    config = checks.add_parser("config", parents=[config_parent()],
                               help="validate the configuration file")
    config.set_defaults(func=_config)
    connectivity = checks.add_parser("connectivity", parents=[config_parent()],
                                     help="negotiate with a partner for real, step by step")
    connectivity.add_argument("domain")
    connectivity.add_argument("--json", action="store_true")
    connectivity.set_defaults(func=_connectivity)


def _config(args: argparse.Namespace) -> int:
    from gateway.config.loader import ConfigError, config_warnings, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}")
        print(f"{args.config}: INVALID ({len(exc.problems)} problem(s))")
        return 1
    except OSError as exc:
        print(f"error: {args.config}: {exc.strerror or exc}")
        return 1
    print(f"{args.config}: valid; serving {', '.join(config.domains)}; "
          f"{len(config.partners)} partner(s)")
    for partner in config.partners:
        names = ", ".join(partner.domains)
        print(f"  {names} ({partner.partner_type}): tls={partner.tls} sasl={partner.sasl} "
              f"dialback={str(partner.dialback).lower()} → permits "
              f"{partner.negotiation.methods_text}")
    for warning in config_warnings(config):
        print(f"warning: {warning}")
    return 0


def _connectivity(args: argparse.Namespace) -> int:
    from gateway.config.loader import ConfigError, load_config
    from gateway.net.admin import query

    try:
        config = load_config(args.config)
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        answer = query(config.admin_socket, "probe", timeout=60, domain=args.domain)
    except OSError as exc:
        print(f"error: no gateway answering on {config.admin_socket} ({exc.strerror or exc}); "
              "check connectivity runs inside the gateway so that partners doing dialback "
              "can reach it — start it first", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0 if answer.get("ok") else 1
    for step in answer.get("steps", []):
        print(f"  - {step}")
    print(answer.get("verdict") or answer.get("error"))
    if answer.get("hint"):
        print(f"hint: {answer['hint']}")
    return 0 if answer.get("ok") else 1
