"""``xmpp-gateway check sip`` — is the configured SIP proxy there and answering?

Sends one ``OPTIONS`` (RFC 3261 §11) to ``sip.proxy_host:proxy_port`` over the configured
transport, from an ephemeral port (the running gateway keeps its own), with the SIP
backend itself (so UDP retransmissions and TLS verification are exactly the gateway's,
bounded by ``--timeout``), and says what came back. Exit 0 on any final answer from the proxy (even
404: it is alive and speaking SIP), 1 when nothing usable came back.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element

from gateway.cli.check import add_check
from gateway.cli.common import load_or_report
from gateway.contracts import OnDecided
from gateway.sip.backend import SipBackend

HINTS = {
    "udp": "is the proxy listening on UDP there, and does a firewall drop the datagrams?",
    "tcp": "is the proxy listening on TCP there?",
    "tls": "is the proxy listening on TLS there, and does its certificate verify against "
           "tls.ca_file for the name proxy_host?",
}


class _NoRouting:
    """Stands where the router is during a check: nothing is routed."""

    def submit_local(self, stanza: Element, on_decided: OnDecided = None) -> None:
        if on_decided is not None:
            on_decided()

    async def from_local(self, stanza: Element) -> None:
        pass

    def xmpp_saturated(self, domain: str) -> bool:
        return False


def shipped_kamailio_config() -> str:
    """Where the Kamailio configuration made for the gateway is: the absolute path in a
    checkout, the path inside the repository otherwise (an installed wheel has no deploy/)."""
    in_checkout = Path(__file__).resolve().parents[2] / "deploy" / "kamailio" / "kamailio.cfg"
    return str(in_checkout) if in_checkout.is_file() else "deploy/kamailio/kamailio.cfg"


def proxy_advice() -> str:
    return (f"a Kamailio configuration made for the gateway (registrar, presence, routing "
            f"to the gateway, digest authentication): {shipped_kamailio_config()} (its "
            "header says how to use it)")


async def options_ping(sip: Any, tls: Any, domains: tuple[str, ...],
                       timeout: float) -> dict[str, Any]:
    """One OPTIONS to the proxy; a result dict (never raises for network trouble)."""
    backend = SipBackend.from_settings(dataclasses.replace(sip, local_port=0), domains, tls)
    await backend.start(_NoRouting())
    started = time.monotonic()
    try:
        response = await backend.options(timeout)
    finally:
        await backend.stop(grace=0)
    result: dict[str, Any] = {"proxy": f"{sip.proxy_host}:{sip.proxy_port}",
                              "transport": sip.transport, "ok": response is not None}
    if response is None:
        last_error = backend.transport.last_error
        result["problem"] = (f"cannot connect: {last_error}" if last_error
                             else f"no answer within {timeout:g}s")
        result["hint"] = HINTS[sip.transport]
        result["configuration"] = shipped_kamailio_config()
    else:
        result.update(status=response.status, reason=response.reason,
                      rtt_ms=round((time.monotonic() - started) * 1000, 2),
                      server=response.get("server") or response.get("user-agent") or "",
                      allow=response.get("allow") or "")
    return result


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    parser.add_argument("--json", action="store_true", help="machine-readable result")


def _handler(args: argparse.Namespace) -> int:
    config = load_or_report(args)
    if config is None:
        return 2
    if config.sip.backend != "sip":
        print(f"sip.backend is {config.sip.backend!r}: no SIP proxy is used "
              "(set sip.backend: sip to talk to one)\n"
              f"  {proxy_advice()}")
        return 0
    logging.getLogger("gateway.sip").setLevel(logging.ERROR)  # the result says it all
    try:
        result = asyncio.run(options_ping(config.sip, config.tls, config.domains,
                                          args.timeout))
    except (OSError, ValueError) as exc:
        result = {"proxy": f"{config.sip.proxy_host}:{config.sip.proxy_port}",
                  "transport": config.sip.transport, "ok": False,
                  "problem": str(exc) or type(exc).__name__,
                  "hint": HINTS[config.sip.transport],
                  "configuration": shipped_kamailio_config()}
    if args.json:
        print(json.dumps(result, indent=2))
    elif result["ok"]:
        server = f", server {result['server']}" if result["server"] else ""
        print(f"SIP proxy {result['proxy']} ({result['transport']}): {result['status']} "
              f"{result['reason']} in {result['rtt_ms']} ms{server}")
    else:
        print(f"SIP proxy {result['proxy']} ({result['transport']}): {result['problem']}\n"
              f"  hint: {result['hint']}\n"
              f"  {proxy_advice()}")
    return 0 if result["ok"] else 1


add_check("sip", "the SIP proxy answers OPTIONS over the configured transport",
          _configure, _handler)
