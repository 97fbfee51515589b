"""A transaction per message for ``async def`` handlers (``Store.async_message_transactions``),
on a real PostgreSQL server and the event loop the consumer runs them on (uvloop's): the key
claim and the handler's awaited writes commit together; a failing, disconnected or
error-swallowing handler commits nothing; many messages at once share the pool's connections.
The whole consumer with an async handler: tests/integration/test_concurrent_store.py."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import psycopg
import pytest

from consumer.dedup import ordered_prefix
from consumer.engine.concurrency.runners import new_event_loop
from consumer.errors import (
    MessageTransactionEnded,
    StoreError,
    StoreUnavailable,
    TransactionEndRefused,
)
from consumer.store import AsyncMessageTransactions, Claim, PostgresSession
from consumer.store.postgres import PostgresStore
from consumer.store.postgres_async import AsyncTransaction
from tests.support.stores import StoreUnderTest

pytestmark = [pytest.mark.integration,
              pytest.mark.parametrize("store", ["postgresql"], indirect=True)]

GROUP = "g"
SIZE = 4
T = TypeVar("T")


def claim(n: int) -> Claim:
    return Claim(n.to_bytes(16, "big"), "orders", 0, n)


class Loop:
    """An event loop running in a thread of its own, as the consumer's async runner's."""

    def __init__(self) -> None:
        self.loop = new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Awaitable[T], timeout: float = 30.0) -> T:
        async def wrapped() -> T:
            return await coroutine
        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def loop() -> Iterator[Loop]:
    running = Loop()
    yield running
    running.stop()


@pytest.fixture
def transactions(store: StoreUnderTest, loop: Loop) -> Iterator[AsyncMessageTransactions]:
    owner = PostgresStore(store.url, session=PostgresSession(lock_timeout=1.0,
                                                             idle_in_transaction_timeout=3.0))
    owner.ensure_schema()
    store.execute("CREATE TABLE effects (n integer NOT NULL, pid integer)")
    pool = owner.async_message_transactions(SIZE)
    pool.open()
    yield pool
    pool.close()  # from this thread, while the loop runs: as the consumer's shutdown does
    owner.close()


def write(n: int) -> Callable[[Any], Awaitable[None]]:
    async def work(db: AsyncTransaction) -> None:
        await db.execute("INSERT INTO effects VALUES (%s, pg_backend_pid())", (n,))
    return work


def effects(store: StoreUnderTest) -> list[int]:
    return [n for (n,) in store.query("SELECT n FROM effects ORDER BY n")]


def keys(store: StoreUnderTest) -> int:
    return int(store.scalar("SELECT count(*) FROM consumer_processed_keys"))


def test_effects_commit_with_the_key_and_a_second_delivery_is_a_duplicate(
        store: StoreUnderTest, loop: Loop, transactions: AsyncMessageTransactions) -> None:
    seen: dict[str, Any] = {}

    async def work(db: AsyncTransaction) -> None:
        await write(1)(db)
        seen["in_transaction"] = (db.connection.info.transaction_status
                                  is psycopg.pq.TransactionStatus.INTRANS)
        seen["lock_timeout"] = await (await db.execute("SHOW lock_timeout")).fetchone()

    assert loop.run(transactions.apply(GROUP, claim(1), 1.0, work)) is True
    assert seen == {"in_transaction": True, "lock_timeout": ("1s",)}
    ran: list[int] = []

    async def again(db: AsyncTransaction) -> None:
        ran.append(1)

    assert loop.run(transactions.apply(GROUP, claim(1), 2.0, again)) is False
    assert ran == [], "a duplicate's work does not run"
    assert effects(store) == [1]
    assert store.query('SELECT topic, partition, "offset", processed_at '
                       "FROM consumer_processed_keys") == [("orders", 0, 1, 1.0)]


def test_a_failing_handler_rolls_back_its_writes_and_its_key_and_raises_unchanged(
        store: StoreUnderTest, loop: Loop, transactions: AsyncMessageTransactions) -> None:
    async def failing(db: AsyncTransaction) -> None:
        await write(1)(db)
        raise ValueError("bad message")

    with pytest.raises(ValueError, match="bad message"):
        loop.run(transactions.apply(GROUP, claim(1), 1.0, failing))
    assert effects(store) == [] and keys(store) == 0
    assert loop.run(transactions.apply(GROUP, claim(1), 2.0, write(1))) is True
    assert effects(store) == [1]


def test_coordinates_keys_open_their_transaction_with_their_claim_on_a_reused_connection(
        store: StoreUnderTest, loop: Loop, transactions: AsyncMessageTransactions) -> None:
    """A coordinates key opens the transaction with its claim in one query string, its
    statement prepared on the connection. Each of the pool's connections runs the handlers'
    statement often enough to make it psycopg's own prepared statement; a failing message's
    rollback then makes psycopg deallocate every statement, the claim's too. The messages
    after the failures still open, apply once, and second deliveries are duplicates."""
    def coordinates_claim(offset: int) -> Claim:
        return Claim(ordered_prefix("orders") + offset.to_bytes(8, "big"), "orders", 0, offset)

    async def failing(db: AsyncTransaction) -> None:
        await write(-1)(db)
        raise ValueError("bad message")

    async def apply_all(offsets: range) -> list[bool]:
        return [await transactions.apply(GROUP, coordinates_claim(n), 1.0, write(n))
                for n in offsets]

    assert loop.run(apply_all(range(8 * SIZE))) == [True] * (8 * SIZE)
    for n in range(SIZE):
        with pytest.raises(ValueError, match="bad message"):
            loop.run(transactions.apply(GROUP, coordinates_claim(1000 + n), 1.0, failing))
    assert loop.run(apply_all(range(8 * SIZE, 10 * SIZE))) == [True] * (2 * SIZE)
    assert loop.run(apply_all(range(2 * SIZE))) == [False] * (2 * SIZE)
    assert effects(store) == list(range(10 * SIZE))
    assert keys(store) == 0, "coordinates keys are kept as runs"


def test_a_lost_connection_inside_the_handler_is_transient_and_commits_nothing(
        store: StoreUnderTest, loop: Loop, transactions: AsyncMessageTransactions) -> None:
    async def killed(db: AsyncTransaction) -> None:
        await write(1)(db)
        await db.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    with pytest.raises(StoreUnavailable, match="transient database error"):
        loop.run(transactions.apply(GROUP, claim(1), 1.0, killed))
    assert effects(store) == [] and keys(store) == 0
    for n in range(1, 2 * SIZE + 1):  # every pooled connection works again
        assert loop.run(transactions.apply(GROUP, claim(n), 2.0, write(n))) is True
    assert effects(store) == list(range(1, 2 * SIZE + 1))


def test_a_handler_swallowing_its_database_error_is_not_counted_applied(
        store: StoreUnderTest, loop: Loop, transactions: AsyncMessageTransactions) -> None:
    async def swallowing(db: AsyncTransaction) -> None:
        await write(1)(db)
        with contextlib.suppress(psycopg.errors.DivisionByZero):
            await db.execute("SELECT 1 / 0")

    with pytest.raises(StoreUnavailable, match=r"caught a database error.*tried once more"):
        loop.run(transactions.apply(GROUP, claim(1), 1.0, swallowing))
    with pytest.raises(StoreError, match=r"caught a database error.*again") as again:
        loop.run(transactions.apply(GROUP, claim(1), 2.0, swallowing))
    assert not isinstance(again.value, StoreUnavailable)  # the second time stops
    assert effects(store) == [] and keys(store) == 0


def test_many_messages_at_once_share_the_pools_connections_and_apply_each_once(
        store: StoreUnderTest, loop: Loop, transactions: AsyncMessageTransactions) -> None:
    """200 messages delivered twice, all started at once: at most ``SIZE`` transactions are
    open together (the handlers wait for a slot without blocking the loop), more than one at
    a time, and every effect lands once."""
    open_now = most = 0

    def slow(n: int) -> Callable[[Any], Awaitable[None]]:
        async def work(db: AsyncTransaction) -> None:
            nonlocal open_now, most
            open_now += 1
            most = max(most, open_now)
            try:
                await asyncio.sleep(0.002)
                await write(n)(db)
            finally:
                open_now -= 1
        return work

    async def everything() -> list[bool]:
        return await asyncio.gather(*(transactions.apply(GROUP, claim(n % 200), 1.0,
                                                         slow(n % 200))
                                      for n in range(400)))

    outcomes = loop.run(everything(), timeout=60)
    assert outcomes.count(True) == 200 and outcomes.count(False) == 200
    assert effects(store) == list(range(200)) and keys(store) == 200
    assert 1 < most <= SIZE, most
    assert 1 < int(store.scalar("SELECT count(DISTINCT pid) FROM effects")) <= SIZE


def test_a_key_held_by_a_frozen_session_waits_the_lock_timeout_then_is_transient(
        store: StoreUnderTest, loop: Loop, transactions: AsyncMessageTransactions) -> None:
    """A zombie holds the key uncommitted: the claim waits ``lock_timeout`` (awaiting: the
    loop runs other messages meanwhile) and is StoreUnavailable (retried after backoff)."""
    zombie = PostgresStore(store.url)
    try:
        zombie.begin()
        zombie.claim(GROUP, [claim(1)], 1.0)

        async def both() -> tuple[Any, ...]:
            held = asyncio.ensure_future(transactions.apply(GROUP, claim(1), 2.0, write(1)))
            free = await transactions.apply(GROUP, claim(2), 2.0, write(2))
            assert not held.done(), "the free key committed while the held one waited"
            return free, *(await asyncio.gather(held, return_exceptions=True))

        free, held = loop.run(both())
        assert free is True
        assert isinstance(held, StoreUnavailable) and "lock_timeout" in str(held)
        assert effects(store) == [2]
    finally:
        zombie.close()


@pytest.mark.parametrize("how", ["commit", "rollback", "with"])
def test_a_handler_cannot_end_its_messages_transaction(
        store: StoreUnderTest, loop: Loop, transactions: AsyncMessageTransactions,
        how: str) -> None:
    """As with plain handlers (test_message_transactions.py): the connection refuses while
    the handler runs, nothing of the message commits, and the retry applies it once."""
    async def ending(db: AsyncTransaction) -> None:
        await write(1)(db)
        try:
            if how == "with":
                async with db.connection:
                    pass
            else:
                await getattr(db.connection, how)()
        except Exception:  # a handler swallowing what it can: the refusal is not one of them
            pass
        await write(2)(db)

    with pytest.raises(TransactionEndRefused, match="never end"):
        loop.run(transactions.apply(GROUP, claim(1), 1.0, ending))
    assert effects(store) == [] and keys(store) == 0
    assert loop.run(transactions.apply(GROUP, claim(1), 2.0, write(1))) is True
    assert effects(store) == [1]


@pytest.mark.parametrize("statement", ["COMMIT", "COMMIT; BEGIN"])
@pytest.mark.parametrize("then_raising", [False, True], ids=["returns", "raises"])
def test_a_commit_statement_stops_the_consumer_and_a_raising_handlers_key_is_forgotten(
        store: StoreUnderTest, loop: Loop, transactions: AsyncMessageTransactions,
        then_raising: bool, statement: str) -> None:
    """The handler sends ``COMMIT`` (its key and write commit), maybe opens a transaction of
    its own (libpq then reports one open, as the message's was), writes again, and returns
    or raises. Either way the consumer stops (a BaseException). Returned, the message is
    applied (its second write commits) and a second delivery is a duplicate; raised, its key
    is forgotten, so that its retry runs (its second write rolled back if in a transaction
    of its own)."""
    async def committing(db: AsyncTransaction) -> None:
        await write(1)(db)
        for part in statement.split("; "):
            await db.execute(part)
        await write(2)(db)
        if then_raising:
            raise ValueError("bad message")

    with pytest.raises(MessageTransactionEnded, match="with a statement"):
        loop.run(transactions.apply(GROUP, claim(1), 1.0, committing))
    own_transaction_rolled_back = then_raising and statement != "COMMIT"
    assert effects(store) == ([1] if own_transaction_rolled_back else [1, 2])
    assert loop.run(transactions.apply(GROUP, claim(1), 2.0, write(3))) is then_raising


def test_forgetting_after_a_rollback_statement_spares_a_key_another_session_claimed_since(
        store: StoreUnderTest, loop: Loop, transactions: AsyncMessageTransactions) -> None:
    """The handler sends ``ROLLBACK`` (its claim is gone), another session claims and commits
    the same key, then the handler raises: the other session's claim stays."""
    other = PostgresStore(store.url)

    async def work(db: AsyncTransaction) -> None:
        await db.execute("ROLLBACK")
        other.begin()  # blocks the loop a moment: a test's stand-in for another process
        assert claim(1).key in other.claim(GROUP, [claim(1)], 5.0)
        other.commit()
        raise ValueError("bad message")

    try:
        with pytest.raises(MessageTransactionEnded):
            loop.run(transactions.apply(GROUP, claim(1), 1.0, work))
    finally:
        other.close()
    assert loop.run(transactions.apply(GROUP, claim(1), 2.0, write(1))) is False


def test_a_deferred_constraint_failing_at_commit_is_the_messages_own_failure(
        store: StoreUnderTest, loop: Loop, transactions: AsyncMessageTransactions) -> None:
    """The COMMIT fails on a deferred foreign key the handler's write broke: psycopg's error
    reaches the message unchanged (its failure policy decides), and nothing is committed."""
    from tests.support.deferred_handler import SCHEMA

    for statement in SCHEMA:
        store.execute(statement)

    async def orphan(db: AsyncTransaction) -> None:
        await db.execute('INSERT INTO children ("offset", parent) VALUES (1, 2)')

    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        loop.run(transactions.apply(GROUP, claim(1), 1.0, orphan))
    assert store.query("SELECT count(*) FROM children") == [(0,)] and keys(store) == 0
