"""Structured logging: one line per event, ``key=value`` text or JSON.

Why: an admin must be able to tell from a single line why a partner was refused
(DEVELOPERS.md), and grep/jq must work on it. Every S2S line carries ``peer``,
``direction``, ``stream`` and ``method`` when they are known; refusals carry ``reason``.
Use :func:`log_event` rather than formatting fields into the message.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

FIELDS_ATTR = "gw_fields"


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """Log ``event`` (a short, stable identifier such as ``s2s.refused``) with fields."""
    if logger.isEnabledFor(level):
        clean = {k: v for k, v in fields.items() if v is not None and v != ""}
        logger.log(level, event, extra={FIELDS_ATTR: clean})


def _quote(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\\\n\t'):
        return json.dumps(text, ensure_ascii=False)
    return text


class KeyValueFormatter(logging.Formatter):
    """``2026-11-24T10:00:00.123Z INFO s2s.authenticated peer=a.example method="TLS Dialback"``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"{stamp}.{int(record.msecs):03d}Z", record.levelname, record.getMessage()]
        fields = getattr(record, FIELDS_ATTR, None) or {}
        parts.extend(f"{key}={_quote(value)}" for key, value in fields.items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
        }
        data.update(getattr(record, FIELDS_ATTR, None) or {})
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def configure_logging(level: str = "info", fmt: str = "text", file: Path | None = None) -> None:
    """Set up the root ``gateway`` logger from ``logging:`` settings."""
    handler: logging.Handler
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger("gateway")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
