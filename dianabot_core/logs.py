"""Logging: one JSON object per line, with the event id and trace id of the work in progress.

Every line is passed through ``redact_secrets`` last, so a bot token quoted by any library's
message or traceback never reaches the log.

The pipeline binds ``event_id``/``event_type``/``handler`` into a context variable for the
duration of a handler, so every line a handler logs carries them without passing them around.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

from dianabot_core.redaction import redact_secrets

_log_context: ContextVar[dict[str, Any] | None] = ContextVar("dianabot_log_context", default=None)

# Attributes every LogRecord has; anything else was passed through `extra=` and is kept.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


@contextlib.contextmanager
def bind_log_context(**fields: Any) -> Iterator[None]:
    """Add fields to every log line emitted inside the block (same task and its children)."""
    token = _log_context.set({**(_log_context.get() or {}), **fields})
    try:
        yield
    finally:
        _log_context.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(_log_context.get() or {})
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            line["trace_id"] = format(span_context.trace_id, "032x")
            line["span_id"] = format(span_context.span_id, "016x")
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return redact_secrets(json.dumps(line, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        context = _log_context.get()
        return redact_secrets(f"{base} {context}" if context else base)


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_lines else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka logs every reconnect attempt at ERROR; our own lines say what matters.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
