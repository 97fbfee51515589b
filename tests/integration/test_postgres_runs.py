"""Runs of processed keys in a PostgreSQL store created at version 4, on a real server: the
promises every store with runs keeps (tests/support/runs_contract.py), and PostgreSQL's own:
every writer (a batch, a concurrent handler's message, another session) sees each key of a run
as processed exactly as a row of its own; older stores and servers without btree_gist keep a
row per key."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from consumer.errors import ProcessedKeysAhead, StoreUnavailable
from consumer.store import CheckpointRow, PostgresSession, Store
from consumer.store.base import POSTGRES_SCHEMA_VERSION
from consumer.store.postgres import PostgresStore
from tests.support.runs_contract import (
    T0,
    T1,
    TOPIC_IDS,
    G,
    RunsContract,
    ServerRunsContract,
    claim,
    claimed,
    claims,
    keys_of,
    offsets,
    stretches,
)
from tests.support.store_v3 import POSTGRESQL as SCHEMA_V3
from tests.support.stores import StoreUnderTest, fresh_store

pytestmark = pytest.mark.integration

@pytest.fixture
def database(tmp_path: Path, postgres_dsn: str) -> Iterator[StoreUnderTest]:
    with fresh_store("postgresql", tmp_path, postgres_dsn) as found:
        yield found


def opened(database: StoreUnderTest) -> PostgresStore:
    store = PostgresStore(database.url, connect_timeout=5)
    store.ensure_schema(G)
    store.use_topic_ids(TOPIC_IDS)
    return store


@pytest.fixture
def store(database: StoreUnderTest) -> Iterator[PostgresStore]:
    store = opened(database)
    yield store
    store.close()


class TestPostgresRuns(RunsContract, ServerRunsContract):
    """The runs contract on a schema of its own on a real server."""

    def opened(self, database: StoreUnderTest) -> Store:
        return opened(database)

    def unopened(self, database: StoreUnderTest) -> Store:
        return PostgresStore(database.url, connect_timeout=5)

    def waiting_for_a_lock(self, database: StoreUnderTest) -> bool:
        return bool(database.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"))

    def idle_bounded(self, database: StoreUnderTest, seconds: int) -> Store:
        store = PostgresStore(database.url, connect_timeout=5,
                              session=PostgresSession(idle_in_transaction_timeout=seconds))
        store.ensure_schema(G)
        store.use_topic_ids(TOPIC_IDS)
        return store


# --- claiming -------------------------------------------------------------------------------


def test_a_new_store_keeps_runs(store: PostgresStore, database: StoreUnderTest) -> None:
    assert database.query("SELECT version, coordinates_keys FROM consumer_schema") \
        == [(POSTGRES_SCHEMA_VERSION, "runs")]


def test_a_concurrent_handler_s_message_and_a_batch_see_each_other_s_keys(
        store: PostgresStore) -> None:
    """Concurrent mode claims one key per transaction on a pooled connection: a key a run
    holds is a duplicate there, and a key it claimed makes a batch's run over it claim the
    rest one by one."""
    transactions = store.message_transactions(2)
    transactions.open()
    try:
        claimed(store, claims(range(0, 10)))
        ran: list[int] = []
        assert transactions.apply(G, claim(5), 1.0, lambda db: ran.append(5)) is False
        assert transactions.apply(G, claim(10), 1.0, lambda db: ran.append(10)) is True
        assert transactions.apply_batch(G, claims(range(9, 13)), 1.0,
                                        [lambda db: None] * 4) == [False, False, True, True]
        assert ran == [10]
        assert claimed(store, claims(range(0, 20))) == keys_of(claims(range(13, 20)))
        assert offsets(store) == [(0, o) for o in range(20)]
    finally:
        transactions.close()


# --- older stores, and a server without btree_gist -----------------------------------------


def test_a_version_3_store_migrates_and_keeps_a_row_per_key(
        database: StoreUnderTest) -> None:
    """Its keys stay rows, so new ones are rows too (a run would not see them): a key claimed
    before the migration is still a duplicate, the batch around it new."""
    database.write(SCHEMA_V3, [(
        'INSERT INTO consumer_processed_keys (group_id, key, topic, partition, "offset", '
        "processed_at) VALUES (%s, %s, 't', 0, 5, 1.0)", (G, claim(5).key))])
    store = PostgresStore(database.url, connect_timeout=5)
    try:
        upgrade = store.ensure_schema(G)
        store.use_topic_ids(TOPIC_IDS)
        assert upgrade is not None
        assert (upgrade.from_version, upgrade.to_version) == (3, POSTGRES_SCHEMA_VERSION)
        assert "stay one row each" in upgrade.describe("here")
        assert database.query("SELECT version, coordinates_keys FROM consumer_schema") \
            == [(POSTGRES_SCHEMA_VERSION, "ordered")]
        assert claimed(store, claims(range(0, 10))) == keys_of(claims(range(0, 10))) \
            - {claim(5).key}
        assert database.scalar("SELECT count(*) FROM consumer_processed_keys") == 10
        assert database.scalar("SELECT to_regclass('consumer_processed_runs')") is None
        assert store.ensure_schema(G) is None, "migrated once"
    finally:
        store.close()


def test_without_btree_gist_a_new_store_keeps_a_row_per_key(
        postgres_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    """A user who may not create extensions in a database that lacks btree_gist: the store
    says so and works as before version 4."""
    name, role = f"t_{uuid.uuid4().hex[:12]}", f"r_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'secret'")
    try:
        with psycopg.connect(postgres_dsn, dbname=name, autocommit=True) as admin:
            admin.execute(f"GRANT CREATE ON SCHEMA public TO {role}")
        url = psycopg.conninfo.make_conninfo(postgres_dsn, dbname=name, user=role,
                                             password="secret")
        store = PostgresStore(url, connect_timeout=5)
        try:
            store.ensure_schema(G)
            store.use_topic_ids(TOPIC_IDS)
            assert store.execute("SELECT coordinates_keys FROM consumer_schema").fetchall() \
                == [("ordered",)]
            assert "CREATE EXTENSION btree_gist" in caplog.text
            assert claimed(store, claims(range(0, 10))) == keys_of(claims(range(0, 10)))
            assert claimed(store, claims(range(0, 10))) == set()
        finally:
            store.close()
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
            admin.execute(f"DROP ROLE {role}")


def test_a_batch_opening_on_a_connection_the_server_ended_is_unavailable_then_opens_again(
        store: PostgresStore, postgres_dsn: str) -> None:
    """Opening a batch (BEGIN and the runs' INSERT) meets a dropped connection: StoreUnavailable
    (the loop retries the batch), nothing written; the retry opens the batch on a new
    connection."""
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (store.connection.info.backend_pid,))
    with pytest.raises(StoreUnavailable):
        store.open_batch(G, claims(range(0, 10)), 2.0)
    store.rollback()
    assert offsets(store) == []
    assert store.open_batch(G, claims(range(0, 10)), 3.0) == keys_of(claims(range(0, 10)))
    store.commit()
    assert offsets(store) == [(0, o) for o in range(10)]


def test_batches_of_stretches_open_and_close_again_on_the_connection_after_one_the_server_ended(
        store: PostgresStore, postgres_dsn: str) -> None:
    """A batch of plain messages opens and closes with statements prepared on the connection
    (BEGIN and the runs' EXECUTE in one query string, the rows' EXECUTE and COMMIT in
    another). The server ends that connection: the next opening is unavailable (the loop
    retries), and the retry prepares them again on the new connection."""
    store.assign(G, [("t", 0)], 1.0)
    assert store.open_batch(G, stretches(range(0, 10)), 2.0) == keys_of(claims(range(0, 10)))
    assert store.close_batch(G, [CheckpointRow("t", 0, 10, 1)], 2.0) == []
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (store.connection.info.backend_pid,))
    with pytest.raises(StoreUnavailable):
        store.open_batch(G, stretches(range(10, 20)), 3.0)
    store.rollback()
    assert store.open_batch(G, stretches(range(10, 20)), 3.0) == keys_of(claims(range(10, 20)))
    assert store.close_batch(G, [CheckpointRow("t", 0, 20, 1)], 3.0) == []
    assert store.checkpoints(G) == {("t", 0): 20}
    assert offsets(store) == [(0, o) for o in range(20)]


def test_a_closing_sent_on_a_connection_the_server_ended_is_unavailable_when_answered(
        store: PostgresStore, postgres_dsn: str) -> None:
    """The server ends the connection before a batch's closing goes out: its answer is
    StoreUnavailable (the loop retries the batch, whose keys tell what committed), and the
    next batch opens and closes on a new connection."""
    store.assign(G, [("t", 0)], 1.0)
    assert store.open_batch(G, stretches(range(0, 10)), 2.0) == keys_of(claims(range(0, 10)))
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (store.connection.info.backend_pid,))
    with pytest.raises(StoreUnavailable):
        store.send_close(G, [CheckpointRow("t", 0, 10, 1)], 2.0).result()
    store.rollback()
    assert store.open_batch(G, stretches(range(0, 10)), 3.0) == keys_of(claims(range(0, 10)))
    assert store.send_close(G, [CheckpointRow("t", 0, 10, 1)], 3.0).result() == []
    assert store.checkpoints(G) == {("t", 0): 10}
    assert offsets(store) == [(0, o) for o in range(10)]


def test_batches_of_stretches_open_after_psycopg_deallocated_every_prepared_statement(
        store: PostgresStore) -> None:
    """A batch of plain messages opens with a statement the store prepared on its
    connection. psycopg deallocates every prepared statement after a ROLLBACK (a savepoint's
    too) once it holds statements of its own (prepared after a query's fifth run): a batch
    run message by message, a handler's rollback to its savepoint, the batch rolled back.
    The next batch still opens, and closes."""
    store.assign(G, [("t", 0)], 1.0)
    for first in range(0, 60, 10):  # psycopg prepares the rows' UPDATE on its own
        assert store.open_batch(G, stretches(range(first, first + 10)), 2.0) \
            == keys_of(claims(range(first, first + 10)))
        assert store.close_batch(G, [CheckpointRow("t", 0, first + 10, 1)], 2.0) == []
    assert store.open_batch(G, stretches(range(60, 70)), 3.0) == keys_of(claims(range(60, 70)))
    store.savepoint()
    store.rollback_to_savepoint()  # a handler's message rolled back alone
    assert store.close_batch(G, [CheckpointRow("t", 0, 70, 1)], 3.0) == []
    assert store.open_batch(G, stretches(range(70, 80)), 4.0) == keys_of(claims(range(70, 80)))
    store.rollback()  # the batch rolled back (a handler raised, say)
    assert store.open_batch(G, stretches(range(70, 80)), 5.0) == keys_of(claims(range(70, 80)))
    assert store.close_batch(G, [CheckpointRow("t", 0, 80, 1)], 5.0) == []
    assert offsets(store) == [(0, o) for o in range(80)]


def test_a_group_named_with_quotes_and_backslashes_opens_and_closes_batches_of_stretches(
        store: PostgresStore) -> None:
    """The group's name is written into the query strings of a batch of plain messages: it
    is quoted as the connection quotes a literal, whatever it holds."""
    group = "it's a \\ group's name \\'"
    store.assign(group, [("t", 0)], 1.0)
    assert store.open_batch(group, stretches(range(0, 10)), 2.0) == keys_of(claims(range(0, 10)))
    assert store.close_batch(group, [CheckpointRow("t", 0, 10, 1)], 2.0) == []
    assert store.checkpoints(group) == {("t", 0): 10}
    assert offsets(store, group) == [(0, o) for o in range(10)]
    assert store.open_batch(group, stretches(range(0, 10)), 3.0) == set()
    store.rollback()


def test_a_batch_opening_that_waits_out_the_lock_timeout_is_unavailable_then_opens_again(
        database: StoreUnderTest) -> None:
    """The opening batch's claim meets a run another session holds uncommitted: after the
    lock timeout, StoreUnavailable (the loop rolls back and retries); once the holder rolled
    back, the same store opens batches again, twice."""
    holder = opened(database)
    waiting = PostgresStore(database.url, connect_timeout=5,
                            session=PostgresSession(lock_timeout=0.5))
    waiting.ensure_schema(G)
    waiting.use_topic_ids(TOPIC_IDS)
    try:
        holder.begin()
        assert holder.claim(G, claims(range(0, 10)), 1.0) == keys_of(claims(range(0, 10)))
        with pytest.raises(StoreUnavailable, match="postgres_lock_timeout_seconds"):
            waiting.open_batch(G, claims(range(0, 10)), 2.0)
        waiting.rollback()
        holder.rollback()
        for batch in (claims(range(0, 10)), claims(range(10, 20))):
            assert waiting.open_batch(G, batch, 3.0) == keys_of(batch)
            waiting.commit()
        assert offsets(waiting) == [(0, o) for o in range(20)]
    finally:
        holder.close()
        waiting.close()


# --- a batch held to be new: its opening answered later -------------------------------------


def test_assignment_tells_from_which_offset_the_store_holds_no_key(
        store: PostgresStore) -> None:
    """Each partition's position says from which offset no key of it is processed: its row's
    offset, or past the last run above that (a replay that kept keys leaves them there);
    from the start for a partition with neither."""
    assert store.assign(G, [T0, T1], 1.0)[T0].new_keys_from == 0
    assert store.open_batch(G, stretches(range(0, 10)), 2.0) == keys_of(claims(range(0, 10)))
    assert store.close_batch(G, [CheckpointRow("t", 0, 10, 1)], 2.0) == []
    positions = store.assign(G, [T0, T1], 3.0)
    assert (positions[T0].next_offset, positions[T0].new_keys_from) == (10, 10)
    assert (positions[T1].next_offset, positions[T1].new_keys_from) == (None, 0)
    assert claimed(store, claims(range(20, 25)) + claims(range(30, 33)), 4.0)  # above the row
    assert claimed(store, claims(range(40, 42), partition=1), 4.0)
    positions = store.assign(G, [T0, T1], 5.0)
    assert (positions[T0].next_offset, positions[T0].new_keys_from) == (10, 33)
    assert (positions[T1].next_offset, positions[T1].new_keys_from) == (None, 42)


def test_an_opening_held_to_be_new_is_answered_at_the_closing(store: PostgresStore) -> None:
    """Keys held to be new: every key is answered new at once, and the server's answer is
    still to come (the connection busy) until the closing reads it; the batch commits."""
    store.assign(G, [T0], 1.0)
    batch = stretches(range(0, 10))
    assert store.open_batch_unanswered(G, batch, 2.0) == keys_of(claims(range(0, 10)))
    assert store._conn is not None
    assert store._conn.pgconn.transaction_status == TransactionStatus.ACTIVE
    assert store.transaction_open() and not store.transaction_failed()
    assert store.send_close(G, [CheckpointRow("t", 0, 10, 1)], 2.0).result() == []
    assert store.checkpoints(G) == {T0: 10}
    assert offsets(store) == [(0, o) for o in range(10)]


@pytest.mark.parametrize("read_by", ["the closing", "a handler's context.db"])
def test_an_opening_held_to_be_new_that_meets_a_processed_key_raises_and_commits_nothing(
        store: PostgresStore, read_by: str) -> None:
    """The keys were not all new after all (something else wrote them): reading the answer,
    whether for the closing or for a handler asking for the connection, raises
    ProcessedKeysAhead, and nothing of the batch commits; asked again, the store answers the
    new keys alone."""
    store.assign(G, [T0], 1.0)
    assert claimed(store, claims(range(5, 8)), 1.5) == keys_of(claims(range(5, 8)))
    store.open_batch_unanswered(G, stretches(range(0, 10)), 2.0)
    with pytest.raises(ProcessedKeysAhead, match=r"t\[0\]"):
        if read_by == "the closing":
            store.send_close(G, [CheckpointRow("t", 0, 10, 1)], 2.0)
        else:
            store.connection.execute("SELECT 1")
    store.rollback()
    assert store.checkpoints(G) == {T0: None}
    assert offsets(store) == [(0, o) for o in range(5, 8)]
    assert store.open_batch(G, stretches(range(0, 10)), 3.0) \
        == keys_of(claims(range(0, 5)) + claims(range(8, 10)))
    assert store.close_batch(G, [CheckpointRow("t", 0, 10, 1)], 3.0) == []
    assert offsets(store) == [(0, o) for o in range(10)]


def test_an_opening_held_to_be_new_rolled_back_unread_leaves_the_connection_usable(
        store: PostgresStore) -> None:
    """A batch rolled back before its opening was answered (a handler raised at once): its
    answer is read and dropped, nothing commits, and the next batch opens."""
    store.assign(G, [T0], 1.0)
    store.open_batch_unanswered(G, stretches(range(0, 10)), 2.0)
    store.rollback()
    assert offsets(store) == []
    store.open_batch_unanswered(G, stretches(range(0, 10)), 3.0)
    assert store.close_batch(G, [CheckpointRow("t", 0, 10, 1)], 3.0) == []
    assert offsets(store) == [(0, o) for o in range(10)]


def test_an_opening_held_to_be_new_after_psycopg_deallocated_every_prepared_statement(
        store: PostgresStore) -> None:
    """The opening's statement is gone when its answer is read (psycopg deallocates every
    prepared statement after a ROLLBACK once it holds statements of its own): it is prepared
    again and the opening sent again, and the batch commits."""
    store.assign(G, [T0], 1.0)
    for first in range(0, 60, 10):  # psycopg prepares the rows' UPDATE on its own
        store.open_batch_unanswered(G, stretches(range(first, first + 10)), 2.0)
        assert store.close_batch(G, [CheckpointRow("t", 0, first + 10, 1)], 2.0) == []
    store.open_batch_unanswered(G, stretches(range(60, 70)), 3.0)
    store.savepoint()
    store.rollback_to_savepoint()  # a handler's message rolled back alone
    assert store.close_batch(G, [CheckpointRow("t", 0, 70, 1)], 3.0) == []
    store.open_batch_unanswered(G, stretches(range(70, 80)), 4.0)
    store.rollback()
    store.open_batch_unanswered(G, stretches(range(70, 80)), 5.0)
    assert store.send_close(G, [CheckpointRow("t", 0, 80, 1)], 5.0).result() == []
    assert offsets(store) == [(0, o) for o in range(80)]


def test_an_opening_held_to_be_new_on_a_connection_the_server_ended_is_unavailable(
        store: PostgresStore, postgres_dsn: str) -> None:
    """The server ends the connection: the opening, or its answer, is StoreUnavailable (the
    loop retries the batch), and the retry opens on a new connection."""
    store.assign(G, [T0], 1.0)
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (store.connection.info.backend_pid,))
    with pytest.raises(StoreUnavailable):
        store.open_batch_unanswered(G, stretches(range(0, 10)), 2.0)
        store.send_close(G, [CheckpointRow("t", 0, 10, 1)], 2.0).result()
    store.rollback()
    store.open_batch_unanswered(G, stretches(range(0, 10)), 3.0)
    assert store.send_close(G, [CheckpointRow("t", 0, 10, 1)], 3.0).result() == []
    assert offsets(store) == [(0, o) for o in range(10)]
