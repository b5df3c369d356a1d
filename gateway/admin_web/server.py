"""The console's HTTP side: aiohttp in the gateway's own event loop, pages from templates.

Every request passes three fences before a page handler sees it (:func:`_guard`):

1. a session (cookie) for everything but the login page and the style sheet — a request
   without one is sent to the login page (GET) or refused with 403 (anything else);
2. for every request that is not a GET, the session's CSRF token in the form;
3. for every change, an ``admin`` account (``read-only`` sees every page, changes nothing).

Every response carries headers that keep it out of frames, caches and other origins'
scripts (:data:`SECURITY_HEADERS`); the pages use no script at all. Each change is
written to the log as ``admin_web.change`` with the account that made it and the
client's address; logins as ``admin_web.login`` / ``admin_web.login_refused``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from aiohttp import web

from gateway.admin_web.accounts import Account, AccountError, AccountFile
from gateway.admin_web.history import INTERVAL, RateHistory
from gateway.admin_web.ports import ConsoleParts
from gateway.admin_web.security import (
    LoginThrottle,
    Session,
    SessionTable,
    prelogin_ok,
    prelogin_token,
)
from gateway.config.model import AdminWebSettings
from gateway.logs import log_event

log = logging.getLogger("gateway.admin_web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
PUBLIC = ("/login", "/static/console.css")
# Requests that are not GET but change nothing (an admin or read-only account may make them).
NOT_CHANGES = ("/logout", "/sessions/check")
PRELOGIN_COOKIE = "gw_login"
# Argon2 takes 64 MiB and ~0.1 s per verification: a few at a time, off the event loop.
HASHING_SLOTS = 2

SESSION = web.RequestKey("session", Session)


class Console:
    """State shared by the handlers: the gateway's parts, accounts, sessions, templates."""

    def __init__(self, parts: ConsoleParts, settings: AdminWebSettings) -> None:
        self.parts = parts
        self.settings = settings
        self.accounts = AccountFile(settings.accounts)
        self.sessions = SessionTable(settings.session_idle, settings.session_lifetime)
        self.throttle = LoginThrottle()
        self.history = RateHistory()
        self.secret = secrets.token_bytes(32)
        self.https = settings.certificate is not None and settings.key is not None
        self.cookie = "__Host-gw_session" if self.https else "gw_session"
        self.hashing = asyncio.Semaphore(HASHING_SLOTS)
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("gateway.admin_web", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
            lstrip_blocks=True)

    # ------------------------------------------------------------------ accounts

    def current_account(self, name: str) -> Account | None:
        try:
            return self.accounts.get(name)
        except (AccountError, OSError) as exc:
            log_event(log, logging.ERROR, "admin_web.accounts_unreadable",
                      file=str(self.settings.accounts), reason=str(exc))
            return None

    # ------------------------------------------------------------------ rendering

    def render(self, request: web.Request, template: str, status: int = 200,
               **context: Any) -> web.Response:
        session = request.get(SESSION)
        page = self.templates.get_template(template).render(
            session=session, node=self.parts.gateway.node_id, path=request.path,
            notices=session.notices[:] if session else [], **context)
        if session:
            session.notices.clear()
        return web.Response(text=page, status=status, content_type="text/html")

    def changed(self, request: web.Request, action: str, result: str, **fields: Any) -> None:
        """The log line every change writes: who, from where, what, with which result."""
        session: Session = request[SESSION]
        log_event(log, logging.INFO, "admin_web.change", user=session.account.name,
                  role=str(session.account.role), client=request.remote or "?",
                  node=self.parts.gateway.node_id, action=action, result=result, **fields)

    # ------------------------------------------------------------------ sampling

    def sample(self) -> None:
        traffic = self.parts.traffic.traffic()
        self.history.sample(time.monotonic(), {"xmpp_to_sip": traffic["stanzas_in"],
                                               "sip_to_xmpp": traffic["stanzas_out"]})


CONSOLE = web.AppKey("console", Console)


def notice(request: web.Request, kind: str, text: str) -> None:
    """A message shown once on the next page (after a redirect)."""
    request[SESSION].notices.append((kind, text))


