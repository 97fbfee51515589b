"""A transaction per message on MariaDB connections of their own
(``MariaDBStore.message_transactions``), on a real server: the unit concurrent handlers apply
their effects with. The key claim and the handler's writes commit together; a key another
session claimed, uncommitted, makes the claim wait for that session's outcome, so of two owners
of one message exactly one applies it. InnoDB's deadlock rolls the whole transaction back: a
handler that catches it commits nothing. A handler's DDL, which commits implicitly, stops the
consumer."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from consumer.dedup import ordered_prefix
from consumer.errors import MessageTransactionEnded, StoreUnavailable, TransactionEndRefused
from consumer.message import StoreLike
from consumer.store import Claim, MessageTransactions
from consumer.store.mariadb import MariaDBStore
from tests.integration.test_database_errors_in_handlers import Other, _wait_for_a_lock_wait
from tests.support.stores import StoreUnderTest, fresh_store

pytestmark = pytest.mark.integration

LOCK = 1
IDLE = 3
MARGIN = 2.0  # scheduling on a shared two-core machine
GROUP = "g"


def claim(n: int) -> Claim:
    return Claim(n.to_bytes(16, "big"), "orders", 0, n)


def coordinates_claim(offset: int, partition: int = 0) -> Claim:
    """A claim of the message's ordered coordinates key: a new store keeps it in a run."""
    key = ordered_prefix("orders") + ((partition << 48) | offset).to_bytes(8, "big")
    return Claim(key, "orders", partition, offset)


@pytest.fixture
def database(mariadb_url: str, tmp_path: Path) -> Iterator[StoreUnderTest]:
    with fresh_store("mariadb", tmp_path, mariadb_url) as found:
        found.execute("CREATE TABLE effects (n INT NOT NULL, worker varchar(32) NOT NULL)")
        yield found


@pytest.fixture
def owner(database: StoreUnderTest) -> Iterator[MariaDBStore]:
    """The poll thread's store (schema ensured), with short session bounds."""
    opened = MariaDBStore(database.url, lock_wait_timeout=LOCK, idle_transaction_timeout=IDLE,
                          generation_keys=4)
    opened.ensure_schema(GROUP)
    opened.use_topic_ids({})
    yield opened
    opened.close()


@pytest.fixture
def transactions(owner: MariaDBStore) -> Iterator[MessageTransactions]:
    pool = owner.message_transactions(4)
    pool.open()
    yield pool
    pool.close()


def write(n: int, worker: str = "") -> Callable[[StoreLike], None]:
    def work(db: StoreLike) -> None:
        db.execute("INSERT INTO effects VALUES (%s, %s)", (n, worker))
    return work


def failing(n: int) -> Callable[[StoreLike], None]:
    def work(db: StoreLike) -> None:
        db.execute("INSERT INTO effects VALUES (%s, 'failing')", (n,))
        raise ValueError(f"message {n} failed")
    return work


def wait_for_a_lock_wait(database: StoreUnderTest, what: str, timeout: float = 10) -> None:
    """Until a session of this test's database (the server is shared) waits for a lock.
    InnoDB refreshes ``innodb_trx`` only once it has not been read for 0.1 s: polled faster,
    it never changes."""
    deadline = time.monotonic() + timeout
    while not database.scalar(
            "SELECT count(*) FROM information_schema.innodb_trx AS t JOIN "
            "information_schema.processlist AS p ON p.id = t.trx_mysql_thread_id "
            "WHERE t.trx_state = 'LOCK WAIT' AND p.db = DATABASE()"):
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def effects(database: StoreUnderTest) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in database.query(
        "SELECT n, worker FROM effects ORDER BY n, worker")]


def keys(database: StoreUnderTest) -> int:
    return int(database.scalar("SELECT count(*) FROM consumer_processed_keys"))


def test_effects_commit_with_the_key_and_a_second_delivery_is_a_duplicate(
        database: StoreUnderTest, transactions: MessageTransactions) -> None:
    assert transactions.apply(GROUP, claim(1), 1.0, write(1)) is True
    ran: list[int] = []
    assert transactions.apply(GROUP, claim(1), 2.0, lambda db: ran.append(1)) is False
    assert ran == [], "a duplicate's work does not run"
    assert effects(database) == [(1, "")]
    assert database.query('SELECT topic, "partition", "offset", processed_at '
                          "FROM consumer_processed_keys") == [("orders", 0, 1, 1.0)]


