"""MariaDB transactions of one message each, on connections of their own, for handlers that
run concurrently (a route's ``concurrency`` above 1).

Each :meth:`MariaDBTransactions.apply` borrows a connection and, in one transaction on it,
claims the message's dedup key, runs the handler's work with ``context.db`` bound to that
connection, and commits. The claim is the batch store's (:mod:`consumer.store.mariadb`) for
one key:

- a key kept as a row goes into the group's current generation of processed keys, the
  transaction holding the group's rotation row shared (``LOCK IN SHARE MODE``), so no seal
  comes under it (:mod:`consumer.store.mariadb_generations`); a pool keeps no Bloom filters,
  so the sealed generations are asked about every key first (one index seek each);
- an ordered coordinates key goes in as a run of one key, its head's turn taken shared
  (:func:`consumer.store.mariadb_runs.claim_one`): a pool's transactions of one partition go
  side by side, and a batch's claim, which takes the turn exclusively, waits for them.

``INSERT IGNORE`` of a key another session holds uncommitted waits for that session (at most
``innodb_lock_wait_timeout``), then sees its outcome: committed, a duplicate; rolled back, ours.
Two owners of one message never both apply it.

While the work runs the connection is guarded as a batch's is
(:mod:`consumer.store.mariadb_session`): transaction statements and methods are refused, and
once InnoDB rolled the transaction back under a statement (a deadlock) every later statement
is refused, so nothing of the message commits and it is retried. DDL commits implicitly in
MariaDB: it is found after the work, from the server's status, and stops the consumer as a
``COMMIT`` statement does on PostgreSQL (:class:`MessageTransactionEnded`).

Connections are made when first needed and kept up to ``size``; a lost one is dropped and
the next borrower connects anew (an unreachable server is ``StoreUnavailable``: the message is
retried after backoff). Thread-safe: one call per thread at a time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import pymysql

from consumer.errors import MessageTransactionEnded, StoreError, StoreUnavailable
from consumer.message import StoreLike
from consumer.store import key_runs, mariadb_generations, mariadb_runs
from consumer.store.base import Claim, transient_cause
from consumer.store.key_runs import CoordinatesKeys
from consumer.store.mariadb_session import (
    COMMIT,
    ROLLBACK,
    START,
    MariaDBConnection,
    MariaDBCursor,
    connect,
    is_lost,
    is_transient,
    translated,
)

log = logging.getLogger("consumer.store")

#: Claims tried before giving up on a group's generations changing under each: the message is
#: then retried.
CLAIM_ATTEMPTS = 3

INSERT_KEY = ('INSERT IGNORE INTO consumer_processed_keys (group_id, generation, "key", topic, '
              '"partition", "offset", processed_at) VALUES (%s, %s, %s, %s, %s, %s, %s)')


class Transaction:
    """``context.db`` and ``context.execute`` inside one message's transaction."""

    __slots__ = ("connection",)

    def __init__(self, connection: MariaDBConnection) -> None:
        self.connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> MariaDBCursor:
        return self.connection.execute(sql, params)


