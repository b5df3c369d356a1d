"""Partners: the list, add, edit and remove — through ``gateway.config.partner_changes``,
the code behind ``xmpp-gateway partner add|set|remove``, then a reload of the gateway.

The form posts the same settings the CLI takes; a refusal comes back in the CLI's words
(the negotiation matrix's for an invalid tls/sasl/dialback combination) with the form
still filled in, and the configuration file untouched.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from gateway.admin_web.pages import reload_words
from gateway.admin_web.server import console_of, notice, redirect
from gateway.config.loader import SUPPORT_VALUES, TYPE_VALUES
from gateway.config.model import PartnerPolicy
from gateway.config.partner_changes import (
    REFUSED,
    PartnerChange,
    add_partner,
    remove_partner,
    update_partner,
)
from gateway.policy.outcome import in_effect

TYPES, SUPPORTS = list(TYPE_VALUES), list(SUPPORT_VALUES)


def register(router: web.UrlDispatcher) -> None:
    router.add_get("/partners", partners)
    router.add_post("/partners", add)
    router.add_get("/partners/{domain}", edit_form)
    router.add_post("/partners/{domain}", edit)
    router.add_get("/partners/{domain}/remove", confirm_remove)
    router.add_post("/partners/{domain}/remove", remove)


def _row(policy: PartnerPolicy) -> dict[str, Any]:
    return {"domain": policy.primary_domain, "additional": list(policy.additional_domains),
            "type": str(policy.partner_type), "tls": str(policy.tls),
            "sasl": str(policy.sasl), "dialback": "true" if policy.dialback else "false",
            "description": policy.description, "methods": policy.negotiation.methods_text,
            "warnings": list(policy.negotiation.warnings),
            "in_effect": in_effect(policy.negotiation)}


def _blank() -> dict[str, Any]:
    return {"domain": "", "additional": [], "type": "federated", "tls": "optional",
            "sasl": "optional", "dialback": "true", "description": ""}


def _page(request: web.Request, form: dict[str, Any], error: str = "",
          status: int = 200) -> web.Response:
    console = console_of(request)
    config = console.parts.gateway.config
    return console.render(request, "partners.html", status=status,
                          partners=[_row(p) for p in config.partners], form=form,
                          error=error, types=TYPES, supports=SUPPORTS,
                          file=str(config.source or ""))


async def partners(request: web.Request) -> web.StreamResponse:
    return _page(request, _blank())


def _filled(data: MultiDictProxy[Any], domain: str = "") -> dict[str, Any]:
    """The form as posted (to show it again after a refusal)."""
    return {"domain": domain or str(data.get("domain", "")).strip(),
            "additional": [d for d in re.split(r"[\s,]+", str(data.get("additional", "")))
                           if d],
            "type": str(data.get("type", "")), "tls": str(data.get("tls", "")),
            "sasl": str(data.get("sasl", "")), "dialback": str(data.get("dialback", "")),
            "description": str(data.get("description", "")).strip()}


def _choice(value: str, allowed: list[str], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"error: {what} must be one of {', '.join(allowed)}, not {value!r}")
    return value


async def _apply(request: web.Request, change: PartnerChange, action: str,
                 form: dict[str, Any],
                 failure_page: Callable[[str], web.Response]) -> web.StreamResponse:
    console = console_of(request)
    if not change.ok:
        console.changed(request, f"partner {action}", "refused", domain=form["domain"],
                        reason=change.error)
        return failure_page(change.error)
    answer = await console.parts.gateway.reload()
    console.changed(request, f"partner {action}", "ok", domain=form["domain"],
                    detail=change.message, reload=reload_words(answer))
    notice(request, "ok", change.message)
    for warning in change.warnings:
        notice(request, "warning", f"warning: {warning}")
    if change.in_effect:
        notice(request, "ok", f"in effect: {change.in_effect}")
    notice(request, "ok" if answer.get("ok") else "error", reload_words(answer))
    raise redirect("/partners")


async def add(request: web.Request) -> web.StreamResponse:
    data = await request.post()
    form = _filled(data)
    try:
        change = add_partner(
            _source(request), form["domain"], _choice(form["type"], TYPES, "type"),
            tls=_choice(form["tls"], SUPPORTS, "tls"),
            sasl=_choice(form["sasl"], SUPPORTS, "sasl"),
            dialback=_choice(form["dialback"], ["true", "false"], "dialback") == "true",
            additional_domains=form["additional"], description=form["description"] or None)
    except ValueError as exc:
        change = PartnerChange(REFUSED, error=str(exc))
    return await _apply(request, change, "add", form,
                        lambda error: _page(request, form, error, status=422))


def _source(request: web.Request) -> Any:
    source = console_of(request).parts.gateway.config.source
    if source is None:
        raise web.HTTPConflict(text="the gateway's configuration was not loaded from a file: "
                               "partners can only be changed in a configuration file")
    return source


def _find(request: web.Request) -> PartnerPolicy:
    domain = request.match_info["domain"]
    policy = console_of(request).parts.gateway.config.partner_for(domain)
    if policy is None:
        raise web.HTTPNotFound(text=f"{domain} is not a partner")
    return policy


async def edit_form(request: web.Request) -> web.StreamResponse:
    policy = _find(request)
    return console_of(request).render(request, "partner.html", form=_row(policy), error="",
                                      types=TYPES, supports=SUPPORTS)


async def edit(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    policy = _find(request)
    form = _filled(await request.post(), policy.primary_domain)
    wanted = set(form["additional"])
    current = set(policy.additional_domains)
    try:
        change = update_partner(
            _source(request), policy.primary_domain,
            partner_type=_changed(_choice(form["type"], TYPES, "type"),
                                  str(policy.partner_type)),
            tls=_changed(_choice(form["tls"], SUPPORTS, "tls"), str(policy.tls)),
            sasl=_changed(_choice(form["sasl"], SUPPORTS, "sasl"), str(policy.sasl)),
            dialback=_changed(_choice(form["dialback"], ["true", "false"], "dialback") == "true",
                              policy.dialback),
            description=_changed(form["description"], policy.description),
            add_domains=sorted(wanted - current), remove_domains=sorted(current - wanted))
    except ValueError as exc:
        change = PartnerChange(REFUSED, error=str(exc))

    def again(error: str) -> web.Response:
        return console.render(request, "partner.html", status=422, form=form, error=error,
                              types=TYPES, supports=SUPPORTS)

    return await _apply(request, change, "set", form, again)


def _changed(value: Any, current: Any) -> Any:
    """None (leave it) when the form shows the value the entry already has."""
    return None if value == current else value


async def confirm_remove(request: web.Request) -> web.StreamResponse:
    policy = _find(request)
    console = console_of(request)
    return console.render(
        request, "confirm.html", title=f"Remove partner {policy.primary_domain}",
        target=request.path, back="/partners", confirm="Remove",
        explain=f"The entry of {', '.join(policy.domains)} is removed from "
                f"{console.parts.gateway.config.source} and the gateway reloads: its sessions "
                "are closed and its users can no longer reach yours.")


async def remove(request: web.Request) -> web.StreamResponse:
    policy = _find(request)
    change = remove_partner(_source(request), policy.primary_domain)
    form = {"domain": policy.primary_domain}

    def failed(error: str) -> web.Response:
        return _page(request, _blank(), error, status=422)

    return await _apply(request, change, "remove", form, failed)
