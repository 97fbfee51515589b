"""A transaction per message on pooled connections (``Store.message_transactions``), on a real
PostgreSQL server: the unit concurrent handlers apply their effects with. The key claim and the
handler's writes commit together; a key claimed by another session, uncommitted, makes the
claim wait for that session's outcome, so of two owners of one message exactly one applies it.
SQLite refuses (one writer): tests/unit/store/test_sqlite.py."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from consumer.dedup import ordered_prefix
from consumer.errors import (
    MessageTransactionEnded,
    StoreError,
    StoreUnavailable,
    TransactionEndRefused,
)
from consumer.message import StoreLike
from consumer.store import Claim, MessageTransactions, PostgresSession
from consumer.store.postgres import PostgresStore
from tests.support.stores import StoreUnderTest

pytestmark = [pytest.mark.integration,
              pytest.mark.parametrize("store", ["postgresql"], indirect=True)]

LOCK = 1.0
IDLE = 3.0
MARGIN = 2.0  # scheduling on a shared two-core machine
GROUP = "g"


def claim(n: int) -> Claim:
    return Claim(n.to_bytes(16, "big"), "orders", 0, n)


@pytest.fixture
def owner(store: StoreUnderTest) -> Iterator[PostgresStore]:
    """The poll thread's store (schema ensured), with short session bounds; and a table for
    the handlers' effects."""
    opened = PostgresStore(store.url, session=PostgresSession(lock_timeout=LOCK,
                                                              idle_in_transaction_timeout=IDLE))
    opened.ensure_schema()
    store.execute("CREATE TABLE effects (n integer NOT NULL, worker text)")
    yield opened
    opened.close()


@pytest.fixture
def transactions(owner: PostgresStore) -> Iterator[MessageTransactions]:
    pool = owner.message_transactions(4)
    pool.open()
    yield pool
    pool.close()


def write(n: int, worker: str = "") -> Callable[[StoreLike], None]:
    def work(db: StoreLike) -> None:
        db.execute("INSERT INTO effects VALUES (%s, %s)", (n, worker))
    return work


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def effects(store: StoreUnderTest) -> list[tuple[Any, ...]]:
    return store.query("SELECT n, worker FROM effects ORDER BY n, worker")


def keys(store: StoreUnderTest) -> int:
    return int(store.scalar("SELECT count(*) FROM consumer_processed_keys"))


def test_effects_commit_with_the_key_and_a_second_delivery_is_a_duplicate(
        store: StoreUnderTest, transactions: MessageTransactions) -> None:
    assert transactions.apply(GROUP, claim(1), 1.0, write(1)) is True
    ran: list[int] = []
    assert transactions.apply(GROUP, claim(1), 2.0, lambda db: ran.append(1)) is False
    assert ran == [], "a duplicate's work does not run"
    assert effects(store) == [(1, "")]
    assert store.query('SELECT topic, partition, "offset", processed_at '
                       "FROM consumer_processed_keys") == [("orders", 0, 1, 1.0)]


def test_context_db_is_the_transactions_own_connection_with_the_session_bounds(
        transactions: MessageTransactions) -> None:
    seen: dict[str, Any] = {}

    def work(db: StoreLike) -> None:
        seen["lock_timeout"] = db.execute("SHOW lock_timeout").fetchone()[0]
        seen["idle"] = db.execute("SHOW idle_in_transaction_session_timeout").fetchone()[0]
        seen["in_transaction"] = (db.connection.info.transaction_status
                                  is psycopg.pq.TransactionStatus.INTRANS)
        seen["search_path"] = db.execute("SHOW search_path").fetchone()[0]

    transactions.apply(GROUP, claim(1), 1.0, work)
    assert seen["lock_timeout"] == "1s" and seen["idle"] == "3s"
    assert seen["in_transaction"], "the work runs inside the claim's transaction"
    assert seen["search_path"].startswith("t_"), "the DSN's own options are kept"


def test_a_failing_handler_rolls_back_its_writes_and_its_key_and_raises_unchanged(
        store: StoreUnderTest, transactions: MessageTransactions) -> None:
    def failing(db: StoreLike) -> None:
        db.execute("INSERT INTO effects VALUES (1, 'failed')")
        raise ValueError("bad message")

    with pytest.raises(ValueError, match="bad message"):
        transactions.apply(GROUP, claim(1), 1.0, failing)
    assert effects(store) == [] and keys(store) == 0, "a failed message's key is not processed"
    assert transactions.apply(GROUP, claim(1), 2.0, write(1)) is True, "a retry applies it"
    assert effects(store) == [(1, "")]


