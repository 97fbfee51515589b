"""PostgreSQL transactions of one message (or one worker's micro-batch) each, on pooled
connections (psycopg_pool), for handlers that run concurrently.

Each :meth:`PostgresTransactions.apply` borrows a connection, and in one transaction on it
claims the message's dedup key (``INSERT … ON CONFLICT DO NOTHING RETURNING``), runs the
handler's work with ``context.db`` bound to that connection, and commits. The connections are
in autocommit mode and every transaction is opened by an explicit ``BEGIN``, marked
(:mod:`consumer.store.postgres_mark`) so that a handler's statement ending it shows: where the
keys are runs (ordered coordinates keys), the opening and the claim go as one query string
(:class:`RunsOpening`), one round trip where psycopg's own ``BEGIN`` would cost two.
:meth:`PostgresTransactions.apply_batch` does the same for several messages with one claim
statement and one commit; any failure inside rolls it back and runs them again one by one.
Only the caller's thread uses the connection until it goes back to the pool; the pool rolls
back whatever a connection still holds when it comes back and replaces a broken one. Every
connection keeps the store's session limits (lock wait, idle open transaction, TCP
keepalives), so a frozen peer costs a claim at most ``lock_timeout`` per attempt. Thread-safe.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from typing import Any, Protocol

import psycopg
from psycopg import pq, sql
from psycopg.errors import IntegrityError
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from consumer.errors import (
    MessageTransactionEnded,
    StoreError,
    StoreSchemaError,
    StoreUnavailable,
    TransactionEndRefused,
)
from consumer.message import StoreLike
from consumer.store import (
    key_runs,
    micro_batch,
    postgres_generations,
    postgres_mark,
    postgres_runs,
)
from consumer.store.base import Claim, PostgresSession, transient_cause
from consumer.store.key_runs import CoordinatesKeys, Run
from consumer.store.postgres import claim_values, is_transient, unclaim

log = logging.getLogger("consumer.store")

#: Claims of rows tried before a pool gives up on a generation sealed under each
#: (:mod:`consumer.store.postgres_generations`): the message is then retried.
CLAIM_ATTEMPTS = 3


def row_claim(group: str, claims: Sequence[Claim], now: float,
              view: tuple[int, tuple[int, ...]]) -> tuple[str, dict[str, Any]]:
    """The statement (and its parameters) claiming keys as rows of the group's current
    generation (``view``: it and the sealed ones, which are asked about every key: a pool
    keeps no filters); it returns the keys that were new, and fails (a division by zero)
    when the generation was sealed."""
    current, sealed = view
    return (postgres_generations.claim_statement(plain=False,
                                                 sealed="all" if sealed else "none"),
            postgres_generations.claim_parameters(group, current, now, claim_values(claims),
                                                  sealed))


def generation_sealed(where: str, group: str) -> StoreUnavailable:
    return StoreUnavailable(
        f"PostgreSQL store {where}: group {group}'s current generation of processed keys was "
        f"sealed under {CLAIM_ATTEMPTS} claims in a row; the message is retried")


class RunsOpening:
    """``BEGIN`` and a claim of runs as one query string (:func:`postgres_runs.open_query`,
    the statement prepared on the connection): one round trip instead of two, and no arrays
    for psycopg to adapt. A connection prepares the statement before its first such opening
    (:attr:`MessageConnection.runs_prepared`), and again when psycopg deallocated it
    (:func:`postgres_runs.send_open`; the async pool awaits the same steps). Thread-safe: the
    quoted names are cached, a lost race quotes a name twice."""

    def __init__(self) -> None:
        self._literals: dict[str, str] = {}

    def query(self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], group: str,
              now: float, ordered: Sequence[Run]) -> str:
        """The opening's query string for runs in key order, names quoted for ``conn``."""
        literals = self._literals

        def literal(text: str) -> str:
            if (quoted := literals.get(text)) is None:
                quoted = literals[text] = sql.Literal(text).as_string(conn)
            return quoted

        return postgres_runs.open_query(group, now, ordered, literal)


