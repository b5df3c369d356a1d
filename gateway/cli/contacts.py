"""``xmpp-gateway contacts allow|revoke|list`` and ``users enable|disable|list``.

The store behind the contact rules (docs/configuration.md, Partner types): which
public-unverified XMPP contacts a local user has authorized, and the per-user XMPP
federation switch. A local user is given as ``user@domain`` or just ``user`` (then the
first served domain is used).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.cli.main import config_parent


def register(subparsers: Any) -> None:
    contacts = subparsers.add_parser("contacts", help="authorized XMPP contacts of a local user")
    actions = contacts.add_subparsers(dest="contacts_command", metavar="ACTION")
    actions.required = True
    for name, help_text in (("allow", "authorize an XMPP contact"),
                            ("revoke", "withdraw an authorization")):
        action = actions.add_parser(name, parents=[config_parent()], help=help_text)
        action.add_argument("local_user")
        action.add_argument("jid")
        action.set_defaults(func=_contacts, action=name)
    listing = actions.add_parser("list", parents=[config_parent()], help="list authorizations")
    listing.add_argument("local_user")
    listing.set_defaults(func=_contacts, action="list", jid=None)

    users = subparsers.add_parser("users", help="per-user XMPP federation switch")
    user_actions = users.add_subparsers(dest="users_command", metavar="ACTION")
    user_actions.required = True
    for name in ("enable", "disable", "default"):
        action = user_actions.add_parser(
            name, parents=[config_parent()],
            help="reset to federation.users_enabled_by_default" if name == "default"
            else f"{name} XMPP federation for a user")
        action.add_argument("local_user")
        action.set_defaults(func=_users, action=name)
    listing = user_actions.add_parser("list", parents=[config_parent()],
                                      help="users with an explicit setting")
    listing.set_defaults(func=_users, action="list", local_user=None)


def _open(args: argparse.Namespace) -> tuple[Any, Any] | None:
    from gateway.config.loader import ConfigError, load_config
    from gateway.store import StoreError, open_authorization_store

    try:
        config = load_config(args.config)
        return config, open_authorization_store(config.store)
    except (ConfigError, StoreError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def local_user(config: Any, user: str) -> str:
    """``user@domain`` of a served domain, or ``user`` alone for the first one."""
    from gateway.store import normalize_bare_jid

    user = user if "@" in user else f"{user}@{config.domains[0]}"
    bare = normalize_bare_jid(user)
    if bare.partition("@")[2] not in config.domains:
        raise ValueError(f"{bare} is not a user of a served domain ({', '.join(config.domains)})")
    return bare


def authorization_words(action: str, local: str, remote: str, changed: bool) -> str:
    """What ``contacts allow|revoke`` says (the console says the same)."""
    if action == "allow":
        return f"{local} {'now authorizes' if changed else 'already authorized'} {remote}"
    return f"{local} {'no longer authorizes' if changed else 'had not authorized'} {remote}"


def switch_words(local: str, value: bool | None, default: bool) -> str:
    """What ``users enable|disable|default`` says: the switch as it now applies."""
    effective = default if value is None else value
    return (f"{local}: XMPP federation {'enabled' if effective else 'disabled'}"
            + (" (default)" if value is None else ""))


def _contacts(args: argparse.Namespace) -> int:
    from gateway.store import StoreError, normalize_bare_jid

    opened = _open(args)
    if opened is None:
        return 1
    config, store = opened
    try:
        local = local_user(config, args.local_user)
        if args.action == "list":
            for item in store.list_contacts(local):
                print(f"{item.remote_jid}  (since {item.granted_at}, by {item.source})")
            return 0
        remote = normalize_bare_jid(args.jid)
        if args.action == "allow":
            changed = store.allow(local, remote, "cli")
        else:
            changed = store.revoke(local, remote)
        print(authorization_words(args.action, local, remote, changed))
        return 0
    except (ValueError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()


def _users(args: argparse.Namespace) -> int:
    from gateway.store import StoreError

    opened = _open(args)
    if opened is None:
        return 1
    config, store = opened
    default = config.federation.users_enabled_by_default
    try:
        if args.action == "list":
            print(f"default: {'enabled' if default else 'disabled'} "
                  "(federation.users_enabled_by_default)")
            for setting in store.list_users():
                print(f"{setting.local_user}  {'enabled' if setting.enabled else 'disabled'}"
                      f"  (since {setting.updated_at})")
            return 0
        local = local_user(config, args.local_user)
        value = {"enable": True, "disable": False, "default": None}[args.action]
        store.set_user_enabled(local, value)
        print(switch_words(local, value, default) + "; a running gateway applies it within 5 s")
        return 0
    except (ValueError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
