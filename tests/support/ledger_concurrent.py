"""The ledger handler (handlers/ledger.py) for routes with concurrency: the same balance change
and journal entry, written through ``context.execute`` inside the message's own transaction,
after a random pause of up to 3 ms (a database round trip elsewhere), noting the PostgreSQL
session it ran on in ``handler_sessions``: more than one session shows transactions ran side by
side. The tables must exist before the consumers start (:data:`SCHEMA`)."""

from __future__ import annotations

import random
import time

from consumer.message import Context, Message
from handlers.ledger import SCHEMA as LEDGER_SCHEMA

SCHEMA = (*(statement.format(prefix="") for statement in LEDGER_SCHEMA),
          "CREATE TABLE IF NOT EXISTS handler_sessions (pid integer PRIMARY KEY)")


def apply(message: Message, context: Context) -> None:
    change = message.json()
    account, amount = str(change["account"]), int(change["amount"])
    time.sleep(random.random() * 0.003)
    context.execute(
        """INSERT INTO accounts AS a (id, balance) VALUES (%s, %s)
           ON CONFLICT (id) DO UPDATE SET balance = a.balance + excluded.balance""",
        (account, amount))
    context.execute(
        """INSERT INTO ledger_entries (event, account, amount, topic, partition, "offset")
           VALUES (%s, %s, %s, %s, %s, %s)""",
        (str(change["event"]), account, amount, message.topic, message.partition,
         message.offset))
    context.execute("INSERT INTO handler_sessions VALUES (pg_backend_pid()) "
                    "ON CONFLICT DO NOTHING")
