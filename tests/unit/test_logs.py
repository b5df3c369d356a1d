"""Structured log lines: key=value text and JSON."""

from __future__ import annotations

import json
import logging

from gateway.logs import JsonFormatter, KeyValueFormatter, log_event


def record(caplog, **fields) -> logging.LogRecord:
    logger = logging.getLogger("gateway.test")
    with caplog.at_level(logging.INFO, logger="gateway.test"):
        log_event(logger, logging.WARNING, "s2s.refused", **fields)
    return caplog.records[-1]


def test_key_value_line(caplog) -> None:
    line = KeyValueFormatter().format(record(
        caplog, peer="a.example", direction="inbound", stream="s1", method="TLS Dialback",
        reason='partner "x" refused', empty=""))
    assert line.endswith('WARNING s2s.refused peer=a.example direction=inbound stream=s1 '
                         'method="TLS Dialback" reason="partner \\"x\\" refused"')


def test_json_line(caplog) -> None:
    data = json.loads(JsonFormatter().format(record(caplog, peer="a.example", method=None)))
    assert data["event"] == "s2s.refused" and data["peer"] == "a.example"
    assert data["level"] == "warning" and "method" not in data
