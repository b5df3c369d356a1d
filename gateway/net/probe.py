"""``check connectivity DOMAIN``: one real outbound negotiation, narrated step by step.

Better than guessing from logs: DNS answer, TCP connect, features offered, TLS version,
the peer certificate's verdict, the method chosen and the result, then a one-line verdict
with a hint. It runs *inside the daemon* (over the admin socket) so that a peer doing
dialback can reach our authoritative server and find keys it can verify (XEP-0220 §2.1.2);
it does not touch the sessions that carry traffic.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.auth.tls_provider import certificate_verdict
from gateway.config.model import PartnerPolicy
from gateway.dns.dane import DaneExpectation
from gateway.dns.srv import ConnectTarget
from gateway.net.connection import StreamConnection
from gateway.net.connector import Attempt, Outcome, connect
from gateway.xmpp.events import Event, PairAuthenticated, PairFailed, StreamClosed
from gateway.xmpp.outbound import OutboundStream
from gateway.xmpp.stream import StreamContext

if TYPE_CHECKING:
    from gateway.net.federation import S2SService

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


async def probe(service: S2SService, local: str, remote: str,
                timeout: float = 20.0) -> ProbeReport:
    """Negotiate ``local`` → ``remote`` on a dedicated connection and report each step
    (the connect loop of the sessions, :func:`gateway.net.connector.connect`)."""
    report = ProbeReport(remote)
    partner = service.partner_for(remote)
    if partner is None:
        report.verdict = f"{remote} is not a federation partner"
        report.hint = hint_for(report.verdict)
        return report
    report.step(f"partner policy: type={partner.partner_type} tls={partner.tls} "
                f"sasl={partner.sasl} dialback={str(partner.dialback).lower()} → permits "
                f"{partner.negotiation.methods_text}")
    dialer = _ProbeDialer(service.ctx, local, remote, partner, report)
    outcome = await connect(remote, partner, service.resolver,
                            service.config.limits.connect_timeout, dialer,
                            on_step=report.step, settle_timeout=timeout)
    if outcome.ok:
        report.ok, report.method = True, outcome.method
        report.verdict = f"OK: {local} → {remote} authenticated with {outcome.method}"
        return report
    report.verdict = outcome.reason if outcome.dns_failed else f"FAILED: {outcome.reason}"
    report.hint = hint_for(report.verdict)
    return report


class _ProbeDialer:
    """Attempts on connections of their own (no session: nothing queued rides on them),
    narrated and closed once they have said what they had to say."""

    def __init__(self, ctx: StreamContext, local: str, remote: str, partner: PartnerPolicy,
                 report: ProbeReport) -> None:
        self.ctx, self.local, self.remote, self.partner = ctx, local, remote, partner
        self.report = report
        self._attempts: dict[StreamConnection, Attempt] = {}

    def open(self, target: ConnectTarget, address: str,
             expectation: DaneExpectation | None) -> Attempt:
        loop = asyncio.get_running_loop()
        stream = OutboundStream(self.ctx, local_domain=self.local, remote_domain=self.remote,
                                partner=self.partner, now=loop.time(),
                                direct_tls=target.direct_tls, dane_expectation=expectation)
        conn = StreamConnection(stream, self._on_event, self._attempts_gone)
        attempt = Attempt(target, address, stream, conn, loop.create_future())
        self._attempts[conn] = attempt
        return attempt

    def _on_event(self, conn: StreamConnection, event: Event) -> None:
        attempt = self._attempts.get(conn)
        if attempt is None:
            return
        if isinstance(event, PairAuthenticated):
            attempt.settle(Outcome(True, method=str(event.method)))
        elif isinstance(event, PairFailed):
            attempt.settle(Outcome(False, event.condition, event.reason,
                                   retry=not attempt.stream.peer_header_received))
        elif isinstance(event, StreamClosed):
            attempt.settle(Outcome(False, "remote-server-not-found", event.reason,
                                   retry=not attempt.stream.peer_header_received))

    def _attempts_gone(self, conn: StreamConnection) -> None:
        self._attempts.pop(conn, None)

    def unreachable(self, target: ConnectTarget, address: str, reason: str) -> None:
        pass  # the loop narrates it

    def connected(self, attempt: Attempt) -> None:
        pass

    def ended(self, attempt: Attempt, outcome: Outcome) -> None:
        report, stream = self.report, attempt.stream
        _narrate(report, stream, self.remote)
        if outcome.ok:
            report.step(f"authenticated: {outcome.method}")
        else:
            notes = "; ".join(stream.failure_notes)
            report.step(f"failed: {outcome.reason}"
                        + (f" ({notes})" if notes and notes not in outcome.reason else ""))
        if not stream.closed:
            stream.close()
            attempt.conn.pump()


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
