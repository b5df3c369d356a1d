"""Helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def load_or_report(args: argparse.Namespace) -> Any:
    """The configuration named by ``-c``, or None after printing why it cannot be used."""
    from gateway.config.loader import ConfigError, load_config

    try:
        return load_config(args.config)
    except ConfigError as exc:
        print(f"xmpp-gateway: invalid configuration:\n{exc}", file=sys.stderr)
    except FileNotFoundError:
        from gateway.cli.main import CONFIG_SEARCH

        print(f"xmpp-gateway: no configuration file {args.config} (without -c PATH: "
              f"{CONFIG_SEARCH})", file=sys.stderr)
    except OSError as exc:
        print(f"xmpp-gateway: cannot read {args.config}: {exc.strerror or exc}", file=sys.stderr)
    return None
