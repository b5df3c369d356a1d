"""Console accounts: one text file of ``name:role:argon2 hash`` lines, like an htpasswd.

Where: ``admin_web.accounts`` (default ``admin-users`` beside the configuration file), mode
0600, written only by ``xmpp-gateway admin-user …`` (atomically: a temporary file renamed
over the old one). The running console reads it again whenever it changed, so an account
added, removed or given a new password takes effect at the next login, without a reload;
removing an account also ends its open sessions at their next request.

Passwords are hashed with Argon2id (RFC 9106) through argon2-cffi with its default
parameters (the RFC's second recommended option, 64 MiB / 3 passes); a hash made with
weaker parameters than today's is replaced at the next successful login. An unknown name
is verified against a dummy hash, so that the time a failed login takes does not tell
whether the account exists.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 10


class Role(StrEnum):
    """``admin`` may change things; ``read-only`` sees every page and changes nothing."""

    ADMIN = "admin"
    READ_ONLY = "read-only"


class AccountError(ValueError):
    """A name, role or password that cannot be used (the message says why)."""


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    role: Role
    password_hash: str

    @property
    def can_change(self) -> bool:
        return self.role is Role.ADMIN


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise AccountError(f"{name!r} is not an account name (letters, digits and . _ @ -, "
                           "starting with a letter or digit, at most 64)")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a console password needs at least {MIN_PASSWORD} characters")
    return password


class AccountFile:
    """The accounts file: parsed on demand, cached until its size or mtime changes."""

    def __init__(self, path: Path, hasher: PasswordHasher | None = None) -> None:
        self.path = Path(path)
        self.hasher = hasher or PasswordHasher()
        self._seen: tuple[int, int] | None = None
        self._accounts: dict[str, Account] = {}
        self._dummy = ""  # made at the first verification (a hash costs ~0.1 s and 64 MiB)

    # ------------------------------------------------------------------ reading

    def accounts(self) -> dict[str, Account]:
        """Every account by name ({} when the file does not exist)."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            self._seen, self._accounts = None, {}
            return {}
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp != self._seen:
            self._accounts = parse_accounts(self.path.read_text(encoding="utf-8"),
                                            str(self.path))
            self._seen = stamp
        return dict(self._accounts)

    def get(self, name: str) -> Account | None:
        return self.accounts().get(name)

    def verify(self, name: str, password: str) -> Account | None:
        """The account if the password is right, else None (in about the same time)."""
        account = self.get(name)
        if account is None and not self._dummy:
            self._dummy = self.hasher.hash("no such account: compare against something")
        try:
            self.hasher.verify(account.password_hash if account else self._dummy, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if account is None:
            return None
        if self.hasher.check_needs_rehash(account.password_hash):
            with contextlib.suppress(OSError, AccountError):  # a read-only file still logs in
                self.set_password(name, password)
                return self.get(name)
        return account

    # ------------------------------------------------------------------ writing

    def add(self, name: str, role: Role, password: str) -> Account:
        accounts = self.accounts()
        if check_name(name) in accounts:
            raise AccountError(f"account {name} already exists (admin-user passwd changes "
                               "its password)")
        account = Account(name, role, self.hasher.hash(check_password(password)))
        accounts[name] = account
        self._write(accounts)
        return account

    def set_password(self, name: str, password: str) -> None:
        accounts = self._existing(name)
        accounts[name] = Account(name, accounts[name].role,
                                 self.hasher.hash(check_password(password)))
        self._write(accounts)

    def set_role(self, name: str, role: Role) -> None:
        accounts = self._existing(name)
        accounts[name] = Account(name, role, accounts[name].password_hash)
        self._write(accounts)

    def remove(self, name: str) -> None:
        accounts = self._existing(name)
        del accounts[name]
        self._write(accounts)

    def _existing(self, name: str) -> dict[str, Account]:
        accounts = self.accounts()
        if name not in accounts:
            raise AccountError(f"no account {name!r} in {self.path}")
        return accounts

    def _write(self, accounts: dict[str, Account]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(f"{a.name}:{a.role}:{a.password_hash}\n"
                       for a in sorted(accounts.values(), key=lambda a: a.name))
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(HEADER + text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._seen = None


HEADER = ("# xmpp-gateway console accounts: name:role:argon2id hash. Edit with\n"
          "# `xmpp-gateway admin-user add|passwd|role|remove|list`; keep this file mode 0600.\n")


def parse_accounts(text: str, source: str = "accounts") -> dict[str, Account]:
    """Accounts from the file's text; a malformed line is an error naming it (a console
    that silently ignored a line would lock out an account without saying why)."""
    accounts: dict[str, Account] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, rest = line.partition(":")
        role, _, password_hash = rest.partition(":")
        try:
            check_name(name)
            parsed = Role(role)
        except (AccountError, ValueError):
            raise AccountError(f"{source}:{number}: not 'name:admin|read-only:hash'") from None
        if not password_hash.startswith("$argon2"):
            raise AccountError(f"{source}:{number}: the password hash is not an argon2 hash")
        accounts[name] = Account(name, parsed, password_hash)
    return accounts
