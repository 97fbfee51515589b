"""Runs of processed keys in a PostgreSQL store created at version 4, on a real server: a batch's
consecutive coordinates keys kept as one row, every writer (a batch, a concurrent handler's
message, another session) seeing each key of a run as processed exactly as a row of its own,
and every way a key is forgotten, replayed or purged counting it once."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from consumer.dedup import KeyFormat, key_function
from consumer.message import Message
from consumer.store import Claim
from consumer.store.postgres import PostgresStore
from tests.support.store_v3 import POSTGRESQL as SCHEMA_V3
from tests.support.stores import StoreUnderTest, fresh_store

pytestmark = pytest.mark.integration

G = "g"
TOPIC_IDS = {"t": "id-t", "u": "id-u"}
ORDERED = key_function("coordinates", TOPIC_IDS, key_format=KeyFormat(ordered_coordinates=True))


def claim(offset: int, partition: int = 0, topic: str = "t") -> Claim:
    """The claim the consumer makes for the message at these coordinates."""
    return Claim(ORDERED(Message(topic, partition, offset, b"", timestamp=0.0)), topic,
                 partition, offset)


def claims(offsets: range, partition: int = 0) -> list[Claim]:
    return [claim(o, partition) for o in offsets]


def new_keys(batch: list[Claim]) -> set[bytes]:
    return {c.key for c in batch}


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


def claimed(store: PostgresStore, batch: list[Claim], now: float = 1.0,
            group: str = G) -> set[bytes]:
    store.begin()
    new = store.claim(group, batch, now)
    store.commit()
    return new


def rows(database: StoreUnderTest) -> tuple[int, int]:
    """(key rows, run rows)."""
    return (database.scalar("SELECT count(*) FROM consumer_processed_keys"),
            database.scalar("SELECT count(*) FROM consumer_processed_runs"))


def offsets(database: StoreUnderTest, group: str = G) -> list[tuple[int, int]]:
    """(partition, offset) of every processed key of the group, a run's keys one each."""
    return [(k.partition, k.offset) for k in database.processed_keys(group)]


# --- claiming -------------------------------------------------------------------------------


def test_a_new_store_keeps_runs(store: PostgresStore, database: StoreUnderTest) -> None:
    assert database.query("SELECT version, coordinates_keys FROM consumer_schema") \
        == [(4, "runs")]


def test_a_batch_over_three_partitions_is_three_rows_and_every_key_is_processed(
        store: PostgresStore, database: StoreUnderTest) -> None:
    batch = [claim(o, p) for o in range(0, 400) for p in (0, 1, 2)]  # interleaved, as polled
    assert claimed(store, batch) == new_keys(batch)
    assert rows(database) == (0, 3)
    assert offsets(database) == sorted((p, o) for o in range(400) for p in (0, 1, 2))
    assert claimed(store, batch) == set(), "redelivered: every key is a duplicate"


def test_a_digest_key_is_a_row_beside_the_runs(store: PostgresStore,
                                               database: StoreUnderTest) -> None:
    digest = Claim(b"\x07" * 16, "t", 0, 10)
    batch = [*claims(range(0, 10)), digest, *claims(range(11, 20))]
    assert claimed(store, batch) == new_keys(batch)
    assert rows(database) == (1, 2)
    assert claimed(store, [digest, claim(5)]) == set()


@pytest.mark.parametrize("inside", [0, 417, 999])
def test_a_key_inside_a_run_is_processed_when_a_redriven_copy_claims_it(
        store: PostgresStore, inside: int) -> None:
    """A redriven copy (another partition and offset) honours the key of a message a run
    holds: a duplicate; the next message is new."""
    claimed(store, claims(range(0, 1000)))
    honoured = Claim(claim(inside).key, "t", 2, 5000)
    assert claimed(store, [honoured, claim(1000)]) == {claim(1000).key}


def test_a_run_overlapping_processed_keys_claims_only_the_new_ones(
        store: PostgresStore, database: StoreUnderTest) -> None:
    """Run 100-199 and a lone key at 250; then a batch of 0-299 (a replay that kept its
    keys): only 0-99 and 200-299 but 250 are new, and the store holds each key once."""
    claimed(store, claims(range(100, 200)))
    claimed(store, [claim(250)])
    new = claimed(store, claims(range(0, 300)))
    assert new == {c.key for c in claims(range(0, 300))
                   if not 100 <= c.offset < 200 and c.offset != 250}
    assert offsets(database) == [(0, o) for o in range(300)]


def test_one_batch_holding_a_message_twice_applies_it_once(
        store: PostgresStore, database: StoreUnderTest) -> None:
    """A rewind can put offsets 5-9 in the pending batch twice: the second run overlaps the
    first, so its keys are claimed one by one and each is new once."""
    batch = claims(range(0, 10)) + claims(range(5, 10))
    assert claimed(store, batch) == new_keys(claims(range(0, 10)))
    assert offsets(database) == [(0, o) for o in range(10)]


