"""``xmpp-gateway admin-user add|passwd|role|remove|list`` — the console's accounts.

They live in ``admin_web.accounts`` (default: ``admin-users`` beside the configuration
file; see docs/console.md). The password is asked twice on the terminal, or read from the
first line of standard input with ``--password-stdin`` (for provisioning scripts: never on
the command line, where other users would see it in the process list).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from gateway.cli.common import load_or_report
from gateway.cli.main import config_parent

ROLES = ("admin", "read-only")


def register(subparsers: Any) -> None:
    users = subparsers.add_parser("admin-user", help="accounts of the admin web console")
    actions = users.add_subparsers(dest="admin_user_command", metavar="ACTION")
    actions.required = True
    add = actions.add_parser("add", parents=[config_parent()], help="create an account")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, default="admin",
                     help="admin changes things; read-only only looks (default admin)")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from standard input instead of asking")
    add.set_defaults(func=_add)
    passwd = actions.add_parser("passwd", parents=[config_parent()],
                                help="set a new password")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true",
                        help="read the password from standard input instead of asking")
    passwd.set_defaults(func=_passwd)
    role = actions.add_parser("role", parents=[config_parent()], help="change the role")
    role.add_argument("name")
    role.add_argument("role", choices=ROLES)
    role.set_defaults(func=_role)
    remove = actions.add_parser("remove", parents=[config_parent()],
                                help="delete an account (its console sessions end)")
    remove.add_argument("name")
    remove.set_defaults(func=_remove)
    listing = actions.add_parser("list", parents=[config_parent()], help="list accounts")
    listing.set_defaults(func=_list)


def _accounts(args: argparse.Namespace) -> Any:
    from gateway.admin_web.accounts import AccountFile

    config = load_or_report(args)
    return None if config is None else AccountFile(config.admin_web.accounts)


def _password(args: argparse.Namespace) -> str | None:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        print("error: the two passwords differ", file=sys.stderr)
        return None
    return first


def _run(args: argparse.Namespace, action: Any) -> int:
    from gateway.admin_web.accounts import AccountError

    accounts = _accounts(args)
    if accounts is None:
        return 2
    try:
        message = action(accounts)
    except AccountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {accounts.path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if message:
        print(message)
    return 0


def _add(args: argparse.Namespace) -> int:
    from gateway.admin_web.accounts import AccountError, Role, check_name

    def action(accounts: Any) -> str:
        if check_name(args.name) in accounts.accounts():  # say so before asking a password
            raise AccountError(f"account {args.name} already exists (admin-user passwd "
                               "changes its password)")
        password = _password(args)
        if password is None:
            raise AccountError("nothing changed")
        account = accounts.add(args.name, Role(args.role), password)
        return f"added {account.name} ({account.role}) to {accounts.path}"

    return _run(args, action)


def _passwd(args: argparse.Namespace) -> int:
    from gateway.admin_web.accounts import AccountError

    def action(accounts: Any) -> str:
        if args.name not in accounts.accounts():  # say so before asking a password
            raise AccountError(f"no account {args.name!r} in {accounts.path}")
        password = _password(args)
        if password is None:
            raise AccountError("nothing changed")
        accounts.set_password(args.name, password)
        return f"new password set for {args.name} (its open console sessions end)"

    return _run(args, action)


def _role(args: argparse.Namespace) -> int:
    from gateway.admin_web.accounts import Role

    def action(accounts: Any) -> str:
        accounts.set_role(args.name, Role(args.role))
        return f"{args.name} is now {args.role} (its open console sessions end)"

    return _run(args, action)


def _remove(args: argparse.Namespace) -> int:
    def action(accounts: Any) -> str:
        accounts.remove(args.name)
        return f"removed {args.name} (its open console sessions end)"

    return _run(args, action)


def _list(args: argparse.Namespace) -> int:
    def action(accounts: Any) -> str:
        found = accounts.accounts()
        if not found:
            return (f"no accounts in {accounts.path} (add one with: xmpp-gateway admin-user "
                    "add NAME)")
        return "\n".join(f"{a.name}  {a.role}" for a in sorted(found.values(),
                                                                key=lambda a: a.name))

    return _run(args, action)
