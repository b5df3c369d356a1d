"""Console sessions, CSRF tokens and login throttling: plain objects, clock passed in.

* **Sessions** live in the gateway's memory only (a restart logs everyone out). The cookie
  holds a random 256-bit identifier and nothing else; it is ``HttpOnly`` (no script reads
  it), ``SameSite=Strict`` (no other site's page can make the browser send it) and
  ``Secure`` when the console is served over HTTPS. A session ends after
  ``admin_web.session_idle`` seconds without a request, ``session_lifetime`` seconds after
  login, at logout, or when its account is removed or changes role.
* **CSRF**: every session has its own random token, written into every form and required,
  compared in constant time, on every request that changes something (OWASP's
  synchronizer token pattern). The login form, before any session exists, carries a token
  bound to a pre-login cookie (double submit), so that another site cannot log a browser
  in under an account of its choosing.
* **Throttling**: failed logins are counted per client address and per account name; from
  the fifth failure within 15 minutes each further attempt must wait, the wait doubling
  from 30 s up to 15 minutes. A correct password does not get through a wait either
  (otherwise the wait would not slow down guessing at all).
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

from gateway.admin_web.accounts import Account

MAX_SESSIONS = 1000  # oldest dropped beyond this: memory stays bounded whatever happens


@dataclass
class Session:
    id: str
    account: Account
    csrf: str
    created: float
    seen: float
    notices: list[tuple[str, str]] = field(default_factory=list)  # shown on the next page

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf, str(token))


@dataclass
class SessionTable:
    idle: float
    lifetime: float
    sessions: OrderedDict[str, Session] = field(default_factory=OrderedDict)

    def create(self, account: Account, now: float) -> Session:
        session = Session(secrets.token_urlsafe(32), account, secrets.token_urlsafe(32),
                          now, now)
        self.sessions[session.id] = session
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None, now: float, current: Account | None) -> Session | None:
        """The live session for a cookie value; ``current`` is its account as the accounts
        file says now (None: removed), so a removed account, or one given another role or
        password, is logged out."""
        session = self.sessions.get(session_id or "")
        if session is None:
            return None
        expired = now - session.seen > self.idle or now - session.created > self.lifetime
        if expired or current != session.account:
            self.end(session.id)
            return None
        session.seen = now
        self.sessions.move_to_end(session.id)
        return session

    def end(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)

    def of(self, name: str) -> list[Session]:
        return [s for s in self.sessions.values() if s.account.name == name]


@dataclass
class _Failures:
    times: list[float] = field(default_factory=list)
    locked_until: float = 0.0
    lockouts: int = 0


@dataclass
class LoginThrottle:
    """Failed logins by key (``ip:…`` and ``name:…``); see the module docstring."""

    free_failures: int = 5
    window: float = 900.0
    first_wait: float = 30.0
    longest_wait: float = 900.0
    keys: dict[str, _Failures] = field(default_factory=dict)

    def wait(self, keys: list[str], now: float) -> float:
        """Seconds before these keys may try again (0: now)."""
        return max([0.0, *(f.locked_until - now for k in keys if (f := self.keys.get(k)))])

    def failed(self, keys: list[str], now: float) -> float:
        """Record a failure; returns the wait it imposes (0 while still free)."""
        longest = 0.0
        for key in keys:
            entry = self.keys.setdefault(key, _Failures())
            entry.times = [t for t in entry.times if now - t < self.window] + [now]
            if len(entry.times) >= self.free_failures:
                wait = min(self.first_wait * 2 ** entry.lockouts, self.longest_wait)
                entry.lockouts += 1
                entry.locked_until = now + wait
                longest = max(longest, wait)
        self._forget_old(now)
        return longest

    def succeeded(self, keys: list[str]) -> None:
        for key in keys:
            self.keys.pop(key, None)

    def _forget_old(self, now: float) -> None:
        if len(self.keys) < 10_000:
            return
        for key, entry in list(self.keys.items()):
            if entry.locked_until < now and all(now - t >= self.window for t in entry.times):
                del self.keys[key]


def prelogin_token(secret: bytes, nonce: str) -> str:
    """The login form's CSRF token for the pre-login cookie ``nonce``."""
    return hmac.new(secret, b"login:" + nonce.encode(), "sha256").hexdigest()


def prelogin_ok(secret: bytes, nonce: str | None, token: str | None) -> bool:
    return bool(nonce) and bool(token) and hmac.compare_digest(
        prelogin_token(secret, str(nonce)), str(token))
