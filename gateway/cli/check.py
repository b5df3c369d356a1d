"""``xmpp-gateway check …`` — diagnostics, one sub-subcommand per check.

``check config`` validates a file offline; ``check connectivity DOMAIN`` asks the running
gateway (admin socket) to negotiate with DOMAIN for real and narrates each step;
``check dns`` and ``check certs`` look at our records and certificates.

Adding a check: call :func:`add_check` at import time of your module, and list the module
in :data:`CHECK_MODULES` (or import it from a module that is already imported)::

    from gateway.cli.check import add_check

    def _configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true")

    def _handler(args: argparse.Namespace) -> int:  # exit status: 0 fine, 1 problems
        ...

    add_check("store", "the SQLite store opens and is writable", _configure, _handler)

Every check gets ``-c/--config``. :func:`add_check` called after the parser was built
(e.g. from another command module's ``register``) still adds the check to it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.cli.main import config_parent

Handler = Callable[[argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser], None]

# Modules whose import registers more checks (missing ones are skipped, as in main.py).
CHECK_MODULES: tuple[str, ...] = ("gateway.cli.check_sip",)


@dataclass(frozen=True, slots=True)
class Check:
    """One ``xmpp-gateway check NAME``: help text, extra options, handler → exit status."""

    name: str
    help: str
    configure: Configure | None
    handler: Handler


CHECKS: dict[str, Check] = {}  # in registration order (the order of ``check -h``)
_live: list[Any] = []  # the sub-subparsers of the parser built last, for late additions


def add_check(name: str, help: str, configure: Configure | None, handler: Handler) -> Check:
    """Register (or replace) ``check NAME``; returns the registered :class:`Check`.

    ``configure(parser)`` adds the check's own options (None: only ``-c``);
    ``handler(args)`` runs it and returns the exit status.
    """
    check = Check(name, help, configure, handler)
    CHECKS[name] = check
    if _live and name not in _live[-1].choices:
        _add_parser(_live[-1], check)
    return check


def _add_parser(checks: Any, check: Check) -> None:
    parser = checks.add_parser(check.name, parents=[config_parent()], help=check.help,
                               description=check.help)
    if check.configure is not None:
        check.configure(parser)
    parser.set_defaults(func=check.handler)


def register(subparsers: Any) -> None:
    for module in CHECK_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    parser = subparsers.add_parser(
        "check", parents=[config_parent()],
        help=f"diagnostics ({', '.join(CHECKS)}); without WHAT: all of them",
        description="Without WHAT, as `prosodyctl check`: config, certs, dns, sip, then "
                    "connectivity to every partner (through the running gateway), and one "
                    "verdict.")
    checks = parser.add_subparsers(dest="check_command", metavar="WHAT")
    for check in CHECKS.values():
        _add_parser(checks, check)
    parser.set_defaults(func=_everything)
    _live[:] = [checks]


# ---------------------------------------------------------------- check (everything)

#: What ``check`` alone runs, in order, with the options each runs with: the partners'
#: certificates are judged by the connectivity checks (a real handshake each).
EVERYTHING: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("config", ()), ("certs", ("--no-partners",)), ("dns", ()), ("sip", ()))


def _everything(args: argparse.Namespace) -> int:
    """Every check, each under its own heading, then one verdict (exit 0 when all pass)."""
    from gateway.config.loader import ConfigError, load_config
    from gateway.net.admin import query

    parsers = _live[-1].choices
    failed: list[str] = []

    def run(title: str, name: str, argv: list[str]) -> None:
        print(f"== {title} ==", flush=True)
        options = parsers[name].parse_args(argv)
        options.config = args.config
        if options.func(options) != 0:
            failed.append(title)
        print(flush=True)

    for name, argv in EVERYTHING:
        run(name, name, list(argv))
        if name == "config" and failed:
            print(f"verdict: the configuration is invalid; nothing else was checked "
                  f"({args.config})")
            return 1
    try:
        config = load_config(args.config)
    except (ConfigError, OSError) as exc:  # changed under our feet: say so, do not guess
        print(f"verdict: {args.config} could not be read again: {exc}")
        return 1
    skipped = ""
    try:
        query(config.admin_socket, "status", timeout=5)
    except OSError as exc:
        skipped = (f"connectivity not checked: no gateway answering on {config.admin_socket} "
                   f"({exc.strerror or exc}); start it (xmpp-gateway start) and run check "
                   "again")
    if not skipped:
        for partner in config.partners:
            run(f"connectivity {partner.primary_domain}", "connectivity",
                [partner.primary_domain])
    checked = [name for name, _ in EVERYTHING] + (
        [f"connectivity to {len(config.partners)} partner(s)"] if not skipped else [])
    if failed:
        print(f"verdict: PROBLEMS in {', '.join(failed)} (details above)"
              + (f"; {skipped}" if skipped else ""))
        return 1
    print(f"verdict: OK ({', '.join(checked)})" + (f"; {skipped}" if skipped else ""))
    return 0


# ---------------------------------------------------------------- check config


def _config(args: argparse.Namespace) -> int:
    """Validate offline: every problem with file:line, else each partner's methods."""
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
    from gateway.auth.coverage import coverage_problems
    from gateway.policy.outcome import in_effect

    # A certificate that does not name a served domain loads and gives TLS, and partners
    # then quietly fall back to dialback: not a valid configuration for the gateway.
    problems = coverage_problems(config.tls, config.domains)
    verdict = "valid" if not problems else "INVALID"
    print(f"{args.config}: {verdict}; serving {', '.join(config.domains)}; "
          f"{len(config.partners)} partner(s)")
    for partner in config.partners:
        names = ", ".join(partner.domains)
        print(f"  {names} ({partner.partner_type}): tls={partner.tls} sasl={partner.sasl} "
              f"dialback={str(partner.dialback).lower()} → permits "
              f"{partner.negotiation.methods_text}")
        print(f"    in effect: {in_effect(partner.negotiation)}")
    for problem in problems:
        print(f"error: {problem}")
        print("  fix: xmpp-gateway cert issue (lab CA) or cert request + cert import (public "
              "CA) for the served domains; confirm with xmpp-gateway check certs")
    for warning in config_warnings(config):
        print(f"warning: {warning}")
    if problems:
        return 1
    if getattr(args, "cluster", False):
        from gateway.cli.cluster import check_cluster

        return check_cluster(config)
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


