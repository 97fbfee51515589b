"""MariaDB transactions of one message each for ``async def`` handlers.

PyMySQL is synchronous, so every statement of a message's transaction (the claim, the
handler's ``await context.execute(...)``, the commit) runs on a thread of a pool of this
class's own while the event loop goes on; the transaction's steps are
:class:`~consumer.store.mariadb_pool.MariaDBTransactions`' (claim, the guard, DDL, deadlocks),
each awaited. A message holds a connection from its claim to its commit, so at most ``size``
messages are inside a transaction at once; the others wait for a slot without blocking the loop.
Each statement costs a hand-over to a thread and back, which a native asynchronous driver
would not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from consumer.errors import StoreError
from consumer.store.base import Claim
from consumer.store.mariadb_pool import MariaDBTransactions
from consumer.store.mariadb_session import MariaDBConnection, MariaDBCursor

T = TypeVar("T")
Call = Callable[..., Awaitable[Any]]


class AsyncTransaction:
    """``context.db`` and ``context.execute`` inside one message's transaction, for an
    ``async def`` handler: ``await context.execute(sql, params)``. ``context.db`` is the
    PyMySQL connection itself: call it only through ``context.execute``, which runs each
    statement off the event loop."""

    __slots__ = ("_call", "connection")

    def __init__(self, connection: MariaDBConnection, call: Call) -> None:
        self.connection = connection
        self._call = call

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> MariaDBCursor:
        cursor: MariaDBCursor = await self._call(self.connection.execute, sql, params)
        return cursor


class AsyncMariaDBTransactions:
    """``size`` slots on the event loop, each a message's transaction on a connection of
    ``transactions``, its statements on a thread of this class's own."""

    def __init__(self, transactions: MariaDBTransactions, *, size: int) -> None:
        self._transactions = transactions
        self._size = max(1, size)
        self._threads: ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None

    def open(self) -> None:
        self._transactions.open()
        self._threads = ThreadPoolExecutor(self._size, thread_name_prefix="consumer-mariadb")

    def close(self) -> None:
        """May be called from another thread while the loop runs."""
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        self._transactions.close()

    async def apply(self, group: str, claim: Claim, now: float,
                    work: Callable[[Any], Awaitable[None]]) -> bool:
        """As :meth:`MariaDBTransactions.apply`, the work awaited on the event loop."""
        if self._slots is None:  # made on the loop that uses it
            self._slots = asyncio.Semaphore(self._size)
        threads = self._threads
        if threads is None:
            raise StoreError("AsyncMariaDBTransactions.apply before open()")
        #: The connection's latest statement on a thread (a concurrent future: done only once
        #: the thread is, whatever happened to the task awaiting it).
        running: list[Future[Any]] = []

        async def call(function: Callable[..., T], *args: Any) -> T:
            """``function`` on a thread, once the connection's previous statement returned
            (a cancelled await leaves it running there)."""
            if running and not running[0].done():
                await asyncio.wait([asyncio.wrap_future(running[0])])
            future = threads.submit(function, *args)
            running[:] = [future]
            return await asyncio.wrap_future(future)

        transactions = self._transactions
        async with self._slots:
            conn = await call(transactions.borrow)
            try:
                if not await call(transactions.opened, conn, group, claim, now):
                    return False
                try:
                    await work(AsyncTransaction(conn, call))
                except BaseException as error:
                    replaced = await call(transactions.failed, conn, group, claim, error)
                    if replaced is None:
                        raise
                    raise replaced from error
                await call(transactions.finish, conn, group, claim)
                return True
            finally:
                if running and not running[0].done():
                    # cancelled while a statement runs on its thread: the connection goes
                    # back once it returns (on that thread), never while it is in use
                    running[0].add_done_callback(lambda _: transactions.give_back(conn))
                else:
                    # no round trip unless a transaction is left open (cancelled between
                    # statements): then its rollback blocks the loop once
                    transactions.give_back(conn)
