"""Generations of processed keys in the SQLite store: a key claimed in a sealed generation is
never claimed again, by this store or another on the same file; the retention drops sealed
generations whole; version 4's keys stay processed after the migration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from consumer.store import Claim
from consumer.store.base import SQLITE_SCHEMA_VERSION
from consumer.store.key_generations import GroupKeys
from consumer.store.sqlite import SQLiteStore
from tests.support.runs_contract import TOPIC_IDS, claim
from tests.support.store_v4 import SQLITE as SCHEMA_V4

G = "g"


def digests(count: int, first_offset: int = 0) -> list[Claim]:
    """Claims of header-style keys: random digests, one row each."""
    return [Claim(os.urandom(16), "t", 0, first_offset + n) for n in range(count)]


def claimed(store: SQLiteStore, batch: list[Claim], now: float = 1.0) -> set[bytes]:
    store.begin()
    new = set(store.claim(G, batch, now))
    store.commit()
    return new


def generations(store: SQLiteStore) -> list[tuple[int, int, bool]]:
    return [(n, keys, sealed is not None) for n, keys, sealed in store.execute(
        "SELECT generation, keys, newest_at FROM consumer_key_generations "
        "WHERE group_id = %s ORDER BY generation", (G,)).fetchall()]


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    store = SQLiteStore(str(tmp_path / "store.db"), generation_keys=4)
    store.ensure_schema()
    store.use_topic_ids(TOPIC_IDS)
    return store


def test_a_full_generation_is_sealed_and_its_keys_stay_processed(store: SQLiteStore) -> None:
    first, second = digests(4), digests(4, 4)
    assert claimed(store, first) == {c.key for c in first}
    assert claimed(store, second) == {c.key for c in second}
    assert generations(store) == [(1, 4, True), (2, 4, False)]
    again = first[:2] + second[2:] + digests(2, 8)
    assert claimed(store, again) == {c.key for c in again[4:]}
    assert claimed(store, first + second) == set()


def test_another_store_on_the_file_never_claims_a_sealed_key_again(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    one, other = (SQLiteStore(path, generation_keys=4) for _ in range(2))
    one.ensure_schema()
    assert claimed(other, digests(1)) != set(), "the other store knows generation 1"
    mine = digests(3, 1)
    assert claimed(one, mine) == {c.key for c in mine}
    assert claimed(one, digests(2, 4)) != set()  # seals generation 1 first
    assert generations(one)[0] == (1, 4, True)
    assert claimed(other, mine) == set()


def test_a_rolled_back_claim_leaves_its_keys_free(store: SQLiteStore) -> None:
    batch = digests(3)
    store.begin()
    assert store.claim(G, batch, 1.0) == {c.key for c in batch}
    store.rollback()
    claimed(store, digests(4, 3))  # generation 1 sealed: the filter flags the batch's keys
    assert claimed(store, batch) == {c.key for c in batch}


def test_a_key_forgotten_in_a_sealed_generation_may_be_claimed_again(
        store: SQLiteStore) -> None:
    batch = digests(4)
    claimed(store, batch)
    claimed(store, digests(1, 4))
    store.begin()
    store.unclaim(G, [batch[0].key])
    store.commit()
    assert claimed(store, batch) == {batch[0].key}


def test_a_lone_coordinates_key_is_a_run_that_later_runs_see(store: SQLiteStore) -> None:
    """A coordinates key claimed alone (and one honoured by a redriven copy on another
    topic) is kept as a run of one, never a row of a generation a later run would have to
    ask; a run of its neighbours after its generation was sealed leaves it out."""
    honoured = Claim(claim(9).key, "dead-letters", 0, 40)
    claimed(store, [claim(5), honoured, *digests(4, 100)])
    claimed(store, digests(1, 200))
    assert generations(store)[0] == (1, 4, True), "generation 1 sealed, digests only"
    assert store.execute("SELECT count(*) FROM consumer_processed_runs").fetchone() == (2,)
    run = [claim(offset) for offset in range(3, 11)]
    assert claimed(store, run) == {c.key for c in run if c.offset not in (5, 9)}


def test_the_retention_drops_sealed_generations_whole(store: SQLiteStore) -> None:
    old, young = digests(4), digests(4, 4)
    claimed(store, old, now=10.0)
    claimed(store, young, now=20.0)  # seals generation 1: its newest key at 10.0
    claimed(store, digests(1, 8), now=30.0)  # seals generation 2: at 20.0
    assert store.purge_processed_keys(G, older_than=15.0, limit=100) == 4
    assert [n for n, _, _ in generations(store)] == [2, 3]
    assert claimed(store, old, now=40.0) == {c.key for c in old}
    assert claimed(store, young, now=40.0) == set()


def test_the_current_generation_is_purged_key_by_key(store: SQLiteStore) -> None:
    batch = digests(2)
    claimed(store, batch[:1], now=10.0)
    claimed(store, batch[1:], now=20.0)
    assert store.purge_processed_keys(G, older_than=15.0, limit=100) == 1
    assert claimed(store, batch, now=30.0) == {batch[0].key}
    assert generations(store) == [(1, 3, False)]


def test_purge_stops_at_its_limit_inside_a_generation(store: SQLiteStore) -> None:
    claimed(store, digests(4), now=10.0)
    claimed(store, digests(1, 4), now=20.0)
    assert store.purge_processed_keys(G, older_than=15.0, limit=3) == 3
    assert generations(store)[0] == (1, 4, True), "one key left in it"
    assert store.purge_processed_keys(G, older_than=15.0, limit=3) == 1
    assert [n for n, _, _ in generations(store)] == [2]


def test_a_version_4_store_keeps_its_keys_as_a_sealed_generation(tmp_path: Path) -> None:
    path = str(tmp_path / "v4.db")
    old = SQLiteStore(path)
    for statement in SCHEMA_V4:
        old.execute(statement)
    held = digests(3)
    for c in held:
        old.execute('INSERT INTO consumer_processed_keys VALUES (%s, %s, %s, 0, %s, 5.0)',
                    (G, c.key, c.topic, c.offset))
    old.execute('INSERT INTO consumer_processed_keys VALUES (%s, %s, %s, 0, 9, 7.0)',
                ("other", held[0].key, "t"))
    old.close()

    store = SQLiteStore(path, generation_keys=4)
    upgrade = store.ensure_schema(G)
    assert upgrade is not None
    assert (upgrade.from_version, upgrade.to_version) == (4, SQLITE_SCHEMA_VERSION)
    assert "first sealed generation" in upgrade.describe("here")
    assert generations(store) == [(0, 3, True)]
    assert store.execute("SELECT generation, keys, newest_at FROM consumer_key_generations "
                         "WHERE group_id = 'other'").fetchall() == [(0, 1, 7.0)]
    fresh = digests(2, 3)
    assert claimed(store, held + fresh, now=10.0) == {c.key for c in fresh}
    assert store.purge_processed_keys(G, older_than=6.0, limit=100) == 3
    assert claimed(store, held, now=10.0) == {c.key for c in held}
    assert store.ensure_schema(G) is None


def test_the_filters_are_read_once_per_sealed_generation(tmp_path: Path) -> None:
    path = str(tmp_path / "read.db")
    writer = SQLiteStore(path, generation_keys=4)
    writer.ensure_schema()
    for first in range(0, 12, 4):
        claimed(writer, digests(4, first))
    claimed(writer, digests(1, 12))
    reader = SQLiteStore(path, generation_keys=4)
    for _ in range(3):
        claimed(reader, digests(1, 100))
    keys: GroupKeys = reader._groups[G]
    assert keys.sealed == (1, 2, 3)
    assert keys.read == 12, "each sealed key read once"


def test_load_group_reads_the_filters_before_the_schema_is_ensured(tmp_path: Path) -> None:
    """The consumer reads a group's filters right after opening the store, before it meets
    the broker; a store without the tables yet leaves that to ensure_schema."""
    path = str(tmp_path / "load.db")
    SQLiteStore(path).load_group(G)  # no tables: nothing to read, no error
    writer = SQLiteStore(path, generation_keys=4)
    writer.ensure_schema()
    held = digests(4)
    claimed(writer, held)
    claimed(writer, digests(1, 4))
    loaded = SQLiteStore(path, generation_keys=4)
    loaded.load_group(G)
    assert loaded._groups[G].read == 4
    loaded.ensure_schema(G)
    assert claimed(loaded, held) == set()
    assert loaded._groups[G].read == 4, "not read again at the first claim"
    fresh = SQLiteStore(path, generation_keys=4)
    fresh.ensure_schema(G)
    assert G not in fresh._groups, "ensure_schema alone reads nothing (consumer store init)"
    assert claimed(fresh, held) == set(), "the first claim reads what it lacks"