def test_context_db_is_the_transactions_own_connection_with_the_session_bounds(
        transactions: MessageTransactions) -> None:
    seen: dict[str, Any] = {}

    def work(db: StoreLike) -> None:
        seen.update(zip(("lock", "idle", "isolation", "in_transaction"), db.execute(
            "SELECT @@innodb_lock_wait_timeout, @@idle_transaction_timeout, "
            "@@tx_isolation, @@in_transaction").fetchone(), strict=True))

    assert transactions.apply(GROUP, claim(1), 1.0, work)
    assert seen == {"lock": LOCK, "idle": IDLE, "isolation": "READ-COMMITTED",
                    "in_transaction": 1}


def test_a_failing_handler_rolls_back_its_writes_and_its_key_and_raises_unchanged(
        database: StoreUnderTest, transactions: MessageTransactions) -> None:
    with pytest.raises(ValueError, match="message 1 failed"):
        transactions.apply(GROUP, claim(1), 1.0, failing(1))
    assert effects(database) == [] and keys(database) == 0
    assert transactions.apply(GROUP, claim(1), 2.0, write(1)) is True, "a retry applies it"
    assert effects(database) == [(1, "")]


def test_a_lost_connection_inside_the_handler_is_transient_and_commits_nothing(
        database: StoreUnderTest, transactions: MessageTransactions) -> None:
    """The server ends the session mid-handler: StoreUnavailable, not the message's failure;
    nothing committed; the lost connection is dropped and the retry applies the message once."""
    def killed(db: StoreLike) -> None:
        db.execute("INSERT INTO effects VALUES (1, 'lost')")
        db.execute("KILL CONNECTION CONNECTION_ID()")

    with pytest.raises(StoreUnavailable, match="transient database error"):
        transactions.apply(GROUP, claim(1), 1.0, killed)
    assert effects(database) == [] and keys(database) == 0
    for n in range(1, 9):
        assert transactions.apply(GROUP, claim(n), 2.0, write(n))
    assert [n for n, _ in effects(database)] == list(range(1, 9))


@pytest.fixture
def patient(database: StoreUnderTest) -> Iterator[MessageTransactions]:
    """A pool whose claims wait long enough for a test to end the transaction they wait for."""
    store = MariaDBStore(database.url, lock_wait_timeout=30, idle_transaction_timeout=60)
    store.ensure_schema(GROUP)
    pool = store.message_transactions(2)
    pool.open()
    yield pool
    pool.close()
    store.close()


@pytest.mark.parametrize("first_commits", [True, False], ids=["commits", "rolls-back"])
def test_two_transactions_claiming_one_key_at_once_apply_it_once(
        database: StoreUnderTest, patient: MessageTransactions, first_commits: bool) -> None:
    """Two owners run the same message at once. The second claim waits for the first
    transaction: when it commits, the second sees the key and skips its work; when it rolls
    back (its handler failed), the second applies."""
    transactions = patient
    inside, release = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def first(db: StoreLike) -> None:
        db.execute("INSERT INTO effects VALUES (1, 'first')")
        inside.set()
        release.wait(10)
        if not first_commits:
            raise RuntimeError("first owner's handler failed")

    def run_first() -> None:
        try:
            results["first"] = transactions.apply(GROUP, claim(1), 1.0, first)
        except RuntimeError:
            results["first"] = "failed"

    def run_second() -> None:
        results["second"] = transactions.apply(GROUP, claim(1), 2.0, write(1, "second"))

    runner, second = threading.Thread(target=run_first), threading.Thread(target=run_second)
    runner.start()
    assert inside.wait(10)
    second.start()
    wait_for_a_lock_wait(database, "the second claim never waited for the first")
    assert second.is_alive(), "the second claim waits for the first transaction"
    release.set()
    runner.join(10)
    second.join(10)
    if first_commits:
        assert results == {"first": True, "second": False}
        assert effects(database) == [(1, "first")]
    else:
        assert results == {"first": "failed", "second": True}
        assert effects(database) == [(1, "second")]
    assert keys(database) == 1


