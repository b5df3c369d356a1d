"""The demo's report (demo/report.py): the verdict counts only steps that worked, and each
leg names the authentication method the gateway reported for that direction."""

from __future__ import annotations

from demo.report import Step, format_report, session_methods

SESSIONS = [
    {"peer_domain": "a.example", "direction": "inbound", "method": "SASL over TLS",
     "tls_version": "TLSv1.3"},
    {"peer_domain": "a.example", "direction": "outbound", "method": "TCP Dialback",
     "tls_version": None},
]


def test_methods_per_direction_from_status() -> None:
    assert session_methods(SESSIONS) == {"inbound": "SASL over TLS (TLSv1.3)",
                                         "outbound": "TCP Dialback (no TLS)"}


def test_every_step_worked() -> None:
    steps = [Step("alice@a.example", "bob@gw.example", 'message "hi"', "inbound",
                  sip="SIP over UDP through Kamailio (MESSAGE)", outcome="bob got it", ms=12.4),
             Step("bob@gw.example", "alice@a.example", 'message "hi"', "outbound", ms=30)]
    text = format_report("title", ["setting"], steps, 2, SESSIONS, 1.25)
    assert "  1. ok     alice@a.example → bob@gw.example: message \"hi\"" in text
    assert ("via S2S a.example → gw.example, SASL over TLS (TLSv1.3) then SIP over UDP "
            "through Kamailio (MESSAGE)") in text
    assert "via S2S gw.example → a.example, TCP Dialback (no TLS)" in text
    assert "             12 ms\n" in text
    assert text.endswith("OK: 2 of 2 steps worked in 1.2 s.")


def test_a_failed_or_missing_step_is_a_failure() -> None:
    failed = [Step("alice@a.example", "echo@gw.example", "message", "inbound",
                   error="nothing within 10 s")]
    text = format_report("title", [], failed, 3, [], 10.0)
    assert "  1. FAILED alice@a.example → echo@gw.example" in text
    assert "authentication method unknown" in text and "error: nothing within 10 s" in text
    assert text.endswith("FAILED: 0 of 3 steps worked in 10.0 s.")
    fewer = [Step("a", "b", "message", "inbound", ms=1)]
    assert format_report("t", [], fewer, 3, [], 1).endswith("FAILED: 1 of 3 steps worked in 1.0 s.")
