"""Log lines: human-readable by default, JSON lines with ``logging.format: json``.

A record about a message carries ``topic``, ``partition`` and ``offset`` as attributes (the
handler's ``context.logger`` binds them, with ``group``); both formats print them. JSON lines
also carry the process's group, since one process consumes for one group, and the active
span's ``trace_id`` / ``span_id`` with ``tracing.enabled``. :func:`configure`
replaces the root logger's handlers: the CLI calls it once at start, nothing else should.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter as BaseJsonFormatter

COORDINATES = ("group", "topic", "partition", "offset")
HUMAN = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class HumanFormatter(logging.Formatter):
    """The classic line, with the message's coordinates appended when the record has them."""

    def __init__(self) -> None:
        super().__init__(HUMAN)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if getattr(record, "topic", None) is None:
            return line
        coordinates = " ".join(f"{key}={getattr(record, key)}" for key in COORDINATES
                               if getattr(record, key, None) is not None)
        head, newline, rest = line.partition("\n")  # keep a traceback below the line
        return f"{head} [{coordinates}]{newline}{rest}"


class JsonFormatter(BaseJsonFormatter):
    """One JSON object per line (python-json-logger): time (UTC, ISO 8601), level, logger,
    message, the process's group, the message's coordinates, every field the caller passed with
    ``extra=`` (a value JSON cannot hold as its text), ``exception`` with its traceback, and
    ``trace_id`` / ``span_id`` (hex) while a span is active (a handler call with tracing on)."""

    def __init__(self, group: str | None = None) -> None:
        super().__init__(["levelname", "name", "message"],
                         rename_fields={"levelname": "level", "name": "logger",
                                        "exc_info": "exception"})
        self._group = group

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        log_data["time"] = f"{stamp}.{int(record.msecs):03d}Z"
        super().add_fields(log_data, record, message_dict)
        if self._group is not None:
            log_data["group"] = self._group  # one process consumes for one group
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            log_data["trace_id"] = format(span.trace_id, "032x")
            log_data["span_id"] = format(span.span_id, "016x")


def configure(level: str, format: str = "human", *, group: str | None = None) -> None:
    """Send the process's logs to stderr in ``format`` (human or json)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(group) if format == "json" else HumanFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