def test_a_frozen_holder_delays_a_claim_by_the_lock_wait_then_its_key_is_ours(
        database: StoreUnderTest, transactions: MessageTransactions) -> None:
    """A zombie claimed the key and froze inside its transaction. Each attempt of the new
    owner fails after the lock wait as StoreUnavailable (retry after backoff); once the server
    ends the zombie's idle transaction, the claim is the new owner's and applies."""
    zombie = MariaDBStore(database.url, lock_wait_timeout=LOCK, idle_transaction_timeout=IDLE)
    try:
        zombie.begin()
        assert zombie.claim(GROUP, [claim(1)], 1.0) == {claim(1).key}
        zombie.execute("INSERT INTO effects VALUES (1, 'zombie')")
        frozen_at = time.monotonic()
        with pytest.raises(StoreUnavailable, match="mariadb_lock_wait_timeout_seconds"):
            transactions.apply(GROUP, claim(1), 2.0, write(1, "owner"))
        assert LOCK - 0.2 <= time.monotonic() - frozen_at <= LOCK + MARGIN
        applied = None
        while applied is None:
            try:
                applied = transactions.apply(GROUP, claim(1), 2.0, write(1, "owner"))
            except StoreUnavailable:
                time.sleep(0.2)  # the worker's backoff
        waited = time.monotonic() - frozen_at
        assert applied is True
        assert IDLE - 0.5 <= waited <= IDLE + LOCK + MARGIN, waited
        assert effects(database) == [(1, "owner")], "the zombie's uncommitted effect is gone"
    finally:
        with contextlib.suppress(Exception):
            zombie.close()


def test_many_threads_apply_each_message_once(
        database: StoreUnderTest, transactions: MessageTransactions) -> None:
    """Eight workers over four connections, every message delivered to each: every effect
    once."""
    errors: list[BaseException] = []

    def worker() -> None:
        for n in range(200):
            while True:
                try:
                    transactions.apply(GROUP, claim(n), 1.0, write(n, "w"))
                    break
                except StoreUnavailable:  # a lock wait or a deadlock: retried, as workers do
                    continue
                except BaseException as error:
                    errors.append(error)
                    return

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert database.scalar("SELECT count(*) FROM effects") == 200
    assert database.scalar("SELECT count(DISTINCT n) FROM effects") == 200
    assert keys(database) == 200


@pytest.mark.parametrize("after", ["raise", "write", "return"])
def test_a_real_deadlock_under_a_handler_commits_nothing_and_the_retry_applies_once(
        database: StoreUnderTest, transactions: MessageTransactions, after: str) -> None:
    """The handler and another session (which changed 2,000 rows, so InnoDB picks the
    handler's transaction as the victim) lock two rows in opposite orders. InnoDB rolls the
    message's whole transaction back, its key with it, and the connection is in autocommit:
    whether the handler lets the error go, catches it and writes on, or catches it and
    returns, nothing of the message commits, it is StoreUnavailable (retried), and the retry
    applies it once."""
    database.execute("CREATE TABLE pair (id INT PRIMARY KEY, v INT NOT NULL)")
    database.execute("INSERT INTO pair VALUES (1, 0), (2, 0)")
    database.execute("CREATE TABLE ballast (id INT PRIMARY KEY, v INT NOT NULL)")
    database.execute("INSERT INTO ballast SELECT seq, 0 FROM seq_1_to_2000")
    deadlocks: list[str] = []

    def crossing(db: StoreLike) -> None:
        db.execute("INSERT INTO effects VALUES (1, 'before')")
        other = Other(database)
        try:
            other.execute("UPDATE ballast SET v = v + 1")
            other.execute("UPDATE pair SET v = v + 1 WHERE id = 2")
            db.execute("SET SESSION innodb_lock_wait_timeout = 10")
            db.execute("UPDATE pair SET v = v + 1 WHERE id = 1")
            closing = threading.Thread(target=lambda: (
                _wait_for_a_lock_wait(database),
                other.execute("UPDATE pair SET v = v + 1 WHERE id = 1")))
            closing.start()
            try:
                db.execute("UPDATE pair SET v = v + 1 WHERE id = 2")  # waits: a cycle
            except pymysql.err.OperationalError as error:
                deadlocks.append(str(error.args[0]))
                if after == "raise":
                    raise
                if after == "return":
                    return
                with contextlib.suppress(StoreUnavailable):  # refused: it would autocommit
                    db.execute("INSERT INTO effects VALUES (1, 'after')")
            finally:
                closing.join(timeout=30)
                other.commit()
        finally:
            other.close()

    with pytest.raises(StoreUnavailable):
        transactions.apply(GROUP, claim(1), 1.0, crossing)
    assert deadlocks == ["1213"]
    assert effects(database) == [] and keys(database) == 0, "nothing of the message committed"
    assert transactions.apply(GROUP, claim(1), 2.0, write(1)) is True
    assert effects(database) == [(1, "")]


