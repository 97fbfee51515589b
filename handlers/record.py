"""Appends ``topic partition offset value`` of each handled message to ``$RECORD_FILE``.

Each line is written with one unbuffered ``write``, so a SIGKILL loses nothing already handled;
the demo and the crash tests count re-reads with it. ``$RECORD_SLEEP_SECONDS`` makes each
message take that long, so a crash can land mid-stream.
"""

from __future__ import annotations

import os
import time

from consumer.message import Message

_fd: int | None = None
_sleep = float(os.environ.get("RECORD_SLEEP_SECONDS", "0"))


def _file() -> int:
    global _fd
    if _fd is None:
        path = os.environ.get("RECORD_FILE")
        if not path:
            raise RuntimeError("handlers.record needs RECORD_FILE set to a file path")
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return _fd


def handle(message: Message) -> None:
    """A handler of the message alone: it needs no context, so none is built for it."""
    if _sleep:
        time.sleep(_sleep)
    line = f"{message.topic} {message.partition} {message.offset} {message.text()}\n"
    os.write(_file(), line.encode())


def fail_on(message: Message) -> None:
    """Like ``handle``, but raises on a value equal to ``$RECORD_FAIL_ON``."""
    if message.text() == os.environ.get("RECORD_FAIL_ON"):
        raise ValueError(f"refusing value {message.text()!r}")
    handle(message)