class MessageConnection(psycopg.Connection[Any]):
    """A pooled connection whose transaction a handler cannot end: while :attr:`handling`
    is set, ``commit()`` and ``rollback()`` (which ``with conn:`` calls too) raise
    :class:`TransactionEndRefused`. A claim committed early would make the retry of a
    message that then raised a duplicate; a claim rolled back would let later writes commit
    without their key. A ``COMMIT`` or ``ROLLBACK`` statement cannot be refused: it is found
    when the handler returns or raises (:func:`ended`)."""

    #: A handler runs on this connection now.
    handling = False
    #: The runs' claim was prepared on this connection (:class:`RunsOpening`).
    runs_prepared = False
    #: The open transaction shows its mark (:func:`ended`).
    marked = False

    def commit(self) -> None:
        if self.handling:
            raise TransactionEndRefused("commit()")
        super().commit()

    def rollback(self) -> None:
        if self.handling:
            raise TransactionEndRefused("rollback()")
        super().rollback()


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
                 session_parameters: dict[str, Any], connect_timeout: float = 10.0,
                 coordinates_keys: CoordinatesKeys | None = None) -> None:
        self._where = where
        self._session = session
        self._coordinates_keys = coordinates_keys or CoordinatesKeys()
        self._opening = RunsOpening()
        self._generations = postgres_generations.PoolGenerations()
        self._swallowed = SwallowedErrors(where)
        self._pool: ConnectionPool[MessageConnection] = ConnectionPool(
            dsn, name="consumer-store", connection_class=MessageConnection,
            **pool_options(size, session_parameters, connect_timeout))

    def open(self) -> None:
        self._pool.open(wait=False)

    def close(self) -> None:
        self._pool.close()

    def apply(self, group: str, claim: Claim, now: float,
              work: Callable[[StoreLike], None]) -> bool:
        """See :class:`consumer.store.base.MessageTransactions`: 1. claim the key 2. run the
        work 3. commit; the connection goes back to the pool whatever happened."""
        conn = self._getconn()
        try:
            # 1. open the transaction and claim the key: waits for a session holding it
            # uncommitted, then sees its outcome (committed: a duplicate; rolled back: ours)
            runs, _ = key_runs.split((claim,), self._coordinates_keys)
            with transaction_errors(self._where, self._session):
                if runs:
                    new = bool(self._open_runs(conn, group, now, runs))
                else:
                    new = bool(self._claim_rows(conn, group, (claim,), now))
            if not new:
                _rollback_quietly(conn)
                return False
            # 2. run the work inside the same transaction
            try:
                _run_work(conn, work)
            except BaseException as error:
                if ended(conn):  # then raised: the retry must not find its key
                    raise self._forget(conn, group, now, claim, {claim.key},
                                       returned=False) from error
                _rollback_quietly(conn)
                if transient(error):
                    raise handler_store_error(claim, self._where, error) from error
                raise
            if ended(conn):
                raise self._forget(conn, group, now, claim, set(), returned=True)
            if conn.info.transaction_status == TransactionStatus.INERROR:
                _rollback_quietly(conn)
                raise self._swallowed.error(claim)
            # 3. commit the effects with the key. At COMMIT an IntegrityError is a deferred
            # constraint the handler's writes broke: the message's own failure (its retries
            # and dead letter), as the statement's error would be with the check immediate
            with transaction_errors(self._where, self._session, own=IntegrityError):
                conn.commit()
            self._swallowed.applied(claim)
            return True
        finally:
            self._pool.putconn(conn)  # rolls back what is left open; replaces a broken one

    def apply_batch(self, group: str, claims: Sequence[Claim], now: float,
                    works: Sequence[Callable[[StoreLike], None]]) -> list[bool | BaseException]:
        """See :class:`consumer.store.base.MessageTransactions`: 1. claim every key in one
        statement 2. run the works of the new keys 3. commit; on any failure, roll back and
        4. run the messages again one transaction each (but the one whose work raised its
        own error: that error is its outcome)."""
        if len(claims) == 1:
            return [self._outcome(group, claims[0], now, works[0])]
        try:
            conn = self._getconn()
        except StoreUnavailable as error:
            return [error] * len(claims)
        outcomes: list[bool | BaseException] = []
        try:
            broken = self._run_batch(conn, group, claims, now, works, outcomes)
            if broken is None:
                return outcomes
            _rollback_quietly(conn)
        finally:
            self._pool.putconn(conn)
        return micro_batch.settled(
            claims, broken, lambda index: self._outcome(group, claims[index], now, works[index]),
            transient)

    def _run_batch(self, conn: MessageConnection, group: str, claims: Sequence[Claim],
                   now: float, works: Sequence[Callable[[StoreLike], None]],
                   outcomes: list[bool | BaseException],
                   ) -> micro_batch.Broken | None:
        """Steps 1-3 on ``conn``, filling ``outcomes``; returns None once committed, else
        which message broke the batch (None: not one message in particular) and the error
        (None: a work returned with the transaction failed)."""
        # 1. claim every key, in key order (two batches sharing keys never wait in a cycle)
        ordered = sorted(claims, key=_by_key)
        runs, others = key_runs.split(ordered, self._coordinates_keys)
        try:
            with transaction_errors(self._where, self._session):
                if others:
                    new = self._claim_rows(conn, group, others, now)
                    if runs:
                        new |= key_runs.new_keys(
                            runs, postgres_runs.claim(conn.execute, group, now, runs))
                else:
                    new = self._open_runs(conn, group, now, runs)
        except StoreError as error:
            return None, error
        # 2. the works of the new keys (a key twice in the batch: its first message)
        db = Transaction(conn)
        for index, claim in enumerate(claims):
            key = claim.key
            if key not in new:
                outcomes.append(False)
                continue
            new.discard(key)
            try:
                _run_work(conn, works[index], db)
            except BaseException as error:
                if ended(conn):  # then raised: its key goes with the unapplied ones
                    return index, self._forget(conn, group, now, claim, {key, *new},
                                               returned=False)
                return index, error
            if ended(conn):  # the keys left in ``new`` are the messages not applied
                return index, self._forget(conn, group, now, claim, new, returned=True)
            if conn.info.transaction_status == TransactionStatus.INERROR:
                return None, None  # the work swallowed a database error: nothing would commit
            outcomes.append(True)
        # 3. commit every message's effects with its key
        try:
            with transaction_errors(self._where, self._session):
                conn.commit()
        except StoreError as error:
            return None, error
        return None

    def _forget(self, conn: MessageConnection, group: str, now: float, claim: Claim,
                keys: AbstractSet[bytes], *, returned: bool) -> MessageTransactionEnded:
        """The handler of ``claim`` ended the transaction with a statement (:func:`ended`):
        end the transaction it opened since, if any (committed if it ``returned``, its
        message's key having committed, else rolled back), then forget ``keys``, claimed in
        ours at ``now`` for messages it had not applied, in a transaction of their own; the
        error to stop with. Only claims of ``now``: after a ROLLBACK statement ours are gone,
        and another session may hold those keys since."""
        unforgotten: BaseException | None = None
        if conn.pgconn.transaction_status != postgres_mark.IDLE:
            try:
                with transaction_errors(self._where, self._session):
                    conn.execute("COMMIT" if returned else "ROLLBACK")
            except Exception as error:  # reported in the error the consumer stops with
                _rollback_quietly(conn)
                unforgotten = error
        if keys and unforgotten is None:
            try:
                with transaction_errors(self._where, self._session):
                    conn.execute("BEGIN")
                    unclaim(conn, group, keys, runs=self._coordinates_keys.as_runs,
                            claimed_at=now)
                    conn.execute("COMMIT")
            except Exception as error:  # reported in the error the consumer stops with
                _rollback_quietly(conn)
                unforgotten = error
        return MessageTransactionEnded(claim.topic, claim.partition, claim.offset,
                                       forgotten=len(keys), unforgotten=unforgotten)

    def _claim_rows(self, conn: MessageConnection, group: str, claims: Sequence[Claim],
                    now: float) -> set[bytes]:
        """Open the transaction and claim keys as rows (:func:`row_claim`); the keys that were
        new. A generation sealed under the claim is read again and the claim made again."""
        for _ in range(CLAIM_ATTEMPTS):
            view = self._generations.view(group) or self._generations.read(
                group, postgres_generations.listed(conn, group))
            begin(conn, group)
            try:
                rows = conn.execute(*row_claim(group, claims, now, view)).fetchall()
            except psycopg.errors.DivisionByZero:
                conn.execute("ROLLBACK")
                self._generations.stale(group, view[0])
                continue
            return {bytes(row[0]) for row in rows}
        raise generation_sealed(self._where, group)

    def _open_runs(self, conn: MessageConnection, group: str, now: float,
                   runs: Sequence[Run]) -> set[bytes]:
        """Open the transaction with the claim of ``runs`` (:class:`RunsOpening`); the keys
        that were new."""
        ordered = postgres_runs.in_key_order(runs)
        query = self._opening.query(conn, group, now, ordered)
        if not conn.runs_prepared:
            postgres_runs.prepare_open(conn)
            conn.runs_prepared = True
        rows = postgres_runs.send_open(conn, query)
        conn.marked = postgres_mark.marked(conn.pgconn)
        return key_runs.new_keys(runs, postgres_runs.claimed(
            conn.execute, group, now, ordered, rows))

    def _outcome(self, group: str, claim: Claim, now: float,
                 work: Callable[[StoreLike], None]) -> bool | BaseException:
        try:
            return self.apply(group, claim, now, work)
        except BaseException as error:  # every outcome goes back to its message
            return error

    def _getconn(self) -> MessageConnection:
        try:
            return self._pool.getconn()
        except PoolTimeout as error:
            raise StoreUnavailable(
                f"no connection to PostgreSQL store {self._where} within "
                f"{self._pool.timeout:g} s (the server is unreachable, or refuses new "
                f"connections): {error}") from error


