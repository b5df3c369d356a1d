"""Overview, live sessions (with the connectivity check), reload and drain."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from gateway.admin_web.history import chart
from gateway.admin_web.server import console_of, notice, redirect, since
from gateway.store import StoreError


def register(router: web.UrlDispatcher) -> None:
    router.add_get("/", overview)
    router.add_get("/sessions", sessions)
    router.add_post("/sessions/check", check_connectivity)
    router.add_get("/reload", confirm_reload)
    router.add_post("/reload", reload)
    router.add_get("/drain", confirm_drain)
    router.add_post("/drain", drain)


async def _cluster(request: web.Request) -> tuple[list[dict[str, Any]], str]:
    """Rows of the cluster table (as ``status --cluster`` shows them), or why there are
    none; ``([], "")`` when this gateway is not part of a cluster."""
    console = console_of(request)
    if console.parts.cluster is None:
        return [], ""
    lease = console.parts.gateway.config.cluster.lease
    try:
        nodes = await console.parts.cluster.list_nodes()
    except StoreError as exc:
        return [], f"the shared store does not answer: {exc}"
    return [{"node": n.report.node_id, "status": n.status(lease),
             "seen": f"{n.age_seconds:.1f} s ago", "started_at": n.report.started_at,
             "sessions": n.report.sessions, "queued": n.report.queued,
             "watches": n.report.watches, "addresses": n.report.addresses}
            for n in nodes], ""


async def overview(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    parts = console.parts
    status = parts.gateway.status()
    traffic = parts.traffic.traffic()
    backend = status.get("backend", {})
    members, cluster_problem = await _cluster(request)
    counters = [
        ("Stanzas received from partners (XMPP → SIP)", traffic["stanzas_in"]),
        ("Stanzas sent to partners (SIP → XMPP)", traffic["stanzas_out"]),
        ("Delivered to SIP users", status["router"]["delivered"]),
        ("Refused (contact rules, policy)", sum(traffic["refusals"].values())),
        ("Bounced to their sender", traffic["bounces"]),
        ("Dropped (neither delivered nor answered)", sum(status["dropped"].values())),
    ]
    if backend.get("kind") == "sip":
        counters += [("503 answers while congested", backend.get("busy_answers", 0)),
                     ("UDP datagrams dropped by the kernel", backend.get("udp_drops") or 0)]
    return console.render(
        request, "overview.html", status=200, gateway=status, version=parts.version,
        uptime=since(parts.gateway.started_at), started_at=parts.gateway.started_at,
        members=members, cluster_problem=cluster_problem,
        clustered=parts.cluster is not None,
        proxy=parts.proxy.describe() if parts.proxy is not None else None,
        counters=counters, dropped=sorted(status["dropped"].items()),
        refusals=sorted(traffic["refusals"].items()),
        failures=sorted((k, v) for k, v in traffic["s2s_failures"].items() if v),
        chart=chart(console.history.rates(), time.monotonic()))


def _partners(request: web.Request) -> list[str]:
    return [p.primary_domain for p in console_of(request).parts.gateway.config.partners]


async def sessions(request: web.Request) -> web.StreamResponse:
    return _sessions_page(request, None)


def _sessions_page(request: web.Request, check: dict[str, Any] | None) -> web.Response:
    console = console_of(request)
    status = console.parts.gateway.status()
    return console.render(request, "sessions.html", sessions=status["sessions"],
                          queues=status["queues"], partners=_partners(request), check=check)


async def check_connectivity(request: web.Request) -> web.StreamResponse:
    """``xmpp-gateway check connectivity DOMAIN``, run by the gateway, shown step by step."""
    console = console_of(request)
    domain = str((await request.post()).get("domain", "")).strip()
    answer = await console.parts.gateway.probe(domain)
    console.changed(request, "check connectivity", "ok" if answer.get("ok") else "failed",
                    domain=domain)
    return _sessions_page(request, {"domain": domain, **answer})


async def confirm_reload(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    return console.render(
        request, "confirm.html", title="Reload the configuration", target="/reload",
        back="/", confirm="Reload",
        explain=f"Re-read partners, policies and certificates from "
                f"{console.parts.gateway.config.source}. Established sessions stay, except "
                "those whose partner was removed or whose method is no longer permitted.")


async def reload(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    answer = await console.parts.gateway.reload()
    text = reload_words(answer)
    console.changed(request, "reload", "ok" if answer.get("ok") else "refused", detail=text)
    notice(request, "ok" if answer.get("ok") else "error", text)
    raise redirect("/")


def reload_words(answer: dict[str, Any]) -> str:
    """What ``xmpp-gateway reload`` prints for the same answer."""
    if not answer.get("ok"):
        return f"reload refused, nothing changed: {answer.get('error')}"
    return (f"reloaded: {answer['partners']} partners, {answer['closed_sessions']} sessions "
            "closed" + (f" ({answer['note']})" if answer.get("note") else ""))


async def confirm_drain(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    gateway = console.parts.gateway
    return console.render(
        request, "confirm.html", title=f"Drain node {gateway.node_id}", target="/drain",
        back="/", confirm="Drain and stop this node",
        explain="This node stops accepting S2S connections and SIP requests, hands its SIP "
                "subscriptions to another node, finishes its queues (up to "
                f"{gateway.config.cluster.drain_timeout:g} s) and stops; this console stops "
                "with it. Start the gateway again to bring the node back." + (
                    "" if console.parts.cluster is not None else
                    " This gateway is not part of a cluster: no other node takes its "
                    "partners and SIP users over meanwhile."))


async def drain(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    answer = console.parts.gateway.start_drain()
    console.changed(request, "drain", "started", timeout=answer.get("timeout"))
    return console.render(request, "drained.html", answer=answer)