class MariaDBTransactions:
    """Up to ``size`` connections; one message's transaction on each at a time."""

    def __init__(self, params: dict[str, Any], *, size: int, where: str, lock_wait: int,
                 idle: int, coordinates_keys: CoordinatesKeys | None = None) -> None:
        self._params = params
        self._size = max(1, size)
        self._where = where
        self._lock_wait = lock_wait
        self._idle = idle
        self._coordinates_keys = coordinates_keys or CoordinatesKeys()
        self._lock = threading.Lock()
        self._idle_connections: list[MariaDBConnection] = []
        self._closed = False
        #: Per group: the current generation last seen, and the sealed ones then.
        self._generations: dict[str, tuple[int, tuple[int, ...]]] = {}

    def open(self) -> None:
        """Nothing to do ahead: each connection is made when a message first needs it."""
        self._closed = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._idle_connections = self._idle_connections, []
        for conn in connections:
            _close_quietly(conn)

    def apply(self, group: str, claim: Claim, now: float,
              work: Callable[[StoreLike], None]) -> bool:
        """See :class:`consumer.store.base.MessageTransactions`: 1. claim the key 2. run the
        work 3. commit; the connection goes back whatever happened (dropped if lost)."""
        with self._borrowed() as conn:
            # 1. open the transaction and claim the key: waits for a session holding it
            # uncommitted, then sees its outcome (committed: a duplicate; rolled back: ours)
            with self._errors(conn):
                conn.execute(START)
                conn.guarded, conn.rolled_back = True, False
                if not self._claim(conn, group, claim, now):
                    conn.execute(ROLLBACK)
                    return False
            # 2. run the work inside the same transaction
            try:
                work(Transaction(conn))
            except BaseException as error:
                # InnoDB ended the transaction (a deadlock), or the connection is gone
                if conn.rolled_back or transient_cause(error, is_transient):
                    self._rollback_quietly(conn)
                    raise self._transient_in_work(claim, error) from error
                if conn.open and not mariadb_generations.in_transaction(conn):
                    # a DDL committed the key: the retry must not find it
                    raise self._forget(conn, group, claim, returned=False) from error
                self._rollback_quietly(conn)
                raise
            if conn.rolled_back:  # the work caught InnoDB's rollback and went on
                self._rollback_quietly(conn)
                raise StoreUnavailable(
                    f"MariaDB store {self._where}: the handler of {_at(claim)} caught the "
                    "error of InnoDB rolling its message's transaction back (a deadlock, or a "
                    "lock wait timeout with innodb_rollback_on_timeout) and went on: nothing "
                    "of the message committed, and it is retried. Let database errors leave "
                    "the handler.")
            if not mariadb_generations.in_transaction(conn):
                raise self._forget(conn, group, claim, returned=True)
            # 3. commit the effects with the key
            with self._errors(conn):
                conn.execute(COMMIT)
            return True

    def apply_batch(self, group: str, claims: Sequence[Claim], now: float,
                    works: Sequence[Callable[[StoreLike], None]]) -> list[bool | BaseException]:
        """A worker's micro-batch, one transaction per message (this store has no batched
        claim for a pool yet): each message's outcome as :meth:`apply` gives it."""
        outcomes: list[bool | BaseException] = []
        for claim, work in zip(claims, works, strict=True):
            try:
                outcomes.append(self.apply(group, claim, now, work))
            except BaseException as error:  # every outcome goes back to its message
                outcomes.append(error)
        return outcomes

    # --- the claim -------------------------------------------------------------------------

    def _claim(self, conn: MariaDBConnection, group: str, claim: Claim, now: float) -> bool:
        """Claim the key in the open transaction: whether it was new."""
        runs, _ = key_runs.split((claim,), self._coordinates_keys)
        if runs:
            for _ in range(2):
                new = mariadb_runs.claim_one(conn, group, now, runs[0])
                if new is not None:
                    return new
                conn.execute(ROLLBACK)  # the head's row is made outside ours, then again
                mariadb_runs.make_head(conn, group, runs[0].head)
                conn.execute(START)
            raise StoreError(f"MariaDB store {self._where}: the row of {_at(claim)}'s "
                             "partition in consumer_processed_run_heads is gone again as soon "
                             "as made; were the tables changed by hand?")
        for _ in range(CLAIM_ATTEMPTS):
            current = mariadb_generations.share(conn, group)
            if current is None:  # a new group, or one just migrated: made outside ours
                conn.execute(ROLLBACK)
                mariadb_generations.prepare(conn, group)
                conn.execute(START)
                continue
            sealed = self._sealed(conn, group, current)
            if sealed and mariadb_generations.held(conn, group, sealed, [claim.key]):
                return False
            return bool(conn.execute(INSERT_KEY, (
                group, current, claim.key, claim.topic, claim.partition, claim.offset,
                now)).rowcount)
        raise StoreUnavailable(
            f"MariaDB store {self._where}: group {group}'s generations of processed keys "
            f"changed {CLAIM_ATTEMPTS} times under the claim of {_at(claim)}; it is retried")

    def _sealed(self, conn: MariaDBConnection, group: str, current: int) -> tuple[int, ...]:
        """The group's sealed generations while ``current`` is its current one (read under its
        rotation lock, held shared: none is sealed meanwhile)."""
        known = self._generations.get(group)
        if known is None or known[0] != current:
            listed = mariadb_generations.current_listed(conn, group, current)
            known = self._generations[group] = (
                current, tuple(g.number for g in listed if g.sealed))
        return known[1]

    # --- a handler that ended the transaction ----------------------------------------------

    def _forget(self, conn: MariaDBConnection, group: str, claim: Claim, *,
                returned: bool) -> MessageTransactionEnded:
        """The work's DDL committed the transaction, the key with it. If the work raised, the
        message is not applied: forget its key in a transaction of its own, so it runs again
        after the restart. The error to stop with."""
        conn.guarded = False
        unforgotten: BaseException | None = None
        if not returned:
            try:
                with self._errors(conn):
                    conn.execute(START)
                    gone = conn.execute(
                        "DELETE FROM consumer_processed_keys WHERE group_id = %s AND "
                        f"generation IN ({mariadb_generations.numbers(conn, group)}) AND "
                        '"key" = %s RETURNING generation', (group, claim.key)).fetchall()
                    mariadb_generations.count_forgotten(conn, group, (n for (n,) in gone))
                    if self._coordinates_keys.as_runs:
                        mariadb_runs.forget(conn, group, [claim.key])
                    conn.execute(COMMIT)
            except Exception as error:  # reported in the error the consumer stops with
                self._rollback_quietly(conn)
                unforgotten = error
        return MessageTransactionEnded(claim.topic, claim.partition, claim.offset,
                                       forgotten=0 if returned else 1, unforgotten=unforgotten,
                                       ddl=True)

    # --- connections -----------------------------------------------------------------------

    @contextmanager
    def _borrowed(self) -> Iterator[MariaDBConnection]:
        with self._lock:
            conn = self._idle_connections.pop() if self._idle_connections else None
        if conn is None or not conn.open:
            conn = connect(self._params, self._where, lock_wait=self._lock_wait,
                           idle=self._idle)
        try:
            yield conn
        finally:
            conn.guarded = False
            if conn.open and mariadb_generations.in_transaction(conn):
                self._rollback_quietly(conn)
            with self._lock:
                keep = conn.open and not self._closed and \
                    len(self._idle_connections) < self._size
                if keep:
                    self._idle_connections.append(conn)
            if not keep:
                _close_quietly(conn)

    @contextmanager
    def _errors(self, conn: MariaDBConnection) -> Iterator[None]:
        """PyMySQL's errors in our statements as ours (a lost connection is closed)."""
        try:
            yield
        except pymysql.err.MySQLError as error:
            if is_lost(error):
                _close_quietly(conn)
            raise translated(error, self._where, self._lock_wait) from error

    def _rollback_quietly(self, conn: MariaDBConnection) -> None:
        conn.guarded = False
        if not conn.open:
            return
        try:
            conn.execute(ROLLBACK)
        except pymysql.err.MySQLError as error:
            log.warning("MariaDB store %s: rolling back a message's transaction failed: %s",
                        self._where, error)
            _close_quietly(conn)

    def _transient_in_work(self, claim: Claim, error: BaseException) -> StoreUnavailable:
        return StoreUnavailable(
            f"the handler of {_at(claim)} hit a transient database error "
            f"({type(error).__name__}: {str(error).strip()}) on MariaDB store {self._where}; "
            "it rolled back and is retried, it is not the message's failure")


def _at(claim: Claim) -> str:
    return f"{claim.topic}[{claim.partition}]@{claim.offset}"


def _close_quietly(conn: MariaDBConnection) -> None:
    with suppress(Exception):  # already closed, or the socket is gone: nothing to end
        conn.close()