def test_a_lost_connection_inside_the_handler_is_transient_and_commits_nothing(
        store: StoreUnderTest, transactions: MessageTransactions) -> None:
    """The server ends the session mid-handler (a failover, a restart): StoreUnavailable, not
    the message's failure; nothing committed; the pool replaces the connection and the retry
    applies the message once."""
    def killed(db: StoreLike) -> None:
        db.execute("INSERT INTO effects VALUES (1, 'lost')")
        db.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    with pytest.raises(StoreUnavailable, match="transient database error"):
        transactions.apply(GROUP, claim(1), 1.0, killed)
    assert effects(store) == [] and keys(store) == 0
    for n in range(1, 9):  # every pooled connection works again
        transactions.apply(GROUP, claim(n), 2.0, write(n))
    assert [n for n, _ in effects(store)] == list(range(1, 9))


def test_a_real_deadlock_in_a_handler_is_transient_and_the_retry_applies_once(
        store: StoreUnderTest, transactions: MessageTransactions) -> None:
    """The handler and another session lock two rows in opposite orders; the server picks
    the handler as the deadlock's victim (it waited first). That is the store's error, not
    the message's: StoreUnavailable, nothing committed, and the retry applies it once."""
    store.execute("CREATE TABLE accounts (id integer PRIMARY KEY, n integer NOT NULL)")
    store.execute("INSERT INTO accounts VALUES (1, 0), (2, 0)")
    with psycopg.connect(store.url) as other:
        other.execute("UPDATE accounts SET n = n + 1 WHERE id = 2")

        def crossing(db: StoreLike) -> None:
            db.execute("SET LOCAL lock_timeout = '10s'")  # past deadlock_timeout (1 s)
            db.execute("INSERT INTO effects VALUES (1, 'deadlocked')")
            db.execute("UPDATE accounts SET n = n + 1 WHERE id = 1")
            threading.Timer(0.3, lambda: other.execute(
                "UPDATE accounts SET n = n + 1 WHERE id = 1")).start()
            db.execute("UPDATE accounts SET n = n + 1 WHERE id = 2")  # waits: the cycle

        with pytest.raises(StoreUnavailable, match="DeadlockDetected") as raised:
            transactions.apply(GROUP, claim(1), 1.0, crossing)
        assert isinstance(raised.value.__cause__, psycopg.errors.DeadlockDetected)
        assert wait_until(lambda: other.info.transaction_status
                          is psycopg.pq.TransactionStatus.INTRANS
                          and not other.pgconn.is_busy())
        other.commit()
    assert effects(store) == [] and keys(store) == 0
    assert transactions.apply(GROUP, claim(1), 2.0, write(1)) is True
    assert effects(store) == [(1, "")]


@pytest.mark.parametrize("first_commits", [True, False], ids=["commits", "rolls-back"])
def test_two_transactions_claiming_one_key_at_once_apply_it_once(
        store: StoreUnderTest, transactions: MessageTransactions, first_commits: bool) -> None:
    """Two owners (threads here, processes in production) run the same message at once. The
    second claim waits for the first transaction: when it commits, the second sees the key and
    skips its work; when it rolls back (its handler failed), the second applies."""
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
    second.join(0.5)
    assert second.is_alive(), "the second claim waits for the first transaction"
    release.set()
    runner.join(10)
    second.join(10)
    if first_commits:
        assert results == {"first": True, "second": False}
        assert effects(store) == [(1, "first")]
    else:
        assert results == {"first": "failed", "second": True}
        assert effects(store) == [(1, "second")]
    assert keys(store) == 1


def test_a_frozen_holder_delays_a_claim_by_the_lock_timeout_then_its_key_is_ours(
        store: StoreUnderTest, owner: PostgresStore,
        transactions: MessageTransactions) -> None:
    """A zombie claimed the key and froze inside its transaction (SIGSTOP). Each attempt of
    the new owner fails after lock_timeout as StoreUnavailable (retry after backoff); once
    the server ends the zombie's idle session, the claim is the new owner's and applies."""
    zombie = PostgresStore(store.url, session=PostgresSession(lock_timeout=LOCK,
                                                              idle_in_transaction_timeout=IDLE))
    try:
        zombie.begin()
        assert zombie.claim(GROUP, [claim(1)], 1.0) == {claim(1).key}
        zombie.execute("INSERT INTO effects VALUES (1, 'zombie')")
        frozen_at = time.monotonic()

        with pytest.raises(StoreUnavailable, match="postgres_lock_timeout_seconds"):
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
        assert effects(store) == [(1, "owner")], "the zombie's uncommitted effect is gone"
    finally:
        zombie.close()


