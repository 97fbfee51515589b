"""handlers.ledger on MariaDB: the same effects (a balance per account, one journal row per
event) in MariaDB's SQL, ``ON DUPLICATE KEY UPDATE`` for the upsert.

No DDL here: on MariaDB every CREATE (even ``IF NOT EXISTS`` of a table that exists) commits
the open transaction, and with it the batch's claimed keys ahead of their effects. The test
creates the tables first (:func:`create_tables`).
"""

from __future__ import annotations

import os

from consumer.message import Context, Message
from tests.support.stores import StoreUnderTest

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS accounts (id varchar(64) PRIMARY KEY, balance bigint NOT NULL)",
    """CREATE TABLE IF NOT EXISTS ledger_entries (
           event varchar(64) NOT NULL, account varchar(64) NOT NULL, amount bigint NOT NULL,
           topic varchar(255) NOT NULL, "partition" integer NOT NULL, "offset" bigint NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS handler_sessions (id bigint PRIMARY KEY, kind varchar(16))",
)


def create_tables(store: StoreUnderTest) -> None:
    for statement in SCHEMA:
        store.execute(statement)


def apply(message: Message, context: Context) -> None:
    change = message.json()
    account, amount = str(change["account"]), int(change["amount"])
    context.execute("INSERT INTO accounts (id, balance) VALUES (%s, %s) "
                    "ON DUPLICATE KEY UPDATE balance = balance + VALUES(balance)",
                    (account, amount))
    context.execute(
        'INSERT INTO ledger_entries (event, account, amount, topic, "partition", "offset") '
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (str(change["event"]), account, amount, message.topic, message.partition,
         message.offset))


def apply_noting_session(message: Message, context: Context) -> None:
    """:func:`apply`, noting the MariaDB session it ran on in ``handler_sessions``: more than
    one shows transactions ran side by side, and ``kind`` which handler ran there."""
    apply(message, context)
    context.execute("INSERT IGNORE INTO handler_sessions VALUES (CONNECTION_ID(), 'def')")


async def apply_async_noting_session(message: Message, context: Context) -> None:
    """:func:`apply_noting_session` as an ``async def`` handler, awaiting its statements."""
    change = message.json()
    account, amount = str(change["account"]), int(change["amount"])
    await context.execute("INSERT INTO accounts (id, balance) VALUES (%s, %s) "
                          "ON DUPLICATE KEY UPDATE balance = balance + VALUES(balance)",
                          (account, amount))
    await context.execute(
        'INSERT INTO ledger_entries (event, account, amount, topic, "partition", "offset") '
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (str(change["event"]), account, amount, message.topic, message.partition,
         message.offset))
    await context.execute(
        "INSERT IGNORE INTO handler_sessions VALUES (CONNECTION_ID(), 'async def')")


class Rejected(RuntimeError):
    """A change to the rejected account while the flag file exists."""


def ledger_while_flagged(message: Message, context: Context) -> None:
    """:func:`apply`, except that changes to ``$LEDGER_REJECT_ACCOUNT`` raise while the file
    ``$LEDGER_REJECT_FLAG`` exists: a bug fixed in the running process by deleting it."""
    account = os.environ["LEDGER_REJECT_ACCOUNT"]
    if message.json()["account"] == account and os.path.exists(
            os.environ["LEDGER_REJECT_FLAG"]):
        raise Rejected(f"account {account} is rejected")
    apply(message, context)
