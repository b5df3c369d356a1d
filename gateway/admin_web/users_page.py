"""Users and contacts: the per-user federation switch and the authorizations, searchable.

The same store and the same words as ``xmpp-gateway users enable|disable|default`` and
``contacts allow|revoke`` (``gateway.cli.contacts``), through the running gateway's own
store object; a changed switch applies to the next stanza (the router is told at once
instead of waiting for its periodic re-read).

The list shows the users that have a switch of their own (the store lists those); any
other user of a served domain is opened by address, with its authorizations, and follows
``federation.users_enabled_by_default`` until it is given one.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web

from gateway.admin_web.server import SESSION, console_of, notice, redirect
from gateway.cli.contacts import authorization_words, local_user, switch_words
from gateway.store import StoreError, normalize_bare_jid

SWITCH_VALUES = {"enable": True, "disable": False, "default": None}


def register(router: web.UrlDispatcher) -> None:
    router.add_get("/users", users)
    router.add_get("/users/{user}", user)
    router.add_post("/users/{user}/switch", switch)
    router.add_post("/users/{user}/contacts", contacts)


def _default(request: web.Request) -> bool:
    return console_of(request).parts.gateway.config.federation.users_enabled_by_default


async def users(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    query = request.query.get("q", "").strip()
    try:
        settings = await console.parts.users.list_users()
        problem = ""
    except StoreError as exc:
        settings, problem = [], f"the store does not answer: {exc}"
    rows = [{"user": s.local_user, "enabled": s.enabled, "since": s.updated_at}
            for s in settings if query.lower() in s.local_user.lower()]
    lookup = ""
    if query:
        try:
            lookup = local_user(console.parts.gateway.config, query)
        except ValueError:
            lookup = ""
    return console.render(request, "users.html", rows=rows, query=query, lookup=lookup,
                          default=_default(request), problem=problem)


def _user(request: web.Request) -> str:
    try:
        return local_user(console_of(request).parts.gateway.config,
                          request.match_info["user"])
    except ValueError as exc:
        raise web.HTTPNotFound(text=f"error: {exc}") from None


async def user(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    name = _user(request)
    store = console.parts.users
    try:
        explicit = {s.local_user: s for s in await store.list_users()}.get(name)
        authorizations = await store.list_contacts(name)
        problem = ""
    except StoreError as exc:
        explicit, authorizations, problem = None, [], f"the store does not answer: {exc}"
    default = _default(request)
    switch_state: dict[str, Any] = {
        "explicit": explicit is not None,
        "enabled": explicit.enabled if explicit is not None else default,
        "since": explicit.updated_at if explicit is not None else ""}
    return console.render(request, "user.html", user=name, switch=switch_state,
                          default=default, contacts=authorizations, problem=problem)


def _back(name: str) -> web.HTTPSeeOther:
    return redirect("/users/" + quote(name, safe="@"))


async def switch(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    name = _user(request)
    wanted = str((await request.post()).get("value", ""))
    if wanted not in SWITCH_VALUES:
        raise web.HTTPBadRequest(text="value must be enable, disable or default")
    value = SWITCH_VALUES[wanted]
    try:
        await console.parts.users.set_user_enabled(name, value)
    except StoreError as exc:
        console.changed(request, f"users {wanted}", "failed", local_user=name, reason=str(exc))
        notice(request, "error", f"error: {exc}")
        raise _back(name) from None
    console.parts.gateway.user_switch_changed(name)
    text = switch_words(name, value, _default(request))
    console.changed(request, f"users {wanted}", "ok", local_user=name, detail=text)
    notice(request, "ok", text)
    raise _back(name)


async def contacts(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    name = _user(request)
    form = await request.post()
    action = str(form.get("action", ""))
    if action not in ("allow", "revoke"):
        raise web.HTTPBadRequest(text="action must be allow or revoke")
    store = console.parts.users
    try:
        remote = normalize_bare_jid(str(form.get("jid", "")).strip())
        if action == "allow":
            changed = await store.allow(name, remote,
                                        f"console:{request[SESSION].account.name}")
        else:
            changed = await store.revoke(name, remote)
    except (ValueError, StoreError) as exc:
        console.changed(request, f"contacts {action}", "refused", local_user=name,
                        reason=str(exc))
        notice(request, "error", f"error: {exc}")
        raise _back(name) from None
    text = authorization_words(action, name, remote, changed)
    console.changed(request, f"contacts {action}", "ok", local_user=name, contact=remote,
                    detail=text)
    notice(request, "ok", text)
    raise _back(name)
