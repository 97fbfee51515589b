"""PostgreSQL transactions of one message each for ``async def`` handlers, on the event loop
that runs them (psycopg's ``AsyncConnectionPool``).

:meth:`AsyncPostgresTransactions.apply` does what
:meth:`~consumer.store.postgres_pool.PostgresTransactions.apply` does, awaiting instead of
blocking: borrow a connection (waiting for one never blocks the loop), open the transaction
and claim the message's dedup key (one round trip where the key is a run:
:class:`~consumer.store.postgres_pool.RunsOpening`), await the handler's work with
``context.db`` bound to that connection (an ``AsyncConnection``: ``await
context.execute(...)``), commit. A message holds its connection from its claim to its commit,
so at most ``size`` messages of the async routes are inside their transactions at once,
whatever the routes' concurrency. The pool opens on the loop's thread at the first message (a
pool belongs to the loop it runs on) and is closed from the poll thread while that loop still
runs. Event loop thread only, but for :meth:`close`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
from psycopg.errors import IntegrityError
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from consumer.errors import MessageTransactionEnded, StoreUnavailable, TransactionEndRefused
from consumer.store import (
    key_runs,
    postgres,
    postgres_generations,
    postgres_mark,
    postgres_pool,
    postgres_runs,
)
from consumer.store.base import Claim, PostgresSession
from consumer.store.key_generations import Generation
from consumer.store.key_runs import CoordinatesKeys, Run
from consumer.store.postgres_pool import (
    CLAIM_ATTEMPTS,
    RunsOpening,
    SwallowedErrors,
    ended,
    generation_sealed,
    handler_store_error,
    pool_options,
    transaction_errors,
    transient,
)

log = logging.getLogger("consumer.store")

#: Seconds :meth:`AsyncPostgresTransactions.close` waits for the pool to close on its loop.
CLOSE_SECONDS = 5.0


class AsyncMessageConnection(psycopg.AsyncConnection[Any]):
    """:class:`~consumer.store.postgres_pool.MessageConnection` for ``async def`` handlers:
    while :attr:`handling` is set, ``commit()`` and ``rollback()`` (and ``async with
    conn:``) raise :class:`TransactionEndRefused`."""

    #: A handler runs on this connection now.
    handling = False
    #: The runs' claim was prepared on this connection (:class:`RunsOpening`).
    runs_prepared = False
    #: The open transaction shows its mark (``ended``).
    marked = False

    async def commit(self) -> None:
        if self.handling:
            raise TransactionEndRefused("commit()")
        await super().commit()

    async def rollback(self) -> None:
        if self.handling:
            raise TransactionEndRefused("rollback()")
        await super().rollback()


class AsyncTransaction:
    """``context.db`` and ``context.execute`` inside one message's transaction, for an
    ``async def`` handler: ``await context.execute(sql, params)``."""

    __slots__ = ("connection",)

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self.connection = connection

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.AsyncCursor[Any]:
        return await self.connection.execute(sql, tuple(params))


AsyncWork = Callable[[AsyncTransaction], Awaitable[None]]


class AsyncPostgresTransactions:
    """A pool of ``size`` connections on the event loop; one message's transaction on each at
    a time."""

    def __init__(self, dsn: str, *, size: int, where: str, session: PostgresSession,
                 session_parameters: dict[str, Any], connect_timeout: float = 10.0,
                 coordinates_keys: CoordinatesKeys | None = None) -> None:
        self._where = where
        self._session = session
        self._coordinates_keys = coordinates_keys or CoordinatesKeys()
        self._opening = RunsOpening()
        self._generations = postgres_generations.PoolGenerations()
        self._swallowed = SwallowedErrors(where)
        # A message asks for a connection once a slot is its (one is free).
        self._pool: AsyncConnectionPool[AsyncMessageConnection] = AsyncConnectionPool(
            dsn, name="consumer-store-async", connection_class=AsyncMessageConnection,
            **pool_options(size, session_parameters, connect_timeout))
        self._size = size
        #: ``size`` slots: a message waits for one (as long as other messages hold them)
        #: before it borrows a connection. Made on the loop, with the pool.
        self._slots: asyncio.Semaphore | None = None
        #: The loop the pool opened on (None: not opened yet).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def open(self) -> None:
        """Nothing yet: the pool opens on the event loop, at the first message."""

    def close(self) -> None:
        """Close the pool on its loop (from any thread, while the loop runs): idle
        connections close now, borrowed ones as they come back."""
        self._closed = True
        loop = self._loop
        if loop is None or not loop.is_running():
            return  # never opened, or the loop is gone: the server ends the sessions
        future = asyncio.run_coroutine_threadsafe(self._pool.close(timeout=CLOSE_SECONDS / 2), loop)
        try:
            future.result(CLOSE_SECONDS)
        except Exception as error:  # closing is best effort: the process is leaving
            log.warning("closing the async PostgreSQL pool of store %s: %s", self._where,
                        error)

    async def apply(self, group: str, claim: Claim, now: float, work: AsyncWork) -> bool:
        """As :meth:`consumer.store.base.MessageTransactions.apply`, awaited: 1. claim the key
        2. await the work 3. commit; the connection goes back to the pool whatever happened."""
        slots = self._slots or await self._open()
        async with slots:
            return await self._apply(group, claim, now, work)

    async def _apply(self, group: str, claim: Claim, now: float, work: AsyncWork) -> bool:
        conn = await self._getconn()
        try:
            runs, _ = key_runs.split((claim,), self._coordinates_keys)
            with transaction_errors(self._where, self._session):
                if runs:
                    new = await self._open_run(conn, group, now, runs[0])
                else:
                    new = await self._claim_row(conn, group, claim, now)
            if not new:
                await _rollback_quietly(conn)
                return False
            try:
                await _run_work(conn, work)
            except BaseException as error:
                if ended(conn):  # then raised: the retry must not find its key
                    raise await self._forget(conn, group, now, claim,
                                             returned=False) from error
                await _rollback_quietly(conn)
                if transient(error):
                    raise handler_store_error(claim, self._where, error) from error
                raise
            if ended(conn):
                raise await self._forget(conn, group, now, claim, returned=True)
            if conn.info.transaction_status == TransactionStatus.INERROR:
                await _rollback_quietly(conn)
                raise self._swallowed.error(claim)
            # a deferred constraint the handler's writes broke: the message's own failure
            with transaction_errors(self._where, self._session, own=IntegrityError):
                await conn.commit()
            self._swallowed.applied(claim)
            return True
        finally:
            await self._pool.putconn(conn)  # rolls back what is left; replaces a broken one

    async def _forget(self, conn: AsyncMessageConnection, group: str, now: float,
                      claim: Claim, *, returned: bool) -> MessageTransactionEnded:
        """The handler ended the transaction with a statement: end the transaction it opened
        since, if any (committed if it ``returned``, its key having committed, else rolled
        back); if it raised, forget its key, claimed alone at ``now`` (so its run, if any, is
        the key's alone), in a transaction of its own; the error to stop with. Only a claim
        of ``now``: after a ROLLBACK statement ours is gone, and another session may hold the
        key since."""
        unforgotten: BaseException | None = None
        if conn.pgconn.transaction_status != postgres_mark.IDLE:
            try:
                with transaction_errors(self._where, self._session):
                    await conn.execute("COMMIT" if returned else "ROLLBACK")
            except Exception as error:  # reported in the error the consumer stops with
                await _rollback_quietly(conn)
                unforgotten = error
        if returned or unforgotten is not None:
            return MessageTransactionEnded(claim.topic, claim.partition, claim.offset,
                                           forgotten=0 if returned else 1,
                                           unforgotten=unforgotten)
        try:
            with transaction_errors(self._where, self._session):
                await conn.execute("BEGIN")
                await conn.execute(postgres.UNCLAIM_KEYS.format(" AND processed_at = %(at)s"),
                                   {"g": group, "keys": [claim.key], "at": now})
                if self._coordinates_keys.as_runs:
                    head, offset = key_runs.head_and_offset(claim.key)
                    await conn.execute(postgres.UNCLAIM_FROM_RUN.format(postgres.CLAIMED_AT),
                                       (group, head, offset, now))
                await conn.execute("COMMIT")
        except Exception as error:  # reported in the error the consumer stops with
            await _rollback_quietly(conn)
            unforgotten = error
        return MessageTransactionEnded(claim.topic, claim.partition, claim.offset,
                                       forgotten=1, unforgotten=unforgotten)

    async def _claim_row(self, conn: AsyncMessageConnection, group: str, claim: Claim,
                         now: float) -> bool:
        """Open the transaction and claim the key as a row
        (:func:`~consumer.store.postgres_pool.row_claim`); whether it was new. A generation
        sealed under the claim is read again and the claim made again."""
        for _ in range(CLAIM_ATTEMPTS):
            view = self._generations.view(group) or self._generations.read(
                group, await _listed(conn, group))
            await conn.execute(postgres_generations.opening(group))
            conn.marked = postgres_mark.marked(conn.pgconn)
            try:
                cursor = await conn.execute(*postgres_pool.row_claim(group, (claim,), now, view))
            except psycopg.errors.DivisionByZero:
                await conn.execute("ROLLBACK")
                self._generations.stale(group, view[0])
                continue
            return await cursor.fetchone() is not None
        raise generation_sealed(self._where, group)

    async def _open_run(self, conn: AsyncMessageConnection, group: str, now: float,
                        run: Run) -> bool:
        """Open the transaction with the claim of one message's run of one key
        (:class:`RunsOpening`); whether the key was new (a refused run of one: a duplicate)."""
        query = self._opening.query(conn, group, now, (run,))
        if not conn.runs_prepared:
            await conn.execute(postgres_runs.PREPARE_OPEN)
            conn.runs_prepared = True
        try:
            cursor = await conn.execute(query)
        except psycopg.errors.InvalidSqlStatementName:  # deallocated by psycopg
            await conn.execute("ROLLBACK")
            await conn.execute(postgres_runs.PREPARE_OPEN)
            cursor = await conn.execute(query)
        conn.marked = postgres_mark.marked(conn.pgconn)
        return bool(await postgres_runs.last_result(cursor).fetchall())

    async def _open(self) -> asyncio.Semaphore:
        """Open the pool on the running loop (the first message's call)."""
        if self._closed:
            raise StoreUnavailable(f"the async pool of PostgreSQL store {self._where} is "
                                   "closed (the consumer is stopping)")
        if self._slots is None:
            self._loop = asyncio.get_running_loop()
            await self._pool.open(wait=False)  # a second call while it opens: a no-op
            if self._slots is None:
                self._slots = asyncio.Semaphore(self._size)
        return self._slots

    async def _getconn(self) -> AsyncMessageConnection:
        try:
            return await self._pool.getconn()
        except PoolTimeout as error:
            raise StoreUnavailable(
                f"no connection to PostgreSQL store {self._where} within "
                f"{self._pool.timeout:g} s (the server is unreachable, or refuses new "
                f"connections): {error}") from error


async def _listed(conn: AsyncMessageConnection, group: str) -> list[Generation]:
    """:func:`postgres_generations.listed`, awaited."""
    for _ in range(2):
        cursor = await conn.execute(postgres_generations.LIST, (group,))
        generations = [Generation(*row) for row in await cursor.fetchall()]
        if generations and not generations[-1].sealed:
            break
        await conn.execute(postgres_generations.START,
                           (group, generations[-1].number + 1 if generations else 1))
    return generations


async def _run_work(conn: AsyncMessageConnection, work: AsyncWork) -> None:
    """``work`` on ``conn``'s open transaction, which it cannot end."""
    conn.handling = True
    try:
        await work(AsyncTransaction(conn))
    finally:
        conn.handling = False


async def _rollback_quietly(conn: psycopg.AsyncConnection[Any]) -> None:
    """End the transaction; on a broken connection there is nothing to end (the server
    rolled it back), and the pool replaces the connection."""
    if conn.closed or conn.broken:
        return
    try:
        await conn.rollback()
    except psycopg.Error as error:
        log.warning("rolling back a message's transaction failed: %s", error)