def pool_options(size: int, session_parameters: dict[str, Any],
                 connect_timeout: float) -> dict[str, Any]:
    """A message pool's options: ``size`` connections, opened by :meth:`open`, each with the
    store's session limits, in autocommit mode (every transaction opens with an explicit
    ``BEGIN``). A connection is asked for only when one is free (the workers never outnumber
    the connections), so only an unreachable server makes the wait time out."""
    return {"min_size": size, "max_size": size, "open": False, "timeout": connect_timeout,
            "kwargs": {**session_parameters, "autocommit": True,
                       "connect_timeout": max(1, int(connect_timeout))}}


@contextmanager
def transaction_errors(where: str, session: PostgresSession, *,
                       own: type[psycopg.Error] | None = None) -> Iterator[None]:
    """psycopg's errors inside a message's transaction as ours: StoreSchemaError (the tables
    are missing), StoreUnavailable (transient: retry the message), StoreError (the rest);
    but an error of type ``own``, the message's own failure, stays as it is."""
    try:
        yield
    except psycopg.errors.UndefinedTable as error:
        raise StoreSchemaError(
            f"PostgreSQL store {where}: {error}; run `consumer store init`"
        ) from error
    except psycopg.Error as error:
        if own is not None and isinstance(error, own):
            raise
        if is_transient(error) or isinstance(
                error, psycopg.errors.IdleInTransactionSessionTimeout):
            lock = ""
            if isinstance(error, psycopg.errors.LockNotAvailable):
                lock = (f"waited store.postgres_lock_timeout_seconds "
                        f"({session.lock_timeout:g} s) for a key another session "
                        "holds uncommitted (a previous owner frozen in its transaction is "
                        "ended after store.postgres_idle_in_transaction_timeout_seconds); ")
            raise StoreUnavailable(
                f"PostgreSQL store {where}: {lock}the message's transaction rolled "
                f"back and is retried: {type(error).__name__}: {str(error).strip()}"
            ) from error
        raise StoreError(
            f"PostgreSQL store {where}: {type(error).__name__}: {error}"
        ) from error


