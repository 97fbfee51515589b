"""Applies balance changes to an ``accounts`` table, exactly once, inside the store's transaction.

Each message is JSON ``{"event": "e-17", "account": "acc-3", "amount": -250}``; send the event
id as the ``idempotency-key`` header too, so a re-sent event is recognised whatever its offset.
Each change is also written to ``ledger_entries``, the journal an auditor (or the chaos test)
checks: one row per event, never two.

Needs a store (``store.url``): the writes go through ``context.execute`` in its transaction.
"""

from __future__ import annotations

from consumer.message import Context, Message

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS {prefix}accounts "
    "(id TEXT PRIMARY KEY, balance BIGINT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS {prefix}ledger_entries (
           event TEXT NOT NULL, account TEXT NOT NULL, amount BIGINT NOT NULL,
           topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" BIGINT NOT NULL)""",
)


def apply(message: Message, context: Context) -> None:
    record(message, context)


def record(message: Message, context: Context, *, prefix: str = "") -> None:
    """Apply the change to ``{prefix}accounts`` and journal it in ``{prefix}ledger_entries``
    (a prefix lets several groups keep their own ledgers in one database)."""
    change = message.json()
    account, amount = str(change["account"]), int(change["amount"])
    for statement in SCHEMA:
        context.execute(statement.format(prefix=prefix))
    context.execute(
        f"""INSERT INTO {prefix}accounts AS a (id, balance) VALUES (%s, %s)
           ON CONFLICT (id) DO UPDATE SET balance = a.balance + excluded.balance""",
        (account, amount),
    )
    context.execute(
        f"""INSERT INTO {prefix}ledger_entries
               (event, account, amount, topic, partition, "offset")
           VALUES (%s, %s, %s, %s, %s, %s)""",
        (str(change["event"]), account, amount, message.topic, message.partition,
         message.offset),
    )