def redirect(location: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location)


def console_of(request: web.Request) -> Console:
    return request.app[CONSOLE]


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    except Exception as exc:  # a page's bug answers 500 and is logged; the gateway goes on
        log_event(log, logging.ERROR, "admin_web.failed", path=request.path,
                  method=request.method, reason=repr(exc))
        log.debug("admin_web.failed", exc_info=True)
        response = web.HTTPInternalServerError(text="the console failed to answer this "
                                               "request; the gateway's log says why")
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if console_of(request).https:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if isinstance(response, web.HTTPException):
        raise response
    return response


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    console = console_of(request)
    if request.path in PUBLIC:
        return await handler(request)
    now = time.monotonic()
    session = None
    session_id = request.cookies.get(console.cookie)
    if session_id and (found := console.sessions.sessions.get(session_id)):
        session = console.sessions.get(session_id, now,
                                       console.current_account(found.account.name))
    if session is None:
        if request.method in ("GET", "HEAD"):
            raise redirect("/login?next=" + quote(request.path_qs, safe="/?=&"))
        raise web.HTTPForbidden(text="not logged in: log in to the console first")
    request[SESSION] = session
    if request.method not in ("GET", "HEAD"):
        form = await request.post()
        token = form.get("csrf")
        if not session.csrf_ok(token if isinstance(token, str) else None):
            log_event(log, logging.WARNING, "admin_web.csrf_refused",
                      user=session.account.name, client=request.remote or "?",
                      path=request.path, reason="missing or wrong CSRF token")
            raise web.HTTPForbidden(text="refused: this form's CSRF token is missing or "
                                    "wrong; reload the page and try again")
        if request.path not in NOT_CHANGES and not session.account.can_change:
            log_event(log, logging.WARNING, "admin_web.change_refused",
                      user=session.account.name, client=request.remote or "?",
                      path=request.path, reason="read-only account")
            raise web.HTTPForbidden(text=f"refused: {session.account.name} is a read-only "
                                    "account")
    return await handler(request)


# ---------------------------------------------------------------------- login / logout


