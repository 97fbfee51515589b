"""PostgreSQL transactions of one message each, on pooled connections (psycopg_pool), for
handlers that run concurrently.

Each :meth:`PostgresTransactions.apply` borrows a connection, and in one transaction on it
claims the message's dedup key (``INSERT … ON CONFLICT DO NOTHING RETURNING``), runs the
handler's work with ``context.db`` bound to that connection, and commits. Only the caller's
thread uses the connection until it goes back to the pool; the pool rolls back whatever a
connection still holds when it comes back and replaces a broken one. Every connection keeps
the store's session limits (lock wait, idle open transaction, TCP keepalives), so a frozen
peer costs a claim at most ``lock_timeout`` per attempt. Thread-safe.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from consumer.errors import StoreError, StoreSchemaError, StoreUnavailable
from consumer.message import StoreLike
from consumer.store.base import Claim, PostgresSession
from consumer.store.postgres import is_transient

log = logging.getLogger("consumer.store")

CLAIM_ONE = """INSERT INTO consumer_processed_keys
                   (group_id, key, topic, partition, "offset", processed_at)
               VALUES (%s, %s, %s, %s, %s, %s)
               ON CONFLICT DO NOTHING
               RETURNING 1"""


class Transaction:
    """``context.db`` and ``context.execute`` inside one message's transaction."""

    __slots__ = ("connection",)

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self.connection = connection

    def execute(self, sql: str, params: Any = ()) -> psycopg.Cursor[Any]:
        return self.connection.execute(sql, tuple(params))


class PostgresTransactions:
    """A pool of ``size`` connections; one message's transaction on each at a time."""

    def __init__(self, dsn: str, *, size: int, where: str, session: PostgresSession,
                 session_parameters: dict[str, Any], connect_timeout: float = 10.0) -> None:
        self._where = where
        self._session = session
        self._pool = ConnectionPool(
            dsn, min_size=size, max_size=size, open=False, name="consumer-store",
            # Waiting for a free connection: the workers never outnumber the connections,
            # so only an unreachable server makes a message wait this long.
            timeout=connect_timeout,
            kwargs={**session_parameters, "autocommit": False,
                    "connect_timeout": max(1, int(connect_timeout))},
        )

    def open(self) -> None:
        self._pool.open(wait=False)

    def close(self) -> None:
        self._pool.close()

    def apply(self, group: str, claim: Claim, now: float,
              work: Callable[[StoreLike], None]) -> bool:
        """See :class:`consumer.store.base.MessageTransactions`: 1. claim the key 2. run the
        work 3. commit; the connection goes back to the pool whatever happened."""
        try:
            conn = self._pool.getconn()
        except PoolTimeout as error:
            raise StoreUnavailable(
                f"no connection to PostgreSQL store {self._where} within "
                f"{self._pool.timeout:g} s (the server is unreachable, or refuses new "
                f"connections): {error}") from error
        try:
            # 1. claim the key: waits for a session holding it uncommitted, then sees its
            # outcome (committed: a duplicate; rolled back: ours)
            with self._errors():
                new = conn.execute(CLAIM_ONE, (group, claim.key, claim.topic, claim.partition,
                                               claim.offset, now)).fetchone() is not None
            if not new:
                _rollback_quietly(conn)
                return False
            # 2. run the work inside the same transaction
            try:
                work(Transaction(conn))
            except BaseException as error:
                _rollback_quietly(conn)
                if _transient(error):
                    raise StoreUnavailable(
                        f"the handler of {claim.topic}[{claim.partition}]@{claim.offset} hit "
                        f"a transient database error ({type(error).__name__}: "
                        f"{str(error).strip()}) on PostgreSQL store {self._where}; it rolled "
                        "back and is retried, it is not the message's failure") from error
                raise
            # 3. commit the effects with the key
            with self._errors():
                conn.commit()
            return True
        finally:
            self._pool.putconn(conn)  # rolls back what is left open; replaces a broken one

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except psycopg.errors.UndefinedTable as error:
            raise StoreSchemaError(
                f"PostgreSQL store {self._where}: {error}; run `consumer store init`"
            ) from error
        except psycopg.Error as error:
            if is_transient(error) or isinstance(
                    error, psycopg.errors.IdleInTransactionSessionTimeout):
                lock = ""
                if isinstance(error, psycopg.errors.LockNotAvailable):
                    lock = (f"waited store.postgres_lock_timeout_seconds "
                            f"({self._session.lock_timeout:g} s) for a key another session "
                            "holds uncommitted (a previous owner frozen in its transaction is "
                            "ended after store.postgres_idle_in_transaction_timeout_seconds); ")
                raise StoreUnavailable(
                    f"PostgreSQL store {self._where}: {lock}the message's transaction rolled "
                    f"back and is retried: {type(error).__name__}: {str(error).strip()}"
                ) from error
            raise StoreError(
                f"PostgreSQL store {self._where}: {type(error).__name__}: {error}"
            ) from error


def _transient(error: BaseException) -> bool:
    """The error itself, or what a handler wrapped in its own, is the store's: a lost
    connection, a lock timeout, a deadlock, a serialization failure (or already ours)."""
    cause: BaseException | None = error
    for _ in range(5):
        if cause is None:
            return False
        if isinstance(cause, StoreUnavailable) or is_transient(cause):
            return True
        cause = cause.__cause__
    return False


def _rollback_quietly(conn: psycopg.Connection[Any]) -> None:
    """End the transaction; on a broken connection there is nothing to end (the server
    rolled it back), and the pool replaces the connection."""
    if conn.closed or conn.broken:
        return
    try:
        conn.rollback()
    except psycopg.Error as error:
        log.warning("rolling back a message's transaction failed: %s", error)
