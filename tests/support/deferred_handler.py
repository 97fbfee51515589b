"""A handler whose table checks a foreign key only at COMMIT (``DEFERRABLE INITIALLY
DEFERRED``): the message whose value names no parent violates it, and only the batch's COMMIT
says so. The tables must exist before the consumer starts (:data:`SCHEMA`)."""

from __future__ import annotations

from consumer.message import Context, Message

SCHEMA = (
    "CREATE TABLE parents (id integer PRIMARY KEY)",
    "INSERT INTO parents VALUES (1)",
    """CREATE TABLE children (
           "offset" bigint PRIMARY KEY,
           parent integer NOT NULL REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED)""",
)


def apply(message: Message, context: Context) -> None:
    """One child row per message, its parent the value's number."""
    context.execute('INSERT INTO children ("offset", parent) VALUES (%s, %s)',
                    (message.offset, int(message.text())))