def test_runs_are_per_group(store: PostgresStore) -> None:
    claimed(store, claims(range(0, 50)))
    assert claimed(store, claims(range(0, 50)), group="other") == new_keys(claims(range(50)))


def test_a_batch_claiming_keys_another_session_holds_waits_for_its_outcome(
        database: StoreUnderTest) -> None:
    """Session A holds run 0-99 uncommitted; session B's batch of 50-149 waits for it. A
    commits: B gets 100-149. The same with A rolling back: B gets all of 50-149."""
    for outcome in ("commit", "rollback"):
        group = f"g-{outcome}"
        first, second = opened(database), opened(database)
        first.begin()
        first.claim(group, claims(range(0, 100)), 1.0)
        got: dict[str, Any] = {}

        def other(second: PostgresStore = second, group: str = group,
                  got: dict[str, Any] = got) -> None:
            got["new"] = claimed(second, claims(range(50, 150)), group=group)

        thread = threading.Thread(target=other)
        thread.start()
        _wait_for_a_lock_wait(database)
        assert thread.is_alive() and "new" not in got, "B waits while A holds its keys"
        first.commit() if outcome == "commit" else first.rollback()
        thread.join(30)
        assert not thread.is_alive()
        expected = range(100, 150) if outcome == "commit" else range(50, 150)
        assert got["new"] == new_keys(claims(expected)), outcome
        first.close()
        second.close()


def test_a_concurrent_handler_s_message_and_a_batch_see_each_other_s_keys(
        store: PostgresStore, database: StoreUnderTest) -> None:
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
        assert claimed(store, claims(range(0, 20))) == new_keys(claims(range(13, 20)))
        assert offsets(database) == [(0, o) for o in range(20)]
    finally:
        transactions.close()


# --- forgetting, replay, retention --------------------------------------------------------


def test_unclaim_splits_a_run_around_the_key(store: PostgresStore,
                                             database: StoreUnderTest) -> None:
    """A failed message's key is released from the middle, the start and the end of a run:
    those keys are new again, their neighbours still processed."""
    store.begin()
    store.claim(G, claims(range(0, 10)), 1.0)
    store.unclaim(G, [claim(4).key, claim(0).key, claim(9).key])
    store.commit()
    assert offsets(database) == [(0, o) for o in (1, 2, 3, 5, 6, 7, 8)]
    assert rows(database) == (0, 2)
    assert claimed(store, claims(range(0, 10))) == {claim(o).key for o in (0, 4, 9)}


def test_replay_counts_and_forgets_the_keys_of_runs_from_the_target(
        store: PostgresStore, database: StoreUnderTest) -> None:
    """Runs 0-99 and 100-199 of partition 0, 0-49 of partition 1: from offset 150 of
    partition 0 there are 50 keys; forgetting them cuts the run that straddles the target."""
    claimed(store, claims(range(0, 100)))
    claimed(store, claims(range(100, 200)))
    claimed(store, claims(range(0, 50), partition=1))
    targets = {("t", 0): 150, ("t", 1): 60}
    assert store.keys_from(G, targets) == {("t", 0): 50, ("t", 1): 0}
    assert store.keys_from(G, {("t", 0): 50}) == {("t", 0): 150}
    assert store.replay(G, {("t", 0): 150}, forget_keys=True, now=2.0) == {("t", 0): 50}
    assert offsets(database) == [(0, o) for o in range(150)] + [(1, o) for o in range(50)]
    assert claimed(store, claims(range(140, 160))) == new_keys(claims(range(150, 160)))


def test_purge_counts_the_keys_of_the_runs_it_deletes(store: PostgresStore,
                                                      database: StoreUnderTest) -> None:
    claimed(store, claims(range(0, 300)), now=100.0)
    claimed(store, [Claim(b"\x01" * 16, "t", 0, 900)], now=100.0)
    claimed(store, claims(range(300, 310)), now=5_000.0)
    assert store.purge_processed_keys(G, older_than=1_000.0, limit=1_000) == 301
    assert offsets(database) == [(0, o) for o in range(300, 310)]
    assert store.purge_processed_keys(G, older_than=1_000.0, limit=1_000) == 0


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
        assert claimed(store, claims(range(0, 10))) == new_keys(claims(range(0, 10))) \
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
            assert claimed(store, claims(range(0, 10))) == new_keys(claims(range(0, 10)))
            assert claimed(store, claims(range(0, 10))) == set()
        finally:
            store.close()
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
            admin.execute(f"DROP ROLE {role}")


def _wait_for_a_lock_wait(database: StoreUnderTest, timeout: float = 10.0) -> None:
    """Until a session of the server waits for a lock (the second claim)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if database.scalar("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                           "'Lock'"):
            return
        time.sleep(0.02)
    raise AssertionError(f"no session waited for a lock within {timeout} s")
