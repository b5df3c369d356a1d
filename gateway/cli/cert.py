"""``xmpp-gateway cert ca|issue|request|import|selfsigned``.

Two ways to a certificate, as with any XMPP server:

* **a lab CA** — ``cert ca`` makes a CA and keeps its key; ``cert issue`` signs
  certificates with it, for the gateway (no domain given: the served domains, written where
  ``tls.certificate``/``tls.key`` say) and for partners' servers (``cert issue
  fabrikam.example``: a certificate, a key and a PEM with both, for Prosody or ejabberd).
  Trust then goes both ways through the one CA certificate: it is the gateway's
  ``tls.ca_file`` (partners' certificates verify) and the partners' CA file (ours does).
* **a public CA** — ``cert request`` writes a key and a CSR; ``cert import`` checks what
  the CA sent back (key match, every served domain covered, dates, a chain that verifies
  with the intermediates given) and puts it in place.

Names follow RFC 6120 §13.7.1.2 and RFC 6125: a DNS-ID (dNSName) and an SRV-ID
(``_xmpp-server.DOMAIN``, RFC 4985) per domain; id-on-xmppAddr only on request
(``--xmpp-addr``), because RFC 6120 keeps it for backward compatibility only and
ejabberd 23.01 drops the stream of a client certificate that carries it (docs/interop.md).

``selfsigned`` (``make certs``) makes a throw-away CA and a gateway certificate in one go.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from gateway.cli.common import load_or_report
from gateway.cli.main import config_parent

CA_CERT, CA_KEY = "ca.crt", "ca.key"


def register(subparsers: Any) -> None:
    cert = subparsers.add_parser(
        "cert", help="certificates: ca, issue, request, import, selfsigned")
    commands = cert.add_subparsers(dest="cert_command", metavar="ACTION")
    commands.required = True

    ca = commands.add_parser(
        "ca", parents=[config_parent()],
        help="make a lab CA (certificate and key kept) to issue certificates with",
        description="Make a CA for a lab or a private federation: ca.crt (give it to "
                    "partners, and use it as tls.ca_file) and ca.key (mode 0600, kept to "
                    "issue certificates with `cert issue`).")
    ca.add_argument("--dir", type=Path, default=None,
                    help="where ca.crt and ca.key go (default: the directory of "
                         "tls.certificate)")
    ca.add_argument("--name", default=None,
                    help="the CA's name (default: \"<first served domain> lab CA\")")
    ca.add_argument("--days", type=int, default=3650)
    ca.add_argument("--force", action="store_true", help="replace an existing CA")
    ca.set_defaults(func=_ca)

    issue = commands.add_parser(
        "issue", parents=[config_parent()],
        help="issue a certificate with the lab CA: for the gateway, or for partners",
        description="Without DOMAIN: a certificate for the served domains, written to "
                    "tls.certificate and tls.key. With DOMAIN...: one certificate naming "
                    "them all, for a partner's server: DOMAIN.crt, DOMAIN.key and DOMAIN.pem "
                    "(both in one file, as ejabberd wants it) in --out-dir.")
    issue.add_argument("domains", nargs="*", metavar="DOMAIN",
                       help="the partner's domains (first = file name); none = the gateway")
    issue.add_argument("--ca-dir", type=Path, default=None,
                       help="where `cert ca` wrote ca.crt and ca.key (default: the "
                            "directory of tls.certificate)")
    issue.add_argument("--out-dir", type=Path, default=None,
                       help="partner certificates: where to write them (default: --ca-dir)")
    issue.add_argument("--days", type=int, default=365)
    issue.add_argument("--key-type", choices=("rsa", "ec"), default="rsa")
    issue.add_argument("--xmpp-addr", action="store_true",
                       help="also name each domain as id-on-xmppAddr (RFC 6120 §13.7.1.4; "
                            "for old peers; ejabberd 23.01 drops streams presenting it)")
    issue.add_argument("--force", action="store_true", help="replace existing files")
    issue.set_defaults(func=_issue)

    request = commands.add_parser("request", parents=[config_parent()],
                                  help="write a private key and a CSR for the served domains")
    request.add_argument("--key-type", choices=("rsa", "ec"), default="rsa")
    request.add_argument("--rsa-bits", type=int, default=2048)
    request.add_argument("--passphrase-file", type=Path)
    request.add_argument("--extra-san", action="append", default=[], metavar="NAME")
    request.add_argument("--out-dir", type=Path, default=None,
                         help="where gateway.key and gateway.csr go (default: request/ "
                              "beside tls.key, where `cert import` looks for the key)")
    request.add_argument("--force", action="store_true", help="overwrite an existing key")
    request.set_defaults(func=_request)

    for name, text in (("import", "check a certificate from a CA (with its chain), then put "
                                  "it in place"),
                       ("install", "the same as import (older name)")):
        command = commands.add_parser(name, parents=[config_parent()], help=text,
                                      description=text)
        command.add_argument("certificate", type=Path,
                             help="the certificate (PEM; a full chain file is fine)")
        command.add_argument("key", type=Path, nargs="?",
                             help="its private key (default: the one `cert request` wrote, "
                                  "else tls.key)")
        command.add_argument("--chain", type=Path,
                             help="the CA's intermediate certificates (PEM), if not in "
                                  "the certificate file")
        command.set_defaults(func=_import)

    selfsigned = commands.add_parser("selfsigned", parents=[config_parent()],
                                     help="development CA + certificate for the served domains")
    selfsigned.add_argument("--out-dir", type=Path, default=None,
                            help="write ca.crt, gateway.crt, gateway.key here "
                                 "(default: the configured tls paths)")
    selfsigned.add_argument("--days", type=int, default=365)
    selfsigned.add_argument("--force", action="store_true")
    selfsigned.set_defaults(func=_selfsigned)


def _certs_dir(config: Any) -> Path:
    return Path(config.tls.certificate).parent


def _ca(args: argparse.Namespace) -> int:
    from gateway.auth.devcerts import atomic_write, certificates_to_pem, key_to_pem, make_ca

    config = load_or_report(args)
    if config is None:
        return 1
    directory = args.dir or _certs_dir(config)
    crt, key = directory / CA_CERT, directory / CA_KEY
    existing = [path for path in (crt, key) if path.exists()]
    if existing and not args.force:
        print(f"error: {', '.join(map(str, existing))} exists: partners may trust that CA "
              "already; use --force to replace it", file=sys.stderr)
        return 1
    now = dt.datetime.now(dt.UTC)
    name = args.name or f"{config.domains[0]} lab CA"
    ca, ca_key = make_ca(name, not_after=now + dt.timedelta(days=args.days))
    atomic_write(key, key_to_pem(ca_key), mode=0o600)
    atomic_write(crt, certificates_to_pem([ca]))
    print(f"wrote the CA \"{name}\": {crt} (certificate) and {key} (its key, mode 0600)")
    print("next:")
    print(f"  xmpp-gateway cert issue                   # the gateway's certificate, "
          f"for {', '.join(config.domains)}")
    print("  xmpp-gateway cert issue PARTNER.DOMAIN    # a certificate for a partner's server")
    for line in _trust_advice(config, crt):
        print(f"  {line}")
    return 0


def _trust_advice(config: Any, ca_crt: Path) -> list[str]:
    """Where this CA's certificate must go, both directions."""
    lines = [f"give {ca_crt} to each partner's server: it verifies the gateway with it "
             "(Prosody: ssl = { cafile = ... }; ejabberd: ca_file)"]
    configured = config.tls.ca_file
    if configured is None or Path(configured).resolve() != ca_crt.resolve():
        lines.append(f"set tls.ca_file: {ca_crt.resolve()} in {config.source or 'the config'}"
                     " so the gateway verifies certificates this CA issued (it is "
                     f"{configured or 'not set'} now)")
    return lines


