"""Log lines: human-readable by default, JSON lines with ``logging.format: json``.

A record about a message carries ``topic``, ``partition`` and ``offset`` as attributes (the
handler's ``context.logger`` binds them, with ``group``); both formats print them. JSON lines
also carry the process's group, since one process consumes for one group. :func:`configure`
replaces the root logger's handlers: the CLI calls it once at start, nothing else should.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

COORDINATES = ("group", "topic", "partition", "offset")
#: Attributes every log record has; any other attribute came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}
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


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, coordinates,
    and every field the caller passed with ``extra=`` (values JSON cannot hold as text)."""

    def __init__(self, group: str | None = None) -> None:
        super().__init__()
        self._group = group

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        data: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._group is not None:
            data["group"] = self._group
        for key in COORDINATES:
            value = getattr(record, key, None)
            if value is not None:
                data[key] = value
        for key, value in vars(record).items():  # the fields a caller passed with extra=
            if key not in _STANDARD and key not in data:
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure(level: str, format: str = "human", *, group: str | None = None) -> None:
    """Send the process's logs to stderr in ``format`` (human or json)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(group) if format == "json" else HumanFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
