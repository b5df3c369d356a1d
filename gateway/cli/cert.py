"""``xmpp-gateway cert request|selfsigned|install``.

``request`` makes a key and a CSR naming every served domain (dNSName + id-on-xmppAddr,
GATEWAY-SPEC §5); ``selfsigned`` makes a development CA and a certificate it signs (so two
local gateways can trust each other through ``tls.ca_file``); ``install`` checks a
certificate before putting it in place: key match, SAN coverage of every served domain,
validity dates, and a chain that verifies to a trusted root.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from gateway.cli.common import load_or_report
from gateway.cli.main import config_parent


def register(subparsers: Any) -> None:
    cert = subparsers.add_parser("cert", help="certificates: request, selfsigned, install")
    commands = cert.add_subparsers(dest="cert_command", metavar="ACTION")
    commands.required = True

    request = commands.add_parser("request", parents=[config_parent()],
                                  help="write a private key and a CSR for the served domains")
    request.add_argument("--key-type", choices=("rsa", "ec"), default="rsa")
    request.add_argument("--rsa-bits", type=int, default=2048)
    request.add_argument("--passphrase-file", type=Path)
    request.add_argument("--extra-san", action="append", default=[], metavar="NAME")
    request.add_argument("--out-dir", type=Path, default=Path("."))
    request.add_argument("--force", action="store_true", help="overwrite an existing key")
    request.set_defaults(func=_request)

    selfsigned = commands.add_parser("selfsigned", parents=[config_parent()],
                                     help="development CA + certificate for the served domains")
    selfsigned.add_argument("--out-dir", type=Path, default=None,
                            help="write ca.crt, gateway.crt, gateway.key here "
                                 "(default: the configured tls paths)")
    selfsigned.add_argument("--days", type=int, default=365)
    selfsigned.add_argument("--force", action="store_true")
    selfsigned.set_defaults(func=_selfsigned)

    install = commands.add_parser("install", parents=[config_parent()],
                                  help="check a certificate and key, then put them in place")
    install.add_argument("certificate", type=Path)
    install.add_argument("key", type=Path, nargs="?")
    install.add_argument("--chain", type=Path, help="intermediate certificates (PEM)")
    install.set_defaults(func=_install)


def _request(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.serialization import Encoding

    from gateway.auth.devcerts import (
        CertificateBuildError,
        atomic_write,
        build_csr,
        generate_private_key,
        key_to_pem,
    )

    config = load_or_report(args)
    if config is None:
        return 1
    key_path = args.out_dir / "gateway.key"
    csr_path = args.out_dir / "gateway.csr"
    if key_path.exists() and not args.force:
        print(f"error: {key_path} exists; use --force to replace it", file=sys.stderr)
        return 1
    passphrase = args.passphrase_file.read_bytes().strip() if args.passphrase_file else None
    try:
        key = generate_private_key(args.key_type, args.rsa_bits)
        csr = build_csr(key, config.domains, extra_sans=args.extra_san)
    except CertificateBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(key_path, key_to_pem(key, passphrase), mode=0o600)
    atomic_write(csr_path, csr.public_bytes(Encoding.PEM))
    print(f"wrote {key_path} (mode 0600) and {csr_path} for {', '.join(config.domains)}")
    return 0


def _selfsigned(args: argparse.Namespace) -> int:
    from gateway.auth.devcerts import (
        atomic_write,
        certificates_to_pem,
        issue_certificate,
        make_ca,
        write_key_and_cert,
    )

    config = load_or_report(args)
    if config is None:
        return 1
    if args.out_dir is not None:
        crt, key = args.out_dir / "gateway.crt", args.out_dir / "gateway.key"
        ca_path = args.out_dir / "ca.crt"
    else:
        crt, key = Path(config.tls.certificate), Path(config.tls.key)
        ca_path = Path(config.tls.ca_file) if config.tls.ca_file else crt.parent / "ca.crt"
    if key.exists() and not args.force:
        print(f"error: {key} exists; use --force to replace it", file=sys.stderr)
        return 1
    now = dt.datetime.now(dt.UTC)
    ca, ca_key = make_ca("xmpp-gateway development CA")
    cert, cert_key = issue_certificate(ca, ca_key, config.domains,
                                       not_after=now + dt.timedelta(days=args.days))
    crt.parent.mkdir(parents=True, exist_ok=True)
    write_key_and_cert(crt, key, cert, cert_key, chain=[ca])
    atomic_write(ca_path, certificates_to_pem([ca]))
    print(f"wrote {crt}, {key} and development CA {ca_path} for {', '.join(config.domains)}")
    return 0


def _install(args: argparse.Namespace) -> int:
    from gateway.auth.install import CertificateRefused, check_and_install

    config = load_or_report(args)
    if config is None:
        return 1
    try:
        report = check_and_install(config, args.certificate, args.key, args.chain)
    except CertificateRefused as exc:
        print(f"refused, nothing changed: {exc}", file=sys.stderr)
        return 2
    for line in report:
        print(line)
    return 0
