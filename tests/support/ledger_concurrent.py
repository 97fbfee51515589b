"""The ledger handler (handlers/ledger.py) for routes with concurrency: the same balance change
and journal entry, written through ``context.execute`` inside the message's own transaction,
after a random pause of up to 3 ms (a database round trip elsewhere), noting the PostgreSQL
session it ran on, and the handler's kind, in ``handler_sessions``: more than one session shows
transactions ran side by side. The tables must exist before the consumers start
(:data:`SCHEMA`). :func:`apply_async` is the same as an ``async def`` handler, awaiting its
pause and its statements."""

from __future__ import annotations

import asyncio
import random
import time

from consumer.message import Context, Message
from handlers.ledger import SCHEMA as LEDGER_SCHEMA

SCHEMA = (*(statement.format(prefix="") for statement in LEDGER_SCHEMA),
          "CREATE TABLE IF NOT EXISTS handler_sessions (pid integer PRIMARY KEY, kind text)")


BALANCE = """INSERT INTO accounts AS a (id, balance) VALUES (%s, %s)
             ON CONFLICT (id) DO UPDATE SET balance = a.balance + excluded.balance"""
ENTRY = """INSERT INTO ledger_entries (event, account, amount, topic, partition, "offset")
           VALUES (%s, %s, %s, %s, %s, %s)"""
SESSION = "INSERT INTO handler_sessions VALUES (pg_backend_pid(), %s) ON CONFLICT DO NOTHING"


def _rows(message: Message) -> tuple[tuple[str, int], tuple[str, str, int, str, int, int]]:
    change = message.json()
    account, amount = str(change["account"]), int(change["amount"])
    return (account, amount), (str(change["event"]), account, amount, message.topic,
                               message.partition, message.offset)


def apply(message: Message, context: Context) -> None:
    balance, entry = _rows(message)
    time.sleep(random.random() * 0.003)
    context.execute(BALANCE, balance)
    context.execute(ENTRY, entry)
    context.execute(SESSION, ("def",))


async def apply_async(message: Message, context: Context) -> None:
    balance, entry = _rows(message)
    await asyncio.sleep(random.random() * 0.003)
    await context.execute(BALANCE, balance)
    await context.execute(ENTRY, entry)
    await context.execute(SESSION, ("async def",))


def commit_at_three(message: Message, context: Context) -> None:
    """Records its offset; at offset 3 also commits the message's transaction itself, as a
    handler must never do (the connection refuses, and the consumer stops)."""
    context.execute("INSERT INTO handled (\"offset\") VALUES (%s)", (message.offset,))
    if message.offset == 3:
        context.db.commit()


def commit_statement_at_three(message: Message, context: Context) -> None:
    """Records its offset; at offset 3 first sends a ``COMMIT`` statement, as a handler must
    never do (found when it returns: the consumer stops)."""
    if message.offset == 3:
        context.execute("COMMIT")
    context.execute("INSERT INTO handled (\"offset\") VALUES (%s)", (message.offset,))


def commit_and_begin_at_three(message: Message, context: Context) -> None:
    """Records its offset; at offset 3 first sends ``COMMIT`` and then ``BEGIN``, opening a
    transaction of its own (libpq reports one open, as the message's was)."""
    if message.offset == 3:
        context.execute("COMMIT")
        context.execute("BEGIN")
    context.execute("INSERT INTO handled (\"offset\") VALUES (%s)", (message.offset,))


def record_offset(message: Message, context: Context) -> None:
    """Records its offset: the handler above, fixed."""
    context.execute("INSERT INTO handled (\"offset\") VALUES (%s)", (message.offset,))