@pytest.mark.parametrize("statement", ["COMMIT", "ROLLBACK", "BEGIN", "START TRANSACTION"])
def test_a_transaction_statement_in_a_handler_is_refused_and_nothing_commits(
        database: StoreUnderTest, transactions: MessageTransactions, statement: str) -> None:
    def ending(db: StoreLike) -> None:
        db.execute("INSERT INTO effects VALUES (1, 'ending')")
        db.execute(statement)

    with pytest.raises(TransactionEndRefused, match=statement):
        transactions.apply(GROUP, claim(1), 1.0, ending)
    assert effects(database) == [] and keys(database) == 0
    assert transactions.apply(GROUP, claim(1), 2.0, write(1)) is True


@pytest.mark.parametrize("raises", [False, True], ids=["returns", "raises"])
def test_ddl_in_a_handler_stops_the_consumer_and_a_failed_message_keeps_no_key(
        database: StoreUnderTest, transactions: MessageTransactions, raises: bool) -> None:
    """MariaDB commits the open transaction on DDL, the key with the writes before it. A
    handler that then returns applied its message (the key stays); one that raises did not:
    its key is forgotten, so the message runs again after the restart."""
    def creating(db: StoreLike) -> None:
        db.execute("INSERT INTO effects VALUES (1, 'before')")
        db.execute("CREATE TABLE IF NOT EXISTS made_by_a_handler (n INT)")
        if raises:
            raise ValueError("failed after the DDL")

    with pytest.raises(MessageTransactionEnded) as stopped:
        transactions.apply(GROUP, claim(1), 1.0, creating)
    assert effects(database) == [(1, "before")], "the DDL committed the writes before it"
    assert keys(database) == (0 if raises else 1)
    assert ("were forgotten again" if raises else "no key was left to forget") in \
        str(stopped.value)


@pytest.mark.parametrize("position", [0, 2, 4], ids=["first", "middle", "last"])
def test_a_failing_message_in_a_micro_batch_leaves_its_neighbours_applied_exactly_once(
        database: StoreUnderTest, transactions: MessageTransactions, position: int) -> None:
    works = [failing(n) if n == position else write(n) for n in range(5)]
    outcomes = transactions.apply_batch(GROUP, [claim(n) for n in range(5)], 1.0, works)
    error = outcomes[position]
    assert isinstance(error, ValueError) and str(error) == f"message {position} failed"
    assert [o for n, o in enumerate(outcomes) if n != position] == [True] * 4
    assert sorted(n for n, _ in effects(database)) == [n for n in range(5) if n != position]
    assert keys(database) == 4
    assert transactions.apply_batch(GROUP, [claim(1), claim(position)], 2.0,
                                    [write(1), write(position)]) == [False, True]


def test_coordinates_keys_go_into_runs_and_a_second_delivery_is_a_duplicate(
        database: StoreUnderTest, transactions: MessageTransactions) -> None:
    for offset in range(8):
        assert transactions.apply(GROUP, coordinates_claim(offset), 1.0, write(offset))
    with pytest.raises(ValueError, match="message 8 failed"):
        transactions.apply(GROUP, coordinates_claim(8), 1.0, failing(8))
    assert transactions.apply(GROUP, coordinates_claim(9), 1.0, write(9))
    assert [transactions.apply(GROUP, coordinates_claim(offset), 2.0, write(offset, "again"))
            for offset in (0, 7, 8, 9)] == [False, False, True, False]
    assert [n for n, _ in effects(database)] == list(range(10))
    assert keys(database) == 0, "no key went in as a row of its own"
    assert database.scalar("SELECT sum(key_last - key_first + 1) "
                           "FROM consumer_processed_runs") == 10