def _load_ca(directory: Path) -> tuple[Any, Any] | None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    crt, key = directory / CA_CERT, directory / CA_KEY
    try:
        certificate = x509.load_pem_x509_certificate(crt.read_bytes())
        private_key = load_pem_private_key(key.read_bytes(), password=None)
    except FileNotFoundError as exc:
        print(f"error: {exc.filename} does not exist: make the CA first with "
              f"`xmpp-gateway cert ca` (or give --ca-dir)", file=sys.stderr)
        return None
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: cannot use the CA in {directory}: {exc}", file=sys.stderr)
        return None
    return certificate, private_key


def _issue(args: argparse.Namespace) -> int:
    from gateway.auth.devcerts import (
        CertificateBuildError,
        atomic_write,
        certificates_to_pem,
        issue_certificate,
        key_to_pem,
        write_key_and_cert,
    )

    config = load_or_report(args)
    if config is None:
        return 1
    ca_dir = args.ca_dir or _certs_dir(config)
    loaded = _load_ca(ca_dir)
    if loaded is None:
        return 1
    ca, ca_key = loaded
    for_gateway = not args.domains
    domains = list(config.domains) if for_gateway else args.domains
    if for_gateway:
        crt, key = Path(config.tls.certificate), Path(config.tls.key)
        pem = None
    else:
        out = args.out_dir or ca_dir
        try:
            from gateway.domain import DomainError, normalize_domain

            stem = normalize_domain(domains[0])
        except DomainError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        crt, key, pem = out / f"{stem}.crt", out / f"{stem}.key", out / f"{stem}.pem"
    existing = [path for path in (crt, key) if path.exists()]
    if existing and not args.force:
        print(f"error: {', '.join(map(str, existing))} exists; use --force to replace it",
              file=sys.stderr)
        return 1
    now = dt.datetime.now(dt.UTC)
    try:
        cert, cert_key = issue_certificate(
            ca, ca_key, domains, srv_names=True, xmpp_addrs=args.xmpp_addr,
            key_type=args.key_type, not_after=min(now + dt.timedelta(days=args.days),
                                                  ca.not_valid_after_utc))
    except CertificateBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_key_and_cert(crt, key, cert, cert_key)
    names = ", ".join(_names(cert))
    if for_gateway:
        print(f"wrote the gateway's certificate {crt} and key {key} ({names}), "
              f"issued by \"{_common_name(ca)}\"")
        print("next: xmpp-gateway reload (if it runs), then xmpp-gateway check certs")
        for line in _trust_advice(config, ca_dir / CA_CERT):
            print(f"  {line}")
        return 0
    assert pem is not None
    # ejabberd's certfiles take certificate and key in one file; readable by its owner only.
    atomic_write(pem, certificates_to_pem([cert]) + key_to_pem(cert_key), mode=0o600)
    print(f"wrote {crt}, {key} and {pem} (both in one) for {names}, "
          f"issued by \"{_common_name(ca)}\"")
    print(f"next, on the server of {domains[0]}:")
    print(f"  Prosody:  ssl = {{ certificate = \"{crt.name}\"; key = \"{key.name}\" }} "
          f"in VirtualHost \"{domains[0]}\"")
    print(f"  ejabberd: certfiles: [\"{pem.name}\"]")
    for line in _trust_advice(config, ca_dir / CA_CERT):
        print(f"  {line}")
    return 0


