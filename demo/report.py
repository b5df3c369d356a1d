"""How the demo's conversation is printed: pure functions from recorded steps to text.

Each step says who sent what to whom, which legs it travelled (the S2S stream between
a.example and gw.example, authenticated by the method the gateway's ``status`` reports for
that direction; with SIP, the leg through Kamailio) and how long it took.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PEER = "a.example"
OURS = "gw.example"


@dataclass(frozen=True)
class Step:
    """One thing the demo did and saw happen (or not)."""

    sender: str
    recipient: str
    what: str  # e.g. 'message "Hello"' or "presence subscription"
    s2s: str  # "inbound" (a.example → gw.example) or "outbound" (gw.example → a.example)
    sip: str = ""  # the SIP leg, when there is one
    outcome: str = ""  # what came back, e.g. "subscribed; bob is available"
    ms: float | None = None
    timing: str = ""  # what ``ms`` measured, when it is not just this step
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def session_methods(sessions: list[dict[str, Any]]) -> dict[str, str]:
    """direction → "method (TLS version)" of the gateway's authenticated sessions with
    a.example, from ``xmpp-gateway status --json``."""
    found: dict[str, str] = {}
    for session in sessions:
        if session.get("peer_domain") != PEER or not session.get("method"):
            continue
        tls = session.get("tls_version")
        found.setdefault(session["direction"],
                         f"{session['method']}" + (f" ({tls})" if tls else " (no TLS)"))
    return found


def s2s_leg(direction: str, methods: dict[str, str]) -> str:
    hops = f"{PEER} → {OURS}" if direction == "inbound" else f"{OURS} → {PEER}"
    return f"S2S {hops}, {methods.get(direction, 'authentication method unknown')}"


def format_step(number: int, step: Step, methods: dict[str, str]) -> list[str]:
    mark = "ok " if step.ok else "FAILED"
    lines = [f"  {number}. {mark:<6} {step.sender} → {step.recipient}: {step.what}"]
    legs = [s2s_leg(step.s2s, methods)]
    if step.sip:
        legs.insert(0 if step.s2s == "outbound" else 1, step.sip)
    lines.append(f"             via {' then '.join(legs)}")
    if step.outcome:
        lines.append(f"             {step.outcome}")
    if step.ms is not None:
        lines.append(f"             {step.ms:.0f} ms" + (f" {step.timing}" if step.timing else ""))
    if step.error:
        lines.append(f"             error: {step.error}")
    return lines


def format_report(title: str, setting: list[str], steps: list[Step], expected: int,
                  sessions: list[dict[str, Any]], seconds: float) -> str:
    methods = session_methods(sessions)
    lines = [title, *(f"  {line}" for line in setting), ""]
    for number, step in enumerate(steps, 1):
        lines.extend(format_step(number, step, methods))
    lines.append("")
    if sessions:
        lines.append("S2S sessions (xmpp-gateway status):")
        for s in sessions:
            hops = f"{s.get('peer_domain')} → {OURS}" if s["direction"] == "inbound" \
                else f"{OURS} → {s.get('peer_domain')}"
            lines.append(f"  {s['direction']:<8} {hops:<26} {s.get('method') or '-':<14} "
                         f"{s.get('tls_version') or 'no TLS'}")
        lines.append("")
    worked = sum(step.ok for step in steps)
    verdict = "OK" if worked == expected == len(steps) else "FAILED"
    lines.append(f"{verdict}: {worked} of {expected} steps worked in {seconds:.1f} s.")
    return "\n".join(lines)