def handler_store_error(claim: Claim, where: str, error: BaseException) -> StoreUnavailable:
    """A handler's work raised the store's transient error (or wrapped one in its own)."""
    return StoreUnavailable(
        f"the handler of {claim.topic}[{claim.partition}]@{claim.offset} hit a transient "
        f"database error ({type(error).__name__}: {str(error).strip()}) on PostgreSQL store "
        f"{where}; it rolled back and is retried, it is not the message's failure")


class SwallowedErrors:
    """The messages whose handler caught a database error and returned with its transaction
    failed, so nothing of it committed: the first time, the message is tried once more (a
    deadlock caught once need not come back), as after a transient error; the second time in
    a row, the consumer stops naming it. Thread-safe: one call per message at a time, and
    each set operation holds the interpreter's lock."""

    def __init__(self, where: str) -> None:
        self._where = where
        self._once: set[tuple[str, int, int]] = set()

    def error(self, claim: Claim) -> StoreError:
        """What to raise for ``claim``'s handler found so: StoreUnavailable, then StoreError."""
        coordinates = (claim.topic, claim.partition, claim.offset)
        said = (f"the handler of {claim.topic}[{claim.partition}]@{claim.offset} caught a "
                f"database error and returned on PostgreSQL store {self._where}: its "
                "transaction had failed, so nothing of it was committed")
        if coordinates in self._once:
            self._once.discard(coordinates)
            return StoreError(f"{said}, again. Let database errors leave the handler (the "
                              "store retries transient ones)")
        self._once.add(coordinates)
        return StoreUnavailable(f"{said}; it is tried once more")

    def applied(self, claim: Claim) -> None:
        """``claim``'s message committed: a second chance it had is spent."""
        if self._once:
            self._once.discard((claim.topic, claim.partition, claim.offset))


