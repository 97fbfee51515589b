"""MariaDB transactions of one message (or one worker's micro-batch) each, on connections of
their own, for handlers that run concurrently (a route's ``concurrency`` above 1).

Each :meth:`MariaDBTransactions.apply` borrows a connection and, in one transaction on it,
claims the message's dedup key, runs the handler's work with ``context.db`` bound to that
connection, and commits. :meth:`MariaDBTransactions.apply_batch` does the same for several
messages with one claim and one commit; any failure inside rolls it back and runs them again
one by one. The claim:

- a key kept as a row goes into the group's current generation of processed keys, the
  transaction holding the group's rotation row shared (``LOCK IN SHARE MODE``), so no seal
  comes under it (:mod:`consumer.store.mariadb_generations`); a pool keeps no Bloom filters,
  so the sealed generations are asked about every key first (one index seek each);
- an ordered coordinates key goes in as a run of one key, its head's turn taken shared
  (:func:`consumer.store.mariadb_runs.claim_singles`): a pool's transactions of one partition go
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
from consumer.store import key_runs, mariadb_generations, mariadb_runs, micro_batch
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

#: Claims tried before giving up on the rows they need (a partition's head row, the group's
#: rotation row) going missing again as soon as made: the message is then retried.
CLAIM_ATTEMPTS = 3

INSERT_KEY = ('INSERT IGNORE INTO consumer_processed_keys (group_id, generation, "key", topic, '
              '"partition", "offset", processed_at)')


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
            if not self.opened(conn, group, claim, now):
                return False
            try:
                work(Transaction(conn))
            except BaseException as error:
                replaced = self.failed(conn, group, claim, error)
                if replaced is None:
                    raise
                raise replaced from error
            self.finish(conn, group, claim)
            return True

    # --- one message's transaction in steps: apply's, and the event loop's (AsyncMariaDB...)

    def opened(self, conn: MariaDBConnection, group: str, claim: Claim, now: float) -> bool:
        """1. Open the transaction and claim the key: whether it was new (if not, the
        transaction is rolled back). Waits for a session holding the key uncommitted, then
        sees its outcome (committed: a duplicate; rolled back: ours)."""
        with self._errors(conn):
            conn.execute(START)
            conn.guarded, conn.rolled_back = True, False
            if self._claim_keys(conn, group, [claim], now):
                return True
            conn.execute(ROLLBACK)
            return False

    def failed(self, conn: MariaDBConnection, group: str, claim: Claim,
               error: BaseException) -> BaseException | None:
        """2. The work raised ``error``: the transaction rolled back, and what to raise instead
        (None: ``error`` itself, the message's own failure)."""
        if conn.rolled_back or transient_cause(error, is_transient):
            # InnoDB ended the transaction (a deadlock), or the connection is gone
            self._rollback_quietly(conn)
            return self._transient_in_work(claim, error)
        if conn.open and not conn.in_transaction():
            # a DDL committed the key: the retry must not find it
            return self._forget(conn, group, claim, {claim.key}, [claim], returned=False)
        self._rollback_quietly(conn)
        return None

    def finish(self, conn: MariaDBConnection, group: str, claim: Claim) -> None:
        """3. The work returned: commit its effects with the key, unless the transaction is
        gone (then raise: StoreUnavailable after InnoDB rolled it back, MessageTransactionEnded
        after a DDL committed it)."""
        if conn.rolled_back:  # the work caught InnoDB's rollback and went on
            self._rollback_quietly(conn)
            raise self._caught_rollback(claim)
        if not conn.in_transaction():
            raise self._forget(conn, group, claim, set(), [claim], returned=True)
        with self._errors(conn):
            conn.execute(COMMIT)

    def apply_batch(self, group: str, claims: Sequence[Claim], now: float,
                    works: Sequence[Callable[[StoreLike], None]]) -> list[bool | BaseException]:
        """See :class:`consumer.store.base.MessageTransactions`: 1. claim every key (one
        insert for the rows, one for the runs) 2. run the works of the new keys 3. commit;
        on any failure, roll back and 4. run the messages again one transaction each (but the
        one whose work raised its own error: that error is its outcome)."""
        if len(claims) == 1:
            return [self._outcome(group, claims[0], now, works[0])]
        outcomes: list[bool | BaseException] = []
        try:
            with self._borrowed() as conn:
                broken = self._run_batch(conn, group, claims, now, works, outcomes)
        except StoreError as error:  # no connection
            return [error] * len(claims)
        if broken is None:
            return outcomes
        return micro_batch.settled(
            claims, broken, lambda index: self._outcome(group, claims[index], now, works[index]),
            lambda error: transient_cause(error, is_transient))

    def _run_batch(self, conn: MariaDBConnection, group: str, claims: Sequence[Claim],
                   now: float, works: Sequence[Callable[[StoreLike], None]],
                   outcomes: list[bool | BaseException],
                   ) -> micro_batch.Broken | None:
        """Steps 1-3 on ``conn``, filling ``outcomes``; returns None once committed, else
        which message broke the batch (None: not one message in particular) and the error
        (None: a work caught InnoDB's rollback); rolled back then."""
        try:
            with self._errors(conn):
                conn.execute(START)
                conn.guarded, conn.rolled_back = True, False
                new = self._claim_keys(conn, group, claims, now)
        except StoreError as error:
            self._rollback_quietly(conn)
            return None, error
        db = Transaction(conn)
        for index, claim in enumerate(claims):
            key = claim.key
            if key not in new:  # processed before, or twice in the batch: its first message
                outcomes.append(False)
                continue
            new.discard(key)
            try:
                works[index](db)
            except BaseException as error:
                if conn.rolled_back or transient_cause(error, is_transient):
                    self._rollback_quietly(conn)
                    return None, error
                if conn.open and not conn.in_transaction():
                    return index, self._forget(conn, group, claim, {key, *new}, claims,
                                               returned=False)
                self._rollback_quietly(conn)
                return index, error
            if conn.rolled_back:
                self._rollback_quietly(conn)
                return None, None
            if not conn.in_transaction():  # a DDL committed every key
                return index, self._forget(conn, group, claim, new, claims, returned=True)
            outcomes.append(True)
        try:
            with self._errors(conn):
                conn.execute(COMMIT)
        except StoreError as error:
            self._rollback_quietly(conn)
            return None, error
        return None

    def _outcome(self, group: str, claim: Claim, now: float,
                 work: Callable[[StoreLike], None]) -> bool | BaseException:
        try:
            return self.apply(group, claim, now, work)
        except BaseException as error:  # every outcome goes back to its message
            return error

    # --- the claim -------------------------------------------------------------------------

    def _claim_keys(self, conn: MariaDBConnection, group: str, claims: Sequence[Claim],
                    now: float) -> set[bytes]:
        """Claim the keys in the open transaction: the new ones. Where a partition's head row
        or the group's generations must be made first, that happens outside the transaction,
        which then opens again (it holds nothing yet) and claims again."""
        runs, rows = key_runs.split(claims, self._coordinates_keys)
        singles = [single for run in runs for single in run.singles()]
        for _ in range(CLAIM_ATTEMPTS):
            new: set[bytes] = set()
            if singles:
                found = mariadb_runs.claim_singles(conn, group, now, singles)
                if found is None:
                    conn.execute(ROLLBACK)
                    mariadb_runs.make_heads(conn, group, (run.head for run in singles))
                    conn.execute(START)
                    continue
                new |= found
            if rows:
                found = self._claim_rows(conn, group, rows, now)
                if found is None:  # a new group, or one just migrated
                    conn.execute(ROLLBACK)
                    mariadb_generations.prepare(conn, group)
                    conn.execute(START)
                    continue
                new |= found
            return new
        raise StoreUnavailable(
            f"MariaDB store {self._where}: the rows group {group}'s claims need were made "
            f"{CLAIM_ATTEMPTS} times and still missing under the claim of {_at(claims[0])}; "
            "it is retried")

    def _claim_rows(self, conn: MariaDBConnection, group: str, claims: Sequence[Claim],
                    now: float) -> set[bytes] | None:
        """Keys as rows of the group's current generation, its rotation row held shared, after
        asking the sealed generations about them (a pool keeps no filters); the new ones, or
        None when the group has no rotation row yet."""
        current = mariadb_generations.share(conn, group)
        if current is None:
            return None
        sealed = self._sealed(conn, group, current)
        ordered = sorted(claims, key=_by_key)  # two batches lock shared keys in one order
        found = mariadb_generations.held(conn, group, sealed, [c.key for c in ordered])
        fresh = [c for c in ordered if c.key not in found]
        if len(fresh) == 1:
            c = fresh[0]
            inserted = conn.execute(INSERT_KEY + " VALUES (%s, %s, %s, %s, %s, %s, %s)", (
                group, current, c.key, c.topic, c.partition, c.offset, now)).rowcount
            return {c.key} if inserted else set()
        if not fresh:
            return set()
        topics = {topic: conn.escape(topic) for topic in {c.topic for c in fresh}}
        g, n = f"{conn.escape(group)},{int(current):d}", conn.escape(float(now))
        values = ",".join(f"({g},X'{c.key.hex()}',{topics[c.topic]},{c.partition:d},"
                          f"{c.offset:d},{n})" for c in fresh)
        return {bytes(key) for (key,) in conn.execute(
            f'{INSERT_KEY} VALUES {values} RETURNING "key"').fetchall()}

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

    def _forget(self, conn: MariaDBConnection, group: str, claim: Claim, keys: set[bytes],
                claims: Sequence[Claim], *, returned: bool) -> MessageTransactionEnded:
        """The work of ``claim`` ran DDL, which committed the transaction, every key claimed in
        it with it (``claims``): forget ``keys`` (those of messages not applied: the ones after
        it, and its own if it raised) in a transaction of their own, so those messages run
        again after the restart. The error to stop with."""
        conn.guarded = False
        unforgotten: BaseException | None = None
        if keys:
            listed = sorted(keys)
            in_runs = sorted({c.key for c in claims
                              if c.key in keys and self._coordinates_keys.holds(c)})
            hexes = ",".join(f"X'{key.hex()}'" for key in listed)
            try:
                with self._errors(conn):
                    conn.execute(START)
                    gone = conn.execute(
                        "DELETE FROM consumer_processed_keys WHERE group_id = %s AND "
                        f"generation IN ({mariadb_generations.numbers(conn, group)}) AND "
                        f'"key" IN ({hexes}) RETURNING generation', (group,)).fetchall()
                    mariadb_generations.count_forgotten(conn, group, (n for (n,) in gone))
                    if in_runs:
                        mariadb_runs.forget(conn, group, in_runs)
                    conn.execute(COMMIT)
            except Exception as error:  # reported in the error the consumer stops with
                self._rollback_quietly(conn)
                unforgotten = error
        return MessageTransactionEnded(claim.topic, claim.partition, claim.offset,
                                       forgotten=len(keys), unforgotten=unforgotten, ddl=True)

    # --- connections -----------------------------------------------------------------------

    def borrow(self) -> MariaDBConnection:
        """An idle connection, or a new one (StoreUnavailable when the server cannot be
        reached)."""
        with self._lock:
            conn = self._idle_connections.pop() if self._idle_connections else None
        if conn is None or not conn.open:
            conn = connect(self._params, self._where, lock_wait=self._lock_wait,
                           idle=self._idle)
        return conn

    def give_back(self, conn: MariaDBConnection) -> None:
        """``conn`` is free again: what it still holds is rolled back, and a lost one dropped.
        No round trip unless a transaction is left open."""
        conn.guarded = False
        if conn.open and conn.in_transaction():
            self._rollback_quietly(conn)
        with self._lock:
            keep = conn.open and not self._closed and len(self._idle_connections) < self._size
            if keep:
                self._idle_connections.append(conn)
        if not keep:
            _close_quietly(conn)

    @contextmanager
    def _borrowed(self) -> Iterator[MariaDBConnection]:
        conn = self.borrow()
        try:
            yield conn
        finally:
            self.give_back(conn)

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

    def _caught_rollback(self, claim: Claim) -> StoreUnavailable:
        return StoreUnavailable(
            f"MariaDB store {self._where}: the handler of {_at(claim)} caught the error of "
            "InnoDB rolling its message's transaction back (a deadlock, or a lock wait timeout "
            "with innodb_rollback_on_timeout) and went on: nothing of the message committed, "
            "and it is retried. Let database errors leave the handler.")

    def _transient_in_work(self, claim: Claim, error: BaseException) -> StoreUnavailable:
        return StoreUnavailable(
            f"the handler of {_at(claim)} hit a transient database error "
            f"({type(error).__name__}: {str(error).strip()}) on MariaDB store {self._where}; "
            "it rolled back and is retried, it is not the message's failure")


def _by_key(claim: Claim) -> bytes:
    return claim.key


def _at(claim: Claim) -> str:
    return f"{claim.topic}[{claim.partition}]@{claim.offset}"


def _close_quietly(conn: MariaDBConnection) -> None:
    with suppress(Exception):  # already closed, or the socket is gone: nothing to end
        conn.close()

