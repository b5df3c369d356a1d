"""``xmpp-gateway check sip`` — is the configured SIP proxy there and answering?

Sends one ``OPTIONS`` (RFC 3261 §11) to ``sip.proxy_host:proxy_port`` over the configured
transport, from an ephemeral port (the running gateway keeps its own), through the same
transaction layer the backend uses (so UDP retransmissions and Timer F apply, bounded by
``--timeout``), and says what came back. Exit 0 on any final answer from the proxy (even
404: it is alive and speaking SIP), 1 when nothing usable came back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from typing import Any

from gateway.cli.check import add_check
from gateway.cli.common import load_or_report
from gateway.sip.message import SipRequest, SipResponse, new_branch, new_call_id, new_tag
from gateway.sip.transaction import (
    ResponseReceived,
    TransactionLayer,
    TransactionTimedOut,
)
from gateway.sip.transport import SipTransport

HINTS = {
    "udp": "is the proxy listening on UDP there, and does a firewall drop the datagrams?",
    "tcp": "is the proxy listening on TCP there?",
    "tls": "is the proxy listening on TLS there, and does its certificate verify against "
           "tls.ca_file for the name proxy_host?",
}


async def options_ping(sip: Any, tls: Any, timeout: float) -> dict[str, Any]:
    """One OPTIONS to the proxy; a result dict (never raises for network trouble)."""
    from gateway.sip.backend import _tls_contexts

    server_ssl = client_ssl = None
    if sip.transport == "tls":
        server_ssl, client_ssl = _tls_contexts(tls)
    layer = TransactionLayer(reliable=sip.transport != "udp")
    done: asyncio.Future[SipResponse | None] = asyncio.get_running_loop().create_future()

    def on_message(data: bytes, flow: Any, _peer: Any) -> None:
        from gateway.sip.message import SipParseError, parse_message

        try:
            message = parse_message(data, stream=flow[0] != "udp")
        except SipParseError:
            return
        settle(layer.receive(message, flow, time.monotonic()))

    def settle(events: list[Any]) -> None:
        for event in events:
            if isinstance(event, ResponseReceived) and not done.done():
                done.set_result(event.response)
            elif isinstance(event, TransactionTimedOut) and not done.done():
                done.set_result(None)

    transport = SipTransport(sip.transport, (sip.local_host, 0),
                             (sip.proxy_host, sip.proxy_port), on_message,
                             lambda flow: settle(layer.fail_flow(flow)),
                             server_ssl=server_ssl, client_ssl=client_ssl)
    await transport.start()
    host, port = transport.local
    request = SipRequest([], b"", "OPTIONS", f"sip:{sip.proxy_host}:{sip.proxy_port}")
    request.add("via", f"SIP/2.0/{transport.via_transport} {host}:{port};"
                f"branch={new_branch()};rport")
    request.add("max-forwards", "70")
    request.add("from", f"<sip:gateway-check@{host}>;tag={new_tag()}")
    request.add("to", f"<sip:{sip.proxy_host}:{sip.proxy_port}>")
    request.add("call-id", new_call_id(host))
    request.add("cseq", "1 OPTIONS")
    started = time.monotonic()
    try:
        layer.send_request(request, transport.proxy_flow, started)
        deadline = started + timeout
        while not done.done() and time.monotonic() < deadline:
            for flow, data in layer.outbox:
                transport.send(flow, data)
            layer.outbox.clear()
            settle(layer.handle_timers(time.monotonic()))
            await asyncio.wait([done], timeout=0.05)
        response = done.result() if done.done() else None
    finally:
        await transport.close()
    result: dict[str, Any] = {"proxy": f"{sip.proxy_host}:{sip.proxy_port}",
                              "transport": sip.transport, "ok": response is not None}
    if response is None:
        result["problem"] = (f"cannot connect: {transport.last_error}" if transport.last_error
                             else f"no answer within {timeout:g}s")
        result["hint"] = HINTS[sip.transport]
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
              "(set sip.backend: sip to talk to one)")
        return 0
    logging.getLogger("gateway.sip").setLevel(logging.ERROR)  # the result says it all
    try:
        result = asyncio.run(options_ping(config.sip, config.tls, args.timeout))
    except (OSError, ValueError) as exc:
        result = {"proxy": f"{config.sip.proxy_host}:{config.sip.proxy_port}",
                  "transport": config.sip.transport, "ok": False,
                  "problem": str(exc) or type(exc).__name__,
                  "hint": HINTS[config.sip.transport]}
    if args.json:
        print(json.dumps(result, indent=2))
    elif result["ok"]:
        server = f", server {result['server']}" if result["server"] else ""
        print(f"SIP proxy {result['proxy']} ({result['transport']}): {result['status']} "
              f"{result['reason']} in {result['rtt_ms']} ms{server}")
    else:
        print(f"SIP proxy {result['proxy']} ({result['transport']}): {result['problem']}\n"
              f"  hint: {result['hint']}")
    return 0 if result["ok"] else 1


add_check("sip", "the SIP proxy answers OPTIONS over the configured transport",
          _configure, _handler)