def test_a_zombie_committing_while_the_claim_waits_makes_it_a_duplicate(
        store: StoreUnderTest, transactions: MessageTransactions) -> None:
    """The zombie wakes and commits while the new owner's claim waits: the claim sees the
    committed key, the new owner skips the message: applied once, by the zombie."""
    zombie = PostgresStore(store.url)
    try:
        zombie.begin()
        zombie.claim(GROUP, [claim(1)], 1.0)
        zombie.execute("INSERT INTO effects VALUES (1, 'zombie')")
        result: dict[str, bool] = {}
        waiting = threading.Thread(target=lambda: result.setdefault(
            "owner", transactions.apply(GROUP, claim(1), 2.0, write(1, "owner"))))
        waiting.start()
        waiting.join(0.3)
        assert waiting.is_alive()
        zombie.commit()
        waiting.join(10)
        assert result == {"owner": False}
        assert effects(store) == [(1, "zombie")]
    finally:
        zombie.close()


def test_many_threads_apply_distinct_messages_each_once(
        store: StoreUnderTest, transactions: MessageTransactions) -> None:
    """Eight workers over four connections, each message delivered twice: every effect once."""
    def worker() -> None:
        for n in range(200):
            transactions.apply(GROUP, claim(n), 1.0, write(n, "w"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert store.scalar("SELECT count(*) FROM effects") == 200
    assert store.scalar("SELECT count(DISTINCT n) FROM effects") == 200
    assert keys(store) == 200


# --- micro-batches: several messages in one transaction --------------------------------------

def failing(n: int) -> Callable[[StoreLike], None]:
    def work(db: StoreLike) -> None:
        db.execute("INSERT INTO effects VALUES (%s, 'failing')", (n,))
        raise ValueError(f"message {n} failed")
    return work


def swallowing(n: int) -> Callable[[StoreLike], None]:
    """A handler that catches its own database error and returns: the transaction is dead."""
    def work(db: StoreLike) -> None:
        db.execute("INSERT INTO effects VALUES (%s, 'swallowing')", (n,))
        with contextlib.suppress(psycopg.errors.DivisionByZero):
            db.execute("SELECT 1 / 0")
    return work


def counts(store: StoreUnderTest) -> dict[int, int]:
    return dict(store.query("SELECT n, count(*) FROM effects GROUP BY n ORDER BY n"))


def test_a_micro_batch_commits_every_new_message_and_skips_processed_keys(
        store: StoreUnderTest, transactions: MessageTransactions) -> None:
    """One claim statement, one commit: keys processed before (and a key twice in the batch)
    are duplicates, their work does not run; the others apply once."""
    assert transactions.apply(GROUP, claim(2), 1.0, write(2, "before")) is True
    claims = [claim(1), claim(2), claim(3), claim(3), claim(4)]
    works = [write(1), write(2), write(3), write(3, "again"), write(4)]
    assert transactions.apply_batch(GROUP, claims, 2.0, works) == [True, False, True, False,
                                                                    True]
    assert effects(store) == [(1, ""), (2, "before"), (3, ""), (4, "")]
    assert keys(store) == 4


@pytest.mark.parametrize("position", [0, 2, 4], ids=["first", "middle", "last"])
def test_a_failing_message_in_a_micro_batch_leaves_its_neighbours_applied_exactly_once(
        store: StoreUnderTest, transactions: MessageTransactions, position: int) -> None:
    """The failing message's work raised its own error: the batch rolls back (its write and
    the neighbours' with it), the neighbours run again one transaction each and commit once;
    the failing message's outcome is its error, unchanged, and neither its write nor its key
    is kept (its retry policy decides)."""
    works = [failing(n) if n == position else write(n) for n in range(5)]
    outcomes = transactions.apply_batch(GROUP, [claim(n) for n in range(5)], 1.0, works)
    error = outcomes[position]
    assert isinstance(error, ValueError) and str(error) == f"message {position} failed"
    assert [o for n, o in enumerate(outcomes) if n != position] == [True] * 4
    assert counts(store) == {n: 1 for n in range(5) if n != position}
    assert keys(store) == 4
    assert int(store.scalar("SELECT count(*) FROM consumer_processed_keys WHERE key = %s",
                            (claim(position).key,))) == 0


def coordinates_claim(offset: int, partition: int = 0) -> Claim:
    """A claim of the message's ordered coordinates key: a new store keeps it in a run."""
    key = ordered_prefix("orders") + ((partition << 48) | offset).to_bytes(8, "big")
    return Claim(key, "orders", partition, offset)


def test_coordinates_keys_open_their_transaction_with_their_claim_on_a_reused_connection(
        store: StoreUnderTest, owner: PostgresStore) -> None:
    """Coordinates keys open the transaction with their claim in one query string, its
    statement prepared on the connection. One connection serves every message here: its
    handlers' statement, run often enough, becomes psycopg's own prepared statement, so the
    rollback of a failing message makes psycopg deallocate every statement, the claim's too;
    the messages after it still open, apply once, and a second delivery is a duplicate."""
    transactions = owner.message_transactions(1)
    transactions.open()
    try:
        for offset in range(8):  # psycopg prepares a statement at its fifth run
            assert transactions.apply(GROUP, coordinates_claim(offset), 1.0, write(offset))
        with pytest.raises(ValueError, match="message 8 failed"):
            transactions.apply(GROUP, coordinates_claim(8), 1.0, failing(8))
        assert transactions.apply(GROUP, coordinates_claim(9), 1.0, write(9)) is True
        assert transactions.apply_batch(
            GROUP, [coordinates_claim(n) for n in (10, 11, 3, 12)], 1.0,
            [write(10), write(11), write(3, "again"), failing(12)]
        )[:3] == [True, True, False]
        assert transactions.apply_batch(
            GROUP, [coordinates_claim(n) for n in (12, 13, 1)], 1.0,
            [write(12), write(13), write(1, "again")]) == [True, True, False]
        assert transactions.apply(GROUP, coordinates_claim(5), 1.0, write(5, "again")) is False
    finally:
        transactions.close()
    assert counts(store) == {n: 1 for n in range(14) if n != 8}
    assert keys(store) == 0, "coordinates keys are kept as runs"
    assert int(store.scalar("SELECT sum(upper(key_offsets) - lower(key_offsets)) "
                            "FROM consumer_processed_runs")) == 13


def test_a_work_swallowing_its_database_error_does_not_take_its_neighbours_down(
        store: StoreUnderTest, transactions: MessageTransactions) -> None:
    """A work that catches a database error and returns leaves the transaction failed: the
    batch would commit nothing. It rolls back and every message runs again alone: the
    neighbours apply once."""
    works = [write(0), swallowing(1), write(2)]
    outcomes = transactions.apply_batch(GROUP, [claim(n) for n in range(3)], 1.0, works)
    assert outcomes[0] is True and outcomes[2] is True
    assert isinstance(outcomes[1], StoreError)
    assert counts(store).get(0) == 1 and counts(store).get(2) == 1
    assert store.scalar("SELECT count(*) FROM consumer_processed_keys WHERE key = ANY(%s)",
                        ([claim(0).key, claim(2).key],)) == 2


def test_a_key_held_by_a_frozen_session_holds_back_only_its_own_message(
        store: StoreUnderTest, transactions: MessageTransactions) -> None:
    """A zombie holds one key of the batch uncommitted: the batch's claim times out
    (transient), the messages run again alone, the neighbours apply and only the held one is
    StoreUnavailable (retried after backoff, never an attempt)."""
    zombie = PostgresStore(store.url)
    try:
        zombie.begin()
        zombie.claim(GROUP, [claim(1)], 1.0)
        outcomes = transactions.apply_batch(GROUP, [claim(n) for n in range(3)], 2.0,
                                            [write(n) for n in range(3)])
        assert outcomes[0] is True and outcomes[2] is True
        assert isinstance(outcomes[1], StoreUnavailable)
        assert counts(store) == {0: 1, 2: 1}
    finally:
        zombie.close()


def test_a_handler_swallowing_its_database_error_is_not_counted_applied(
        store: StoreUnderTest, transactions: MessageTransactions) -> None:
    """The handler caught a database error and returned: its transaction is dead, so COMMIT
    would silently roll back effects and key. That must not count as applied (the message
    would be done with its effect lost): nothing is committed, the message is tried once
    more (StoreUnavailable), and the second time in a row a StoreError names it."""
    with pytest.raises(StoreUnavailable, match=r"caught a database error.*tried once more"):
        transactions.apply(GROUP, claim(1), 1.0, swallowing(1))
    with pytest.raises(StoreError, match=r"caught a database error.*again") as again:
        transactions.apply(GROUP, claim(1), 2.0, swallowing(1))
    assert not isinstance(again.value, StoreUnavailable)  # the second time stops
    assert effects(store) == [] and keys(store) == 0


def test_a_real_deadlock_caught_in_a_handler_is_tried_once_more_and_applies_once(
        store: StoreUnderTest, transactions: MessageTransactions) -> None:
    """As above, with the handler catching a real deadlock (it waited first, so the server
    picks it as the victim) and returning: the message is tried once more, the deadlock does
    not come back, and its effect lands once."""
    store.execute("CREATE TABLE accounts (id integer PRIMARY KEY, n integer NOT NULL)")
    store.execute("INSERT INTO accounts VALUES (1, 0), (2, 0)")
    deadlocks: list[str] = []

    def crossing_once(db: StoreLike) -> None:
        db.execute("INSERT INTO effects VALUES (1, '')")
        if deadlocks:
            return
        db.execute("SET LOCAL lock_timeout = '10s'")  # past deadlock_timeout (1 s)
        db.execute("UPDATE accounts SET n = n + 1 WHERE id = 1")
        threading.Timer(0.3, lambda: other.execute(
            "UPDATE accounts SET n = n + 1 WHERE id = 1")).start()
        try:
            db.execute("UPDATE accounts SET n = n + 1 WHERE id = 2")  # waits: the cycle
        except psycopg.errors.DeadlockDetected as error:
            deadlocks.append(type(error).__name__)  # caught, and the handler returns

    with psycopg.connect(store.url) as other:
        other.execute("UPDATE accounts SET n = n + 1 WHERE id = 2")
        with pytest.raises(StoreUnavailable, match="caught a database error"):
            transactions.apply(GROUP, claim(1), 1.0, crossing_once)
        assert wait_until(lambda: other.info.transaction_status
                          is psycopg.pq.TransactionStatus.INTRANS
                          and not other.pgconn.is_busy())
        other.commit()
    assert transactions.apply(GROUP, claim(1), 2.0, crossing_once) is True
    assert deadlocks == ["DeadlockDetected"]
    assert effects(store) == [(1, "")] and keys(store) == 1


def ending(how: str, n: int) -> Callable[[StoreLike], None]:
    """Writes its effect, ends its transaction (``commit``, ``rollback`` or ``with``: the
    connection's context manager), writes again and raises."""
    def work(db: StoreLike) -> None:
        db.execute("INSERT INTO effects VALUES (%s, 'before')", (n,))
        if how == "with":
            with db.connection:
                pass
        else:
            getattr(db.connection, how)()
        db.execute("INSERT INTO effects VALUES (%s, 'after')", (n,))
        raise ValueError(f"message {n} failed")
    return work


@pytest.mark.parametrize("how", ["commit", "rollback", "with"])
def test_a_handler_cannot_end_its_messages_transaction(
        store: StoreUnderTest, transactions: MessageTransactions, how: str) -> None:
    """A committed claim would make the retry of a message that then raised a duplicate (its
    failure swallowed, its later writes lost); a rolled-back one would let writes commit
    without their key. The connection refuses while the handler runs, with an error the
    handler's own ``except Exception`` cannot swallow: nothing of the message commits, and
    the retry after the fix applies it once."""
    with pytest.raises(TransactionEndRefused, match=r"never end"):
        transactions.apply(GROUP, claim(1), 1.0, ending(how, 1))
    outcomes = transactions.apply_batch(GROUP, [claim(2), claim(3)], 1.0,
                                        [write(2), ending(how, 3)])
    assert isinstance(outcomes[1], TransactionEndRefused)
    assert effects(store) == [] and keys(store) == 0
    assert transactions.apply(GROUP, claim(1), 2.0, write(1)) is True
    assert effects(store) == [(1, "")]


def sending(statement: str, n: int, *, then_raising: bool = False
            ) -> Callable[[StoreLike], None]:
    """Writes its effect, sends ``statement`` (ending the transaction; ``COMMIT; BEGIN``
    opens one of its own after), writes again, and raises if told to."""
    def work(db: StoreLike) -> None:
        db.execute("INSERT INTO effects VALUES (%s, 'before')", (n,))
        for part in statement.split("; "):
            db.execute(part)
        db.execute("INSERT INTO effects VALUES (%s, 'after')", (n,))
        if then_raising:
            raise ValueError(f"message {n} failed")
    return work


#: A statement ending the message's transaction, alone or followed by a transaction of the
#: handler's own (which libpq's transaction status alone cannot tell from the message's).
ENDING_STATEMENTS = ["COMMIT", "COMMIT; BEGIN"]


@pytest.mark.parametrize("statement", ENDING_STATEMENTS)
@pytest.mark.parametrize("claims_of", [claim, coordinates_claim], ids=["digests", "runs"])
def test_a_commit_statement_in_a_micro_batch_stops_with_the_keys_of_the_rest_forgotten(
        store: StoreUnderTest, transactions: MessageTransactions,
        claims_of: Callable[[int], Claim], statement: str) -> None:
    """Message 1 of 4 sends ``COMMIT``: the claim of all four keys and message 0's write
    commit with it. Found when it returns: the keys of messages 2 and 3, never run, are
    forgotten again and message 1's outcome stops the consumer (a BaseException); the others
    read as not applied. Delivered again, messages 0 and 1 are duplicates and 2 and 3 apply:
    every effect once. Message 1's write after the statement commits too: alone without a
    transaction, or in the one the handler opened (committed, as the message returned)."""
    claims = [claims_of(n) for n in range(4)]
    outcomes = transactions.apply_batch(GROUP, claims, 1.0,
                                        [write(0), sending(statement, 1), write(2), write(3)])
    assert isinstance(outcomes[1], MessageTransactionEnded)
    assert "forgotten again" in str(outcomes[1]) and "2 keys" in str(outcomes[1])
    assert all(isinstance(outcomes[n], StoreUnavailable) for n in (0, 2, 3))
    assert transactions.apply_batch(GROUP, claims, 2.0, [write(n, "again") for n in range(4)]
                                    ) == [False, False, True, True]
    assert effects(store) == [(0, ""), (1, "after"), (1, "before"), (2, "again"),
                              (3, "again")]


@pytest.mark.parametrize("statement", ENDING_STATEMENTS)
@pytest.mark.parametrize("claims_of", [claim, coordinates_claim], ids=["digests", "runs"])
def test_a_handler_raising_after_a_commit_statement_has_its_key_forgotten(
        store: StoreUnderTest, transactions: MessageTransactions,
        claims_of: Callable[[int], Claim], statement: str) -> None:
    """It committed its key and first write, wrote again, then raised: its key is forgotten
    so that its retry runs (its first write stays: a documented limit; the second too when
    written outside any transaction, rolled back when in one the handler opened), and the
    consumer stops."""
    with pytest.raises(MessageTransactionEnded, match="1 keys claimed"):
        transactions.apply(GROUP, claims_of(1), 1.0, sending(statement, 1, then_raising=True))
    assert keys(store) == 0
    assert int(store.scalar("SELECT count(*) FROM consumer_processed_runs")) == 0
    assert effects(store) == ([(1, "after"), (1, "before")] if statement == "COMMIT"
                              else [(1, "before")])
    assert transactions.apply(GROUP, claims_of(1), 2.0, write(1, "retry")) is True


@pytest.mark.parametrize("claims_of", [claim, coordinates_claim], ids=["digests", "runs"])
def test_a_handler_returning_in_a_transaction_of_its_own_stops_with_its_writes_committed(
        store: StoreUnderTest, transactions: MessageTransactions,
        claims_of: Callable[[int], Claim]) -> None:
    """``COMMIT; BEGIN``: libpq reports a transaction open, as the message's was. The end is
    found all the same; the handler returned, so its key (committed with its first write)
    stands and its second write, in the transaction it opened, commits too; the consumer
    stops, and the message delivered again is a duplicate."""
    with pytest.raises(MessageTransactionEnded, match="with a statement"):
        transactions.apply(GROUP, claims_of(1), 1.0, sending("COMMIT; BEGIN", 1))
    assert effects(store) == [(1, "after"), (1, "before")]
    assert transactions.apply(GROUP, claims_of(1), 2.0, write(1, "again")) is False


def test_a_rollback_statement_stops_the_consumer_and_commits_nothing_before_it(
        store: StoreUnderTest, transactions: MessageTransactions) -> None:
    """``ROLLBACK`` ends the transaction too: the key and the write before it are gone, the
    write after it committed alone (a documented limit), and the consumer stops."""
    with pytest.raises(MessageTransactionEnded, match="with a statement"):
        transactions.apply(GROUP, claim(1), 1.0, sending("ROLLBACK", 1))
    assert effects(store) == [(1, "after")] and keys(store) == 0


@pytest.mark.parametrize("claims_of", [claim, coordinates_claim], ids=["digests", "runs"])
def test_a_savepoint_in_a_handler_rolls_back_alone(
        store: StoreUnderTest, transactions: MessageTransactions,
        claims_of: Callable[[int], Claim]) -> None:
    """``with context.db.transaction():`` inside the message's transaction is a savepoint
    (the connections are in autocommit mode, with the transaction opened by the pool): rolled
    back, it undoes its own writes only, and the message commits with its key."""
    def work(n: int) -> Callable[[StoreLike], None]:
        def run(db: StoreLike) -> None:
            db.execute("INSERT INTO effects VALUES (%s, 'kept')", (n,))
            with db.connection.transaction():
                db.execute("INSERT INTO effects VALUES (%s, 'undone')", (n,))
                raise psycopg.Rollback()
        return run

    assert transactions.apply(GROUP, claims_of(1), 1.0, work(1)) is True
    assert transactions.apply_batch(GROUP, [claims_of(2), claims_of(3)], 1.0,
                                    [work(2), work(3)]) == [True, True]
    assert effects(store) == [(1, "kept"), (2, "kept"), (3, "kept")]
    assert transactions.apply(GROUP, claims_of(2), 2.0, work(2)) is False


@pytest.mark.parametrize("claims_of", [claim, coordinates_claim], ids=["digests", "runs"])
def test_forgetting_after_a_rollback_statement_spares_a_key_another_session_claimed_since(
        store: StoreUnderTest, owner: PostgresStore, transactions: MessageTransactions,
        claims_of: Callable[[int], Claim]) -> None:
    """The handler sends ``ROLLBACK`` (its claim is gone), another session claims and commits
    the same key, then the handler raises. Forgetting the handler's key must not forget the
    other session's claim: the message stays processed."""
    def work(db: StoreLike) -> None:
        db.execute("ROLLBACK")
        owner.begin()
        assert claims_of(1).key in owner.claim(GROUP, [claims_of(1)], 5.0)
        owner.commit()
        raise ValueError("message 1 failed")

    with pytest.raises(MessageTransactionEnded):
        transactions.apply(GROUP, claims_of(1), 1.0, work)
    assert transactions.apply(GROUP, claims_of(1), 2.0, write(1)) is False


def test_a_deferred_constraint_failing_at_commit_is_the_messages_own_failure(
        store: StoreUnderTest, transactions: MessageTransactions) -> None:
    """A write that breaks a ``DEFERRABLE INITIALLY DEFERRED`` constraint fails only at
    COMMIT. That is the message's failure, psycopg's error unchanged (its retries and dead
    letter decide), not the store's, which would stop the consumer at every restart; in a
    micro-batch its neighbours run again alone and commit once."""
    from tests.support.deferred_handler import SCHEMA

    for statement in SCHEMA:
        store.execute(statement)

    def child(n: int, parent: int) -> Callable[[StoreLike], None]:
        def work(db: StoreLike) -> None:
            db.execute('INSERT INTO children ("offset", parent) VALUES (%s, %s)', (n, parent))
        return work

    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        transactions.apply(GROUP, claim(1), 1.0, child(1, 2))
    outcomes = transactions.apply_batch(GROUP, [claim(n) for n in (1, 2, 3)], 1.0,
                                        [child(1, 2), child(2, 1), child(3, 1)])
    assert isinstance(outcomes[0], psycopg.errors.ForeignKeyViolation)
    assert outcomes[1:] == [True, True]
    assert store.query('SELECT "offset" FROM children ORDER BY "offset"') == [(2,), (3,)]
    assert keys(store) == 2