def transient(error: BaseException) -> bool:
    """The error itself, or what a handler wrapped in its own, is the store's: a lost
    connection, a lock timeout, a deadlock, a serialization failure (or already ours)."""
    return transient_cause(error, is_transient)


class AnyMarked(Protocol):
    """A pooled connection, sync or async, that keeps whether its transaction shows its mark
    (:mod:`consumer.store.postgres_mark`) for :func:`ended`."""

    marked: bool

    @property
    def pgconn(self) -> pq.abc.PGconn: ...


def begin(conn: MessageConnection, group: str | None = None) -> None:
    """Open a marked transaction on ``conn`` (:mod:`consumer.store.postgres_mark`), holding
    ``group``'s rotation lock shared if given (:func:`postgres_generations.opening`)."""
    conn.marked = postgres_mark.begin(conn, postgres_generations.opening(group))


def ended(conn: AnyMarked) -> bool:
    """The handler ended its message's transaction with a statement (``COMMIT``, ``ROLLBACK``,
    ``END``), maybe opening one of its own after (:func:`postgres_mark.ended`). No round
    trip; a lost connection reads UNKNOWN, not ended."""
    return postgres_mark.ended(conn.pgconn, conn.marked)


def _by_key(claim: Claim) -> bytes:
    return claim.key


def _run_work(conn: MessageConnection, work: Callable[[StoreLike], None],
              db: Transaction | None = None) -> None:
    """``work`` on ``conn``'s open transaction, which it cannot end."""
    conn.handling = True
    try:
        work(db or Transaction(conn))
    finally:
        conn.handling = False


def _rollback_quietly(conn: psycopg.Connection[Any]) -> None:
    """End the transaction; on a broken connection there is nothing to end (the server
    rolled it back), and the pool replaces the connection."""
    if conn.closed or conn.broken:
        return
    try:
        conn.rollback()
    except psycopg.Error as error:
        log.warning("rolling back a message's transaction failed: %s", error)