def test_a_key_of_a_sealed_generation_is_a_duplicate(
        database: StoreUnderTest, owner: MariaDBStore,
        transactions: MessageTransactions) -> None:
    """A pool keeps no filters: it asks the sealed generations about every key, and reads
    them again once the current generation moved on."""
    assert transactions.apply(GROUP, claim(100), 1.0, write(100))
    for first in (0, 4):  # the owner's batches: the second seals generation 1 (four keys)
        owner.begin()
        owner.claim(GROUP, [claim(n) for n in range(first, first + 4)], 1.0)
        owner.commit()
    assert database.query("SELECT generation, newest_at IS NOT NULL "
                          "FROM consumer_key_generations ORDER BY generation") == [(1, 1), (2, 0)]
    assert transactions.apply(GROUP, claim(100), 2.0, write(100, "again")) is False
    assert transactions.apply(GROUP, claim(0), 2.0, write(0, "again")) is False
    assert transactions.apply(GROUP, claim(200), 2.0, write(200)) is True
    assert database.scalar("SELECT generation FROM consumer_processed_keys "
                           "WHERE \"key\" = %s", (claim(200).key,)) == 2
    assert effects(database) == [(100, ""), (200, "")]


def _held_open(transactions: MessageTransactions, claim_of: Claim,
               inside: threading.Event, release: threading.Event,
               results: dict[str, Any]) -> threading.Thread:
    """A thread applying ``claim_of`` whose work waits, inside its transaction, for
    ``release``."""
    def work(db: StoreLike) -> None:
        db.execute("INSERT INTO effects VALUES (%s, 'held')", (claim_of.offset,))
        inside.set()
        release.wait(20)

    def run() -> None:
        results["held"] = transactions.apply(GROUP, claim_of, 1.0, work)

    thread = threading.Thread(target=run)
    thread.start()
    assert inside.wait(10), "the held transaction never started its work"
    return thread


def test_coordinates_keys_of_one_partition_apply_side_by_side(
        database: StoreUnderTest, patient: MessageTransactions) -> None:
    """A pool takes its partition's turn shared: a message's transaction held open does not
    hold back the next offsets of its partition (each a run of one key)."""
    inside, release, results = threading.Event(), threading.Event(), {}
    held = _held_open(patient, coordinates_claim(0), inside, release, results)
    try:
        began = time.monotonic()
        assert [patient.apply(GROUP, coordinates_claim(n), 1.0, write(n))
                for n in (1, 2)] == [True, True]
        assert time.monotonic() - began < 5, "the claims waited for the held transaction"
        assert held.is_alive()
    finally:
        release.set()
        held.join(20)
    assert results == {"held": True}
    assert [n for n, _ in effects(database)] == [0, 1, 2]


def test_a_batch_claiming_a_run_waits_for_a_pools_open_claim_and_skips_its_key(
        database: StoreUnderTest, owner: MariaDBStore,
        patient: MessageTransactions) -> None:
    """The batch store takes the partition's turn exclusively: it waits for the pool's open
    transaction, then reads its run of one and claims the stretches around it."""
    inside, release, results = threading.Event(), threading.Event(), {}
    held = _held_open(patient, coordinates_claim(5), inside, release, results)
    claimed: dict[str, Any] = {}

    def batch() -> None:
        owner.begin()
        claimed["keys"] = set(owner.claim(GROUP, [coordinates_claim(n) for n in range(10)],
                                          2.0))
        owner.commit()

    batching = threading.Thread(target=batch)
    try:
        batching.start()
        wait_for_a_lock_wait(database, "the batch never waited for the pool's turn")
    finally:
        release.set()
        held.join(20)
        batching.join(20)
    assert results == {"held": True}
    assert claimed["keys"] == {coordinates_claim(n).key for n in range(10) if n != 5}


def test_a_pools_claim_waits_for_a_batch_holding_the_partitions_turn(
        database: StoreUnderTest, owner: MariaDBStore,
        patient: MessageTransactions) -> None:
    owner.begin()
    owner.claim(GROUP, [coordinates_claim(n) for n in range(10)], 1.0)
    result: dict[str, bool] = {}
    waiting = threading.Thread(target=lambda: result.setdefault(
        "pool", patient.apply(GROUP, coordinates_claim(5), 2.0, write(5, "pool"))))
    waiting.start()
    try:
        wait_for_a_lock_wait(database, "the pool's claim never waited for the batch")
    finally:
        owner.commit()
        waiting.join(20)
    assert result == {"pool": False}, "the batch's run holds the key"
    assert effects(database) == []