def _names(cert: Any) -> list[str]:
    from gateway.auth.identity import presented_identities

    return presented_identities(cert).display()


def _common_name(cert: Any) -> str:
    from cryptography.x509.oid import NameOID

    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def request_dir(config: Any) -> Path:
    """Where ``cert request`` keeps the new key until ``cert import`` uses it: apart from
    the key in use, which must keep working until the certificate arrives."""
    return Path(config.tls.key).parent / "request"


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
    out_dir = args.out_dir or request_dir(config)
    key_path = out_dir / "gateway.key"
    csr_path = out_dir / "gateway.csr"
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
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(key_path, key_to_pem(key, passphrase), mode=0o600)
    atomic_write(csr_path, csr.public_bytes(Encoding.PEM))
    print(f"wrote {key_path} (mode 0600) and {csr_path} for {', '.join(config.domains)}")
    key_arg = "" if out_dir == request_dir(config) else f" {key_path}"
    print("next:\n"
          f"  1. send {csr_path} to your CA (it must issue the names {', '.join(config.domains)})\n"
          "  2. with the certificate it returns and its intermediate chain:\n"
          f"       xmpp-gateway cert import CERTIFICATE.pem{key_arg} --chain CHAIN.pem\n"
          "     (checks key, names, dates and chain, then installs as tls.certificate and "
          "tls.key)\n"
          "  3. xmpp-gateway reload, then xmpp-gateway check certs"
          + ("\n  the key is encrypted: `cert import` needs it without a passphrase"
             if passphrase else ""))
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
    print(f"wrote {crt}, {key} and development CA {ca_path} for {', '.join(config.domains)}"
          " (its key is not kept: `cert ca` makes a CA that can issue partners' certificates)")
    return 0


def _import(args: argparse.Namespace) -> int:
    from gateway.auth.install import CertificateRefused, check_and_install

    config = load_or_report(args)
    if config is None:
        return 1
    key = args.key
    if key is None:
        pending = request_dir(config) / "gateway.key"
        key = pending if pending.exists() else None
    try:
        report = check_and_install(config, args.certificate, key, args.chain)
    except CertificateRefused as exc:
        print(f"refused, nothing changed: {exc}", file=sys.stderr)
        if exc.needs_chain:
            print("hint: give the CA's intermediate certificates with --chain FILE (or "
                  "import the full-chain file it sent); for a private CA, put its "
                  "certificate in tls.ca_file", file=sys.stderr)
        return 2
    for line in report:
        print(line)
    return 0
