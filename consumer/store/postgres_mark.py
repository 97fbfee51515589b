"""A transaction of the consumer's marks itself in a setting the server reports to libpq, so
that its end is seen after each handler without a round trip, even when the handler opened
another transaction.

libpq's transaction status alone tells a ``COMMIT`` or ``ROLLBACK`` statement from a handler
(no transaction open), but not one followed by a ``BEGIN`` of its own (a transaction open, as
ours was). PostgreSQL (14 and later) reports every change of ``default_transaction_read_only``
to libpq, including its return to the session's own value when a transaction that set it
with ``SET LOCAL`` ends. The mark flips that setting for the transaction's duration, which
changes nothing in it: the setting is the default of transactions started later, and a
savepoint keeps its transaction's mode. Nothing an operator watches changes either
(``pg_stat_activity``, the session's name). Where the server or a proxy between does not
report the setting, the status alone tells (:func:`marked`).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import pq
from psycopg.pq import TransactionStatus

SETTING = b"default_transaction_read_only"
#: The statements opening a marked transaction (one query string, or its start).
OPENING = f"BEGIN; SET LOCAL {SETTING.decode()} = on"
#: The setting's value while the mark holds.
ON = b"on"
#: libpq's transaction status as plain ints (an enum comparison costs three times more, and
#: the status is read after every handler).
IDLE = int(TransactionStatus.IDLE)
IN_TRANSACTION = int(TransactionStatus.INTRANS)
IN_ERROR = int(TransactionStatus.INERROR)


def marked(pgconn: pq.abc.PGconn) -> bool:
    """After :data:`OPENING` ran: whether the mark shows (libpq holds the flipped value), for
    :func:`ended`. A server or a proxy that does not report the setting leaves the status
    alone to tell, rather than every transaction looking ended."""
    return pgconn.parameter_status(SETTING) == ON


def begin(db: psycopg.Connection[Any], opening: str = OPENING) -> bool:
    """Open a marked transaction on ``db`` (in autocommit mode) with :data:`OPENING`, or a
    query string starting with it; whether the mark shows."""
    db.execute(opening)
    return marked(db.pgconn)


def ended(pgconn: pq.abc.PGconn, is_marked: bool) -> bool:
    """The transaction :data:`OPENING` opened (:func:`marked` said ``is_marked``) has ended (a
    handler's ``COMMIT``, ``ROLLBACK`` or ``END`` statement): libpq reports no transaction, or
    one in progress with the setting back to the session's value, as after ``COMMIT; BEGIN``.
    No round trip. A failed transaction is not ended: the server reverts the setting when the
    transaction fails, before its ROLLBACK (that state is the caller's to handle). A lost
    connection reads UNKNOWN: not ended either (its error surfaces at the next statement)."""
    status = pgconn.transaction_status
    if status == IDLE:
        return True
    return is_marked and status == IN_TRANSACTION and pgconn.parameter_status(SETTING) != ON
