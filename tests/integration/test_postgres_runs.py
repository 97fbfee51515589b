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

from consumer.errors import StoreUnavailable
from consumer.store import PostgresSession, Store
from consumer.store.postgres import PostgresStore
from tests.support.runs_contract import (
    TOPIC_IDS,
    G,
    RunsContract,
    ServerRunsContract,
    claim,
    claimed,
    claims,
    keys_of,
    offsets,
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


# --- claiming -------------------------------------------------------------------------------


def test_a_new_store_keeps_runs(store: PostgresStore, database: StoreUnderTest) -> None:
    assert database.query("SELECT version, coordinates_keys FROM consumer_schema") \
        == [(4, "runs")]


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


def test_a_version_3_store_migrates_to_4_and_keeps_a_row_per_key(
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
        assert (upgrade.from_version, upgrade.to_version) == (3, 4)
        assert "stay one row each" in upgrade.describe("here")
        assert database.query("SELECT version, coordinates_keys FROM consumer_schema") \
            == [(4, "ordered")]
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