def test_a_micro_batch_commits_every_new_message_and_skips_processed_keys(
        database: StoreUnderTest, transactions: MessageTransactions) -> None:
    """One claim, one commit: keys processed before (and a key twice in the batch) are
    duplicates, their work does not run; the others apply once. Rows and runs together."""
    assert transactions.apply(GROUP, claim(2), 1.0, write(2, "before")) is True
    assert transactions.apply(GROUP, coordinates_claim(21), 1.0, write(21, "before")) is True
    claims = [claim(1), claim(2), claim(3), claim(3), coordinates_claim(20),
              coordinates_claim(21), coordinates_claim(22), coordinates_claim(22)]
    works = [write(1), write(2), write(3), write(3, "again"), write(20), write(21), write(22),
             write(22, "again")]
    assert transactions.apply_batch(GROUP, claims, 2.0, works) == [
        True, False, True, False, True, False, True, False]
    assert effects(database) == [(1, ""), (2, "before"), (3, ""), (20, ""), (21, "before"),
                                 (22, "")]
    assert keys(database) == 3
    assert database.scalar("SELECT count(*) FROM consumer_processed_runs") == 3


def test_ddl_in_a_micro_batch_forgets_the_keys_of_the_messages_after_it(
        database: StoreUnderTest, transactions: MessageTransactions) -> None:
    """The DDL of the second message commits the batch's transaction, every key claimed in
    it with it: the key of the third message, not applied, is forgotten again."""
    def creating(db: StoreLike) -> None:
        db.execute("INSERT INTO effects VALUES (2, '')")
        db.execute("CREATE TABLE IF NOT EXISTS made_by_a_handler (n INT)")

    outcomes = transactions.apply_batch(GROUP, [claim(1), claim(2), claim(3)], 1.0,
                                        [write(1), creating, write(3)])
    assert isinstance(outcomes[1], MessageTransactionEnded)
    assert "1 keys claimed for messages of that transaction" in str(outcomes[1])
    assert effects(database) == [(1, ""), (2, "")]
    assert sorted(database.query('SELECT "offset" FROM consumer_processed_keys')) == [(1,), (2,)]
    assert database.scalar("SELECT count(*) FROM consumer_processed_run_heads") == 0, \
        "a key kept as a row has no partition's turn to take"


def test_ddl_in_a_micro_batch_of_coordinates_keys_takes_the_key_after_it_out_of_its_run(
        database: StoreUnderTest, transactions: MessageTransactions) -> None:
    def creating(db: StoreLike) -> None:
        db.execute("INSERT INTO effects VALUES (1, '')")
        db.execute("CREATE TABLE IF NOT EXISTS made_by_a_handler (n INT)")

    outcomes = transactions.apply_batch(
        GROUP, [coordinates_claim(n) for n in range(3)], 1.0, [write(0), creating, write(2)])
    assert isinstance(outcomes[1], MessageTransactionEnded)
    assert database.query("SELECT key_first, key_last FROM consumer_processed_runs "
                          "ORDER BY key_first") == [(0, 0), (1, 1)]
    assert transactions.apply(GROUP, coordinates_claim(2), 2.0, write(2)) is True


def test_many_threads_applying_overlapping_micro_batches_apply_each_message_once(
        database: StoreUnderTest, transactions: MessageTransactions) -> None:
    """Eight workers over four connections, each applying micro-batches of 8 that mix rows
    and runs of one key, every message in batches of two workers, in different orders:
    every effect once, every key once. Lock waits and deadlocks are retried, as workers do."""
    errors: list[BaseException] = []

    def message(n: int) -> Claim:
        return claim(n) if n % 2 else coordinates_claim(n)

    def worker(index: int) -> None:
        numbers = list(range(160))
        if index % 2:
            numbers.reverse()
        for first in range(0, 160, 8):
            batch = numbers[first:first + 8]
            pending = list(batch)
            while pending:
                outcomes = transactions.apply_batch(GROUP, [message(n) for n in pending], 1.0,
                                                    [write(n, "w") for n in pending])
                retry = []
                for n, outcome in zip(pending, outcomes, strict=True):
                    if isinstance(outcome, StoreUnavailable):
                        retry.append(n)
                    elif isinstance(outcome, BaseException):
                        errors.append(outcome)
                pending = retry

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert database.scalar("SELECT count(*) FROM effects") == 160
    assert database.scalar("SELECT count(DISTINCT n) FROM effects") == 160
    assert keys(database) == 80
    assert database.scalar("SELECT count(*) FROM consumer_processed_runs") == 80