def _safe_next(target: str) -> str:
    """Only a path on this console (never another site: no open redirect)."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or \
            target.startswith("//") or "\\" in target:  # a browser reads a backslash as "/"
        return "/"
    return target


async def login_page(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    if request.method == "POST":
        return await _login(request, console)
    return _login_form(request, console)


def _login_form(request: web.Request, console: Console, error: str = "",
                status: int = 200, name: str = "") -> web.Response:
    # Reuse the browser's pre-login cookie: a second login page open (or the browser's own
    # request for /favicon.ico, sent here too) must not invalidate the first form's token.
    nonce = request.cookies.get(PRELOGIN_COOKIE, "")
    if not re.fullmatch(r"[A-Za-z0-9_-]{22}", nonce):
        nonce = secrets.token_urlsafe(16)
    response = console.render(request, "login.html", status=status, error=error, name=name,
                              token=prelogin_token(console.secret, nonce),
                              next=_safe_next(request.query.get("next", "/")))
    response.set_cookie(PRELOGIN_COOKIE, nonce, httponly=True, samesite="Strict",
                        secure=console.https, path="/login")
    return response


async def _login(request: web.Request, console: Console) -> web.StreamResponse:
    form = await request.post()
    name = str(form.get("name", ""))[:64]
    password = str(form.get("password", ""))[:1024]
    client = request.remote or "?"
    if not prelogin_ok(console.secret, request.cookies.get(PRELOGIN_COOKIE),
                       str(form.get("token", ""))):
        log_event(log, logging.WARNING, "admin_web.login_refused", user=name, client=client,
                  reason="missing or wrong login form token (CSRF)")
        return _login_form(request, console, "The login form expired; please try again.",
                           status=403, name=name)
    keys = [f"ip:{client}", f"name:{name.lower()}"]
    wait = console.throttle.wait(keys, time.monotonic())
    if wait > 0:
        log_event(log, logging.WARNING, "admin_web.login_refused", user=name, client=client,
                  reason="throttled after repeated failures", wait=f"{wait:.0f}")
        return _login_form(request, console, f"Too many failed logins: try again in "
                           f"{wait:.0f} s.", status=429, name=name)
    async with console.hashing:
        try:
            account = await asyncio.to_thread(console.accounts.verify, name, password)
        except (AccountError, OSError) as exc:
            log_event(log, logging.ERROR, "admin_web.accounts_unreadable",
                      file=str(console.settings.accounts), reason=str(exc))
            return _login_form(request, console, "The accounts file cannot be read; see the "
                               "gateway's log.", status=500, name=name)
    if account is None:
        imposed = console.throttle.failed(keys, time.monotonic())
        log_event(log, logging.WARNING, "admin_web.login_refused", user=name, client=client,
                  reason="wrong name or password",
                  **({"wait": f"{imposed:.0f}"} if imposed else {}))
        text = "Wrong name or password."
        if imposed:
            text += f" Too many failed logins: try again in {imposed:.0f} s."
        return _login_form(request, console, text, status=401, name=name)
    console.throttle.succeeded(keys)
    session = console.sessions.create(account, time.monotonic())
    log_event(log, logging.INFO, "admin_web.login", user=account.name, role=str(account.role),
              client=client, node=console.parts.gateway.node_id)
    response = redirect(_safe_next(str(form.get("next", "/"))))
    response.set_cookie(console.cookie, session.id, httponly=True, samesite="Strict",
                        secure=console.https, path="/")
    response.del_cookie(PRELOGIN_COOKIE, path="/login")
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    session: Session = request[SESSION]
    console.sessions.end(session.id)
    log_event(log, logging.INFO, "admin_web.logout", user=session.account.name,
              client=request.remote or "?")
    response = redirect("/login")
    response.del_cookie(console.cookie, path="/")
    return response


async def stylesheet(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(Path(__file__).with_name("console.css"),
                            headers={"Content-Type": "text/css"})


# ---------------------------------------------------------------------- the server


def build_app(console: Console) -> web.Application:
    from gateway.admin_web import pages, partners_page, users_page

    app = web.Application(middlewares=[_headers, _guard], client_max_size=64 * 1024)
    app[CONSOLE] = console
    app.router.add_route("*", "/login", login_page)
    app.router.add_post("/logout", logout)
    app.router.add_get("/static/console.css", stylesheet)
    pages.register(app.router)
    partners_page.register(app.router)
    users_page.register(app.router)
    return app


class AdminWebServer:
    """Started and stopped with the gateway; one per process."""

    def __init__(self, parts: ConsoleParts, settings: AdminWebSettings) -> None:
        self.console = Console(parts, settings)
        self.settings = settings
        self._runner: web.AppRunner | None = None
        self._sampler: asyncio.Task[None] | None = None
        self.address: tuple[str, int] | None = None

    async def start(self) -> None:
        host, port = self.settings.address
        context = None
        if self.console.https:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(str(self.settings.certificate), str(self.settings.key))
        self._runner = web.AppRunner(build_app(self.console), access_log=None,
                                     handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=context,
                           reuse_address=True)
        await site.start()
        bound = self._runner.addresses  # the real port when the configuration says 0
        self.address = tuple(bound[0][:2]) if bound else (host, port)
        self._sampler = asyncio.get_running_loop().create_task(self._sample(),
                                                               name="admin-web-history")
        log_event(log, logging.INFO, "admin_web.listening",
                  url=f"{'https' if context else 'http'}://{_url_host(host)}:"
                      f"{self.address[1]}/", accounts=str(self.settings.accounts))

    async def _sample(self) -> None:
        while True:
            self.console.sample()
            await asyncio.sleep(INTERVAL)

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def since(timestamp: str) -> str:
    """'3 h 12 min' from an ISO time in the past (uptime)."""
    try:
        started = datetime.fromisoformat(timestamp)
    except ValueError:
        return "?"
    seconds = max(0, int((datetime.now(UTC) - started).total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {seconds} s"
