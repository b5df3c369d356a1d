"""``check connectivity DOMAIN``: one real outbound negotiation, narrated step by step.

Better than guessing from logs: DNS answer, TCP connect, features offered, TLS version,
the peer certificate's verdict, the method chosen and the result, then a one-line verdict
with a hint. It runs *inside the daemon* (over the admin socket) so that a peer doing
dialback can reach our authoritative server and find keys it can verify (XEP-0220 §2.1.2);
it does not touch the sessions that carry traffic.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.auth.tls_provider import certificate_verdict
from gateway.net.connection import StreamConnection
from gateway.xmpp.events import Event, PairAuthenticated, PairFailed, StreamClosed
from gateway.xmpp.outbound import OutboundStream

# (substring of a failure reason, hint) — first match wins.
HINTS: tuple[tuple[str, str], ...] = (
    ("DNS", "publish _xmpp-server._tcp SRV (or A) records for the domain, or fix dns.nameservers"),
    ("Connection refused", "nothing listens there: check the partner's SRV target and port"),
    ("timed out", "a firewall drops the connection, or the host is down"),
    ("does not offer STARTTLS", "the partner has TLS off: ask them to enable it, or set "
     "tls: optional for this partner if your policy allows"),
    ("requires TLS but", "the partner requires TLS: set tls to optional or required and "
     "configure a certificate"),
    ("issuer not trusted", "add the partner's CA to tls.ca_file, or allow dialback for it"),
    ("certificate has expired", "the partner must renew its certificate"),
    ("does not match", "the partner's certificate does not name its domain (RFC 6125)"),
    ("did not offer SASL EXTERNAL", "the partner does not trust our certificate: give them "
     "our CA, or allow dialback (sasl: optional, dialback: true)"),
    ("refused SASL EXTERNAL", "the partner does not accept our certificate for SASL: check "
     "that it names our domain and is trusted there"),
    ("dialback", "check that the partner can reach our port 5269 (it connects back to "
     "verify the key), and that dialback.secret is the same on all our nodes"),
    ("not permitted", "the partner policy (tls/sasl/dialback) excludes what the peer offers"),
    ("not a federation partner", "add the domain as a partner: xmpp-gateway partner add"),
)


def hint_for(reason: str) -> str:
    for needle, hint in HINTS:
        if needle.lower() in reason.lower():
            return hint
    return "see the gateway log lines for this peer (event s2s.refused / s2s.closed)"


@dataclass
class ProbeReport:
    domain: str
    steps: list[str] = field(default_factory=list)
    ok: bool = False
    method: str | None = None
    verdict: str = ""
    hint: str = ""

    def step(self, text: str) -> None:
        self.steps.append(text)

    def as_dict(self) -> dict[str, Any]:
        return {"domain": self.domain, "steps": self.steps, "ok": self.ok,
                "method": self.method, "verdict": self.verdict, "hint": self.hint}


async def probe(service: Any, local: str, remote: str, timeout: float = 20.0) -> ProbeReport:
    """Negotiate ``local`` → ``remote`` on a dedicated connection and report each step."""
    report = ProbeReport(remote)
    partner = service.partner_for(remote)
    if partner is None:
        report.verdict = f"{remote} is not a federation partner"
        report.hint = hint_for(report.verdict)
        return report
    report.step(f"partner policy: type={partner.partner_type} tls={partner.tls} "
                f"sasl={partner.sasl} dialback={str(partner.dialback).lower()} → permits "
                f"{partner.negotiation.methods_text}")
    try:
        targets = await service.resolver.resolve_targets(remote)
    except Exception as exc:
        report.verdict = f"DNS: {exc}"
        report.hint = hint_for(report.verdict)
        return report
    report.step("DNS: " + ", ".join(
        f"{t.host}:{t.port}{' (direct TLS)' if t.direct_tls else ''} [{t.source}]"
        for t in targets))
    loop = asyncio.get_running_loop()
    failures: list[str] = []
    for target in targets:
        try:
            addresses = await service._addresses(target.host)
        except Exception as exc:
            failures.append(f"{target.host}: {exc}")
            report.step(f"address of {target.host}: {exc}")
            continue
        for address in addresses:
            outcome: asyncio.Future[tuple[bool, str]] = loop.create_future()
            stream = OutboundStream(service.ctx, local_domain=local, remote_domain=remote,
                                    partner=partner, now=loop.time(),
                                    direct_tls=target.direct_tls)

            def on_event(conn: StreamConnection, event: Event,
                         outcome: asyncio.Future[tuple[bool, str]] = outcome) -> None:
                if isinstance(event, PairAuthenticated) and not outcome.done():
                    outcome.set_result((True, str(event.method)))
                elif isinstance(event, PairFailed | StreamClosed) and not outcome.done():
                    outcome.set_result((False, event.reason))
                else:
                    service._on_event(conn, event)  # dialback verify answers etc.

            conn = StreamConnection(stream, on_event, lambda _c: None)
            started = time.monotonic()
            where = f"{address}:{target.port}"
            try:
                await asyncio.wait_for(
                    loop.create_connection(lambda c=conn: c, address, target.port),
                    service.config.limits.connect_timeout)
            except (OSError, TimeoutError) as exc:
                why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
                report.step(f"TCP connect {where}: {why}")
                failures.append(f"{where}: {why}")
                continue
            report.step(f"TCP connect {where}: ok in {1000 * (time.monotonic() - started):.0f} ms")
            try:
                ok, detail = await asyncio.wait_for(asyncio.shield(outcome), timeout)
            except TimeoutError:
                ok, detail = False, f"no result within {timeout:g}s"
            _narrate(report, stream, remote)
            if ok:
                report.ok, report.method = True, detail
                report.step(f"authenticated: {detail}")
                report.verdict = f"OK: {local} → {remote} authenticated with {detail}"
                stream.close()
                conn.pump()
                return report
            notes = "; ".join(stream._failure_notes) if stream._failure_notes else ""
            report.step(f"failed: {detail}" + (f" ({notes})" if notes and notes not in detail
                                                 else ""))
            failures.append(detail)
            if not stream.closed:
                stream.close()
                conn.pump()
            if stream.peer_header_received:
                break  # a policy failure: another target would fail the same way
        else:
            continue
        break
    report.verdict = "FAILED: " + ("; ".join(failures) if failures else "no target reachable")
    report.hint = hint_for(report.verdict)
    return report


def _narrate(report: ProbeReport, stream: OutboundStream, remote: str) -> None:
    if stream.peer_header_received:
        report.step(f"stream opened, id {stream.stream_id}")
    # Features come once per stream (re)start (RFC 6120 §4.3.3): at the start, after TLS
    # (not with XEP-0368 direct TLS, encrypted from the first byte), after SASL.
    stages = (["over TLS", "after SASL"] if stream.direct_tls
              else ["", "after TLS", "after SASL"])
    for index, offered in enumerate(stream.offered_features):
        stage = stages[min(index, len(stages) - 1)]
        parts = []
        if offered.starttls:
            parts.append("STARTTLS" + (" (required)" if offered.starttls_required else ""))
        if offered.sasl_mechanisms:
            parts.append("SASL " + " ".join(offered.sasl_mechanisms))
        if offered.dialback_errors:
            parts.append("dialback")
        report.step(f"features offered{' ' + stage if stage else ''}: "
                    + (", ".join(parts) or "none"))
    if stream.tls_active:
        report.step(f"TLS: {stream.tls_version} {stream.tls_cipher}")
        peer = stream.peer_certificate
        if peer is not None:
            verdict = certificate_verdict(peer, remote)
            report.step(f"certificate: {'valid' if verdict.ok else 'NOT valid'} — "
                        f"{verdict.reason}")
