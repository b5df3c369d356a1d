"""``xmpp-gateway`` console script: one entry point, subcommands in their own modules.

Each module listed in :data:`COMMAND_MODULES` exposes ``register(subparsers)`` which adds
its subcommand(s) and sets ``func`` (``(args) -> int`` exit status) on the parser.
Every subcommand accepts ``-c/--config``; without it the file is found as prosodyctl
finds its own: ``$XMPP_GATEWAY_CONFIG``, else ``/etc/xmpp-gateway/gateway.yaml``, else the
example ``config/gateway.yaml`` of the checkout the gateway runs from (whatever the
current directory).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys
from collections.abc import Sequence
from pathlib import Path

COMMAND_MODULES: tuple[str, ...] = (
    "gateway.cli.run",
    "gateway.cli.service",
    "gateway.cli.partner",
    "gateway.cli.check",
    "gateway.cli.cert",
    "gateway.cli.contacts",
    "gateway.cli.cluster",
    "gateway.admin_web.cli",
)

SYSTEM_CONFIG = Path("/etc/xmpp-gateway/gateway.yaml")
#: The commented example of the checkout (absent from an installed wheel).
EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"
CONFIG_SEARCH = ("$XMPP_GATEWAY_CONFIG, else /etc/xmpp-gateway/gateway.yaml, else "
                 f"{EXAMPLE_CONFIG}")


def default_config_path() -> Path:
    """The configuration used without ``-c``: the environment, then the system's, then
    the checkout's example; the system path when there is none (errors name it)."""
    from_environment = os.environ.get("XMPP_GATEWAY_CONFIG")
    if from_environment:
        return Path(from_environment)
    for candidate in (SYSTEM_CONFIG, EXAMPLE_CONFIG):
        if candidate.is_file():
            return candidate
    return SYSTEM_CONFIG


def config_parent(*, top_level: bool = False) -> argparse.ArgumentParser:
    """Parent parser giving every subcommand the same ``-c/--config`` option.

    Subcommands use ``parents=[config_parent()]``; their default is suppressed so that
    ``xmpp-gateway -c X partner list`` and ``xmpp-gateway partner list -c X`` both work.
    """
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-c",
        "--config",
        type=Path,
        default=default_config_path() if top_level else argparse.SUPPRESS,
        help=f"configuration file (default: {CONFIG_SEARCH})",
    )
    return parent


def installed_version() -> str:
    """The version of the installed distribution (its metadata, not a copy in the code)."""
    try:
        return importlib.metadata.version("xmpp-gateway")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xmpp-gateway",
        description="XMPP server-to-server federation gateway for SIP communications systems",
        parents=[config_parent(top_level=True)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # command module not written yet in this checkout
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `xmpp-gateway partner list | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
