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
    dns = checks.add_parser("dns", parents=[config_parent()],
                            help="our SRV records point here; each partner resolves")
    dns.set_defaults(func=_dns)
    certs = checks.add_parser("certs", parents=[config_parent()],
                              help="our certificate (coverage, expiry, chain); partners' over TLS")
    certs.add_argument("--no-partners", action="store_true",
                       help="only check our own certificate")
    certs.set_defaults(func=_certs)


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


def _dns(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.config.loader import ConfigError, load_config
    from gateway.dns.resolver import DnsPythonResolver

    try:
        config = load_config(args.config)
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
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
    from gateway.config.loader import ConfigError, load_config

    try:
        config = load_config(args.config)
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
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
    for domain in config.domains:
        identity = check_identity(leaf, domain)
        print(f"{'ok  ' if identity.ok else 'FAIL'}  covers {domain}: {identity.reason}")
        problems += not identity.ok
    from gateway.auth.install import CertificateRefused, verify_chain

    try:
        verify_chain(config, leaf, chain[1:])
        print("ok    chain verifies to a trusted root")
    except CertificateRefused as exc:
        print(f"FAIL  {exc}")
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