# --- async def handlers: the same transactions, each statement awaited off the event loop ---

def test_an_async_handler_awaits_its_statements_inside_the_messages_transaction(
        database: StoreUnderTest, owner: MariaDBStore) -> None:
    """Four messages at once on two slots: each applies once with its key, a second delivery
    is a duplicate, a failing handler keeps neither its write nor its key, a transaction
    statement is refused; the event loop keeps running while statements wait."""
    pool = owner.async_message_transactions(2)
    pool.open()
    ticks: list[float] = []

    async def write_async(n: int, db: Any) -> None:
        await db.execute("INSERT INTO effects VALUES (%s, 'async')", (n,))
        await asyncio.sleep(0.05)
        in_transaction = (await db.execute("SELECT @@in_transaction")).fetchone()[0]
        assert in_transaction == 1

    async def failing_async(db: Any) -> None:
        await db.execute("INSERT INTO effects VALUES (9, 'failing')")
        raise ValueError("message 9 failed")

    async def ending_async(db: Any) -> None:
        await db.execute("INSERT INTO effects VALUES (8, 'ending')")
        await db.execute("COMMIT")

    async def ticking() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def scenario() -> list[Any]:
        ticker = asyncio.create_task(ticking())
        try:
            applied = await asyncio.gather(*(
                pool.apply(GROUP, claim(n), 1.0, lambda db, n=n: write_async(n, db))
                for n in range(4)))
            again = await pool.apply(GROUP, claim(1), 2.0, lambda db: write_async(1, db))
            outcomes = await asyncio.gather(
                pool.apply(GROUP, claim(9), 1.0, failing_async),
                pool.apply(GROUP, claim(8), 1.0, ending_async), return_exceptions=True)
            return [applied, again, outcomes]
        finally:
            ticker.cancel()

    try:
        applied, again, (failed, refused) = asyncio.run(scenario())
    finally:
        pool.close()
    assert applied == [True] * 4 and again is False
    assert isinstance(failed, ValueError) and str(failed) == "message 9 failed"
    assert isinstance(refused, TransactionEndRefused)
    assert effects(database) == [(n, "async") for n in range(4)]
    assert keys(database) == 4
    assert len(ticks) > 10, "the event loop waited for the statements"


def test_an_async_message_cancelled_while_its_statement_runs_gives_its_connection_back_after(
        database: StoreUnderTest, owner: MariaDBStore, caplog: pytest.LogCaptureFixture) -> None:
    """Cancelled (a shutdown's deadline) while a statement of its handler runs on a thread:
    the connection goes back only once the statement returns, then rolls back; the message's
    key is free again and the next delivery applies it. (Given back at once, its rollback
    raced the thread on the connection: "Packet sequence number wrong".)"""
    pool = owner.async_message_transactions(2)
    pool.open()

    async def sleeper(db: Any) -> None:
        await db.execute("INSERT INTO effects VALUES (1, 'cancelled')")
        await db.execute("SELECT SLEEP(1)")

    async def after(db: Any) -> None:
        await db.execute("INSERT INTO effects VALUES (1, 'after')")

    async def scenario() -> bool:
        task = asyncio.create_task(pool.apply(GROUP, claim(1), 1.0, sleeper))
        while database.scalar("SELECT count(*) FROM information_schema.processlist "
                              "WHERE info = 'SELECT SLEEP(1)'") == 0:
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await pool.apply(GROUP, claim(1), 2.0, after)

    try:
        assert asyncio.run(scenario()) is True
    finally:
        pool.close()
    assert effects(database) == [(1, "after")]
    assert keys(database) == 1
    assert not [r for r in caplog.records if "rolling back" in r.getMessage()], \
        "the connection was rolled back while a thread still used it"
