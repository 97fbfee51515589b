"""A transactional handler that waits for a row another connection may hold locked.

Each message bumps ``contended.hits`` of row 1 and inserts its value into ``applied``, inside
the store's transaction, with ``lock_timeout`` at ``$LOCK_TIMEOUT`` (default 200ms): while a
test holds the row locked, the handler raises PostgreSQL's LockNotAvailable. Each attempt is
appended to ``$RECORD_FILE`` (one unbuffered write) before it touches the row.
"""

from __future__ import annotations

import os

from consumer.message import Context, Message

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS contended (id INTEGER PRIMARY KEY, hits INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS applied (value TEXT NOT NULL)",
)


def apply(message: Message, context: Context) -> None:
    fd = os.open(os.environ["RECORD_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"attempt {message.partition} {message.offset}\n".encode())
    finally:
        os.close(fd)
    timeout = os.environ.get("LOCK_TIMEOUT", "200ms")
    context.execute(f"SET LOCAL lock_timeout = '{timeout}'")
    context.execute("UPDATE contended SET hits = hits + 1 WHERE id = 1")
    context.execute("INSERT INTO applied (value) VALUES (%s)", (message.text(),))