def _dns(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.cli.common import load_or_report
    from gateway.dns.resolver import DnsPythonResolver

    config = load_or_report(args)
    if config is None:
        return 1
    resolver = DnsPythonResolver.from_settings(config.dns)
    listening = {(address.host, address.port) for address in config.listen}
    wildcard_ports = {address.port for address in config.listen
                      if address.host in ("0.0.0.0", "::", "")}

    async def check() -> int:
        problems = 0
        for domain in config.domains:
            try:
                targets = await resolver.resolve_targets(domain)
            except Exception as exc:
                print(f"FAIL  {domain}: {exc}")
                problems += 1
                continue
            for target in targets:
                try:
                    addresses = await resolver.resolve_addresses(target.host)
                except Exception as exc:
                    print(f"FAIL  {domain}: {target.host}: {exc}")
                    problems += 1
                    continue
                here = [a for a in addresses if (a, target.port) in listening
                        or target.port in wildcard_ports]
                verdict = "ok  " if here else "WARN"
                print(f"{verdict}  {domain}: {target.source} → {target.host}:{target.port} "
                      f"({', '.join(addresses)})" + ("" if here else
                                                     " — not an address/port we listen on"))
        for partner in config.partners:
            for domain in partner.domains:
                try:
                    targets = await resolver.resolve_targets(domain)
                    first = targets[0]
                    addresses = await resolver.resolve_addresses(first.host)
                    print(f"ok    partner {domain}: {first.source} → {first.host}:{first.port}"
                          f" ({', '.join(addresses)})")
                except Exception as exc:
                    print(f"FAIL  partner {domain}: {exc}")
                    problems += 1
        return problems

    problems = asyncio.run(check())
    print("DNS: OK" if not problems else f"DNS: {problems} problem(s)")
    return 0 if not problems else 1


def _certs(args: argparse.Namespace) -> int:
    import datetime as dt
    from pathlib import Path

    from cryptography import x509

    from gateway.auth.identity import check_identity
    from gateway.cli.common import load_or_report

    config = load_or_report(args)
    if config is None:
        return 1
    problems = 0
    try:
        chain = x509.load_pem_x509_certificates(Path(config.tls.certificate).read_bytes())
    except (OSError, ValueError) as exc:
        print(f"FAIL  our certificate {config.tls.certificate}: {exc}")
        return 1
    leaf = chain[0]
    now = dt.datetime.now(dt.UTC)
    left = leaf.not_valid_after_utc - now
    if left.total_seconds() <= 0:
        print(f"FAIL  our certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
        problems += 1
    else:
        level = "WARN" if left.days < 30 else "ok  "
        print(f"{level}  our certificate valid until {leaf.not_valid_after_utc:%Y-%m-%d} "
              f"({left.days} days)")
    uncovered = 0
    for domain in config.domains:
        identity = check_identity(leaf, domain)
        print(f"{'ok  ' if identity.ok else 'FAIL'}  covers {domain}: {identity.reason}")
        uncovered += not identity.ok
    if uncovered:
        print("      partners cannot authenticate us with SASL EXTERNAL; issue a certificate "
              "naming every served domain: xmpp-gateway cert issue (lab CA), or cert request "
              "then cert import (public CA)")
    problems += uncovered
    from gateway.auth.install import CertificateRefused, verify_chain

    try:
        verify_chain(config, leaf, chain[1:])
        print("ok    chain verifies to a trusted root")
    except CertificateRefused as exc:
        print(f"FAIL  {exc}")
        if exc.needs_chain:
            print(f"      if a public CA issued it, {config.tls.certificate} lacks its "
                  "intermediates: xmpp-gateway cert import CERTIFICATE --chain CHAIN; if it is "
                  "your own CA, put that CA's certificate in tls.ca_file (and give it to "
                  "partners)")
        problems += 1
    if not args.no_partners and config.partners:
        from gateway.net.admin import query

        for partner in config.partners:
            try:
                answer = query(config.admin_socket, "probe", timeout=60,
                               domain=partner.primary_domain)
            except OSError:
                print("WARN  partners' certificates are checked by the running gateway "
                      f"(no answer on {config.admin_socket}); start it, or use --no-partners")
                break
            cert_steps = [s for s in answer.get("steps", []) if s.startswith("certificate:")]
            if cert_steps:
                ok = "certificate: valid" in cert_steps[0]
                print(f"{'ok  ' if ok else 'FAIL'}  partner {partner.primary_domain}: "
                      f"{cert_steps[0]}")
                problems += not ok
            else:
                print(f"FAIL  partner {partner.primary_domain}: no TLS handshake "
                      f"({answer.get('verdict') or answer.get('error')})")
                problems += 1
    print("certificates: OK" if not problems else f"certificates: {problems} problem(s)")
    return 0 if not problems else 1


def _connectivity_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("domain", help="a partner domain")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _certs_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-partners", action="store_true",
                        help="only check our own certificate")


def _config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", action="store_true",
                        help="also compare domains, partners and dialback secret (by digest) "
                             "with every node in the shared store")


add_check("config", "validate the configuration file", _config_options, _config)
add_check("connectivity", "negotiate with a partner for real, step by step",
          _connectivity_options, _connectivity)
add_check("dns", "our SRV records point here; each partner resolves", None, _dns)
add_check("certs", "our certificate (coverage, expiry, chain); partners' over TLS",
          _certs_options, _certs)
