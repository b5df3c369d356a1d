"""``xmpp-gateway run``, ``status`` and ``reload`` (``start``/``stop``: gateway/cli/service.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from gateway.cli.common import load_or_report
from gateway.cli.main import config_parent


def register(subparsers: Any) -> None:
    run = subparsers.add_parser("run", parents=[config_parent()],
                                help="run the gateway in the foreground (SIGTERM stops it)")
    run.add_argument("--pidfile", type=Path, default=None,
                     help="write the pid here while running (start/stop use it)")
    run.set_defaults(func=_run)
    status = subparsers.add_parser("status", parents=[config_parent()],
                                   help="live S2S sessions of the running gateway")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--cluster", action="store_true",
                        help="every node of the cluster, from the shared store")
    status.set_defaults(func=_status)
    reload = subparsers.add_parser("reload", parents=[config_parent()],
                                   help="re-read partners, policies and certificates")
    reload.set_defaults(func=_reload)


def _run(args: argparse.Namespace) -> int:
    from gateway.daemon import run_gateway

    config = load_or_report(args)
    if config is None:
        return 2
    if args.pidfile is None:
        return asyncio.run(run_gateway(config))
    import signal

    from gateway.cli.service import remove_pidfile, write_pidfile

    def stop_early(signum: int, _frame: object) -> None:
        """A SIGTERM before the gateway handles its own signals: end here, tidily."""
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop_early)
    write_pidfile(args.pidfile)
    try:
        return asyncio.run(run_gateway(config))
    finally:
        remove_pidfile(args.pidfile)


def _ask(args: argparse.Namespace, command: str) -> dict[str, Any] | None:
    from gateway.net.admin import query

    config = load_or_report(args)
    if config is None:
        return None
    try:
        return query(config.admin_socket, command)
    except OSError as exc:
        print(f"xmpp-gateway: no gateway answering on {config.admin_socket} "
              f"({exc.strerror or exc}); is it running with this configuration?",
              file=sys.stderr)
        return None


def _status(args: argparse.Namespace) -> int:
    if args.cluster:
        from gateway.cli.cluster import cluster_status

        return cluster_status(args)
    answer = _ask(args, "status")
    if answer is None:
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    print(f"gateway pid {answer['pid']} serving {', '.join(answer['domains'])}; "
          f"{answer['partners']} partners; {len(answer['sessions'])} streams")
    header = ("PEER", "LOCAL", "DIR", "METHOD", "TLS", "CIPHER", "AGE", "IN", "OUT", "QUEUE")
    rows = [header]
    for s in answer["sessions"]:
        rows.append((
            s["peer_domain"] or "?", s["local_domain"] or "?", s["direction"],
            s["method"] or f"({s['phase']})", s["tls_version"] or "-", s["cipher"] or "-",
            f"{s['age_seconds']:.0f}s", str(s["stanzas_in"]), str(s["stanzas_out"]),
            str(s.get("queue", 0)),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    backend = answer.get("backend") or {}
    if backend.get("kind") == "sip":
        print(f"SIP ({backend.get('transport')}): {backend.get('watches', 0)} subscriptions to "
              f"SIP users, {backend.get('notifiers', 0)} from SIP users, "
              f"{backend.get('transactions', 0)} requests in flight; "
              f"{backend.get('sent', 0)} sent, {backend.get('received', 0)} received")
        # what was refused or lost on the way in (docs/sip.md, Security and Flow control)
        drops = backend.get("udp_drops")
        print(f"SIP refused: {backend.get('malformed', 0)} malformed, "
              f"{backend.get('untrusted', 0)} from untrusted sources, "
              f"{backend.get('unexpected_errors', 0)} failed unexpectedly; overload: "
              f"{backend.get('busy_answers', 0)} answered 503"
              + ("" if drops is None else f", {drops} datagrams dropped by the kernel at the "
                 f"SIP socket (receive buffer {backend.get('udp_receive_buffer', 0)} bytes)"))
    return 0


def _reload(args: argparse.Namespace) -> int:
    answer = _ask(args, "reload")
    if answer is None:
        return 1
    if not answer.get("ok"):
        print(f"reload refused, nothing changed: {answer.get('error')}", file=sys.stderr)
        return 1
    print(f"reloaded: {answer['partners']} partners, {answer['closed_sessions']} sessions "
          f"closed" + (f" ({answer['note']})" if answer.get("note") else ""))
    return 0
