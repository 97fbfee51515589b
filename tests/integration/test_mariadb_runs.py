"""Runs of processed keys in a MariaDB store created at version 4, on a real server: the promises
every store with runs keeps (tests/support/runs_contract.py), and MariaDB's own: writers take
turns per head, so a session claiming keys another holds uncommitted waits for its outcome;
older stores keep a row per key."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumer.errors import StoreUnavailable
from consumer.store import Store
from consumer.store.base import MARIADB_SCHEMA_VERSION
from consumer.store.mariadb import MariaDBStore
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
    rows,
)
from tests.support.store_v3 import MARIADB as SCHEMA_V3
from tests.support.stores import StoreUnderTest, fresh_store

pytestmark = pytest.mark.integration


@pytest.fixture
def database(tmp_path: Path, mariadb_url: str) -> Iterator[StoreUnderTest]:
    with fresh_store("mariadb", tmp_path, mariadb_url) as found:
        yield found


def opened(database: StoreUnderTest, lock_wait: int = 10) -> MariaDBStore:
    store = MariaDBStore(database.url, connect_timeout=5, lock_wait_timeout=lock_wait)
    store.ensure_schema(G)
    store.use_topic_ids(TOPIC_IDS)
    return store


@pytest.fixture
def store(database: StoreUnderTest) -> Iterator[MariaDBStore]:
    store = opened(database)
    yield store
    store.close()


class TestMariaDBRuns(RunsContract, ServerRunsContract):
    """The runs contract on a database of its own on a real server."""

    def opened(self, database: StoreUnderTest) -> Store:
        return opened(database)

    def unopened(self, database: StoreUnderTest) -> Store:
        return MariaDBStore(database.url, connect_timeout=5)

    def waiting_for_a_lock(self, database: StoreUnderTest) -> bool:
        return bool(database.scalar("SELECT count(*) FROM information_schema.innodb_trx "
                                    "WHERE trx_state = 'LOCK WAIT'"))

    def idle_bounded(self, database: StoreUnderTest, seconds: int) -> Store:
        store = MariaDBStore(database.url, connect_timeout=5, idle_transaction_timeout=seconds)
        store.ensure_schema(G)
        store.use_topic_ids(TOPIC_IDS)
        return store


def test_a_new_store_keeps_runs(store: MariaDBStore, database: StoreUnderTest) -> None:
    assert database.query("SELECT version, coordinates_keys FROM consumer_schema") \
        == [(MARIADB_SCHEMA_VERSION, "runs")]


def test_a_batch_between_two_runs_claims_only_the_gap(store: MariaDBStore) -> None:
    """Runs 0-9 and 20-29 exist; a batch of 5-24 (a rewind over both) gets 10-19 only, and
    the store holds each key once."""
    claimed(store, claims(range(0, 10)))
    claimed(store, claims(range(20, 30)))
    assert claimed(store, claims(range(5, 25))) == keys_of(claims(range(10, 20)))
    assert offsets(store) == [(0, o) for o in range(30)]
    assert rows(store) == (0, 3)


def test_a_frozen_session_holding_a_partition_s_turn_makes_the_claim_unavailable(
        database: StoreUnderTest) -> None:
    """A zombie frozen inside its batch holds the partition's turn: after
    innodb_lock_wait_timeout the new owner's claim is StoreUnavailable (its batch is retried),
    whatever offsets it claims; another partition's claim does not wait."""
    zombie, owner = opened(database), opened(database, lock_wait=1)
    try:
        zombie.begin()
        zombie.claim(G, claims(range(0, 10)), 1.0)
        assert claimed(owner, claims(range(0, 10), partition=1)) \
            == keys_of(claims(range(0, 10), partition=1))
        owner.begin()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="mariadb_lock_wait_timeout_seconds"):
            owner.claim(G, claims(range(500, 510)), 1.0)
        assert time.monotonic() - started < 10
        owner.rollback()
        zombie.rollback()
        assert claimed(owner, claims(range(0, 10))) == keys_of(claims(range(0, 10)))
    finally:
        zombie.close()
        owner.close()


def test_a_version_3_store_migrates_and_keeps_a_row_per_key(
        database: StoreUnderTest) -> None:
    """Its keys stay rows, so new ones are rows too (a run would not see them): a key claimed
    before the migration is still a duplicate, the batch around it new."""
    database.write(SCHEMA_V3, [(
        'INSERT INTO consumer_processed_keys (group_id, "key", topic, "partition", "offset", '
        "processed_at) VALUES (%s, %s, 't', 0, 5, 1.0)", (G, claim(5).key))])
    store = MariaDBStore(database.url, connect_timeout=5)
    try:
        upgrade = store.ensure_schema(G)
        store.use_topic_ids(TOPIC_IDS)
        assert upgrade is not None
        assert (upgrade.from_version, upgrade.to_version) == (3, MARIADB_SCHEMA_VERSION)
        assert "stay one row each" in upgrade.describe("here")
        assert database.query("SELECT version, coordinates_keys FROM consumer_schema") \
            == [(MARIADB_SCHEMA_VERSION, "ordered")]
        assert claimed(store, claims(range(0, 10))) == keys_of(claims(range(0, 10))) \
            - {claim(5).key}
        assert database.scalar("SELECT count(*) FROM consumer_processed_keys") == 10
        assert not database.query(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() "
            "AND table_name = 'consumer_processed_runs'")
        assert store.ensure_schema(G) is None, "migrated once"
    finally:
        store.close()
