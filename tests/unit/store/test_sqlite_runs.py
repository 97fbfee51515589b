"""Runs of processed keys in the SQLite store: a batch's consecutive coordinates keys of one
partition kept as one row, and every way a key is looked up, forgotten or purged seeing each
key of a run as processed exactly as a row of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.dedup import KeyFormat, key_function
from consumer.message import Message
from consumer.store import Claim
from consumer.store.sqlite import SQLiteStore
from consumer.store.sqlite_runs import Run, split
from tests.support.processed_keys import processed_keys
from tests.support.store_v3 import SQLITE as SCHEMA_V3

G = "g"
ORDERED = key_function("coordinates", {"t": "id-t", "u": "id-u"},
                       key_format=KeyFormat(ordered_coordinates=True))


def claim(offset: int, partition: int = 0, topic: str = "t") -> Claim:
    """The claim the consumer makes for the message at these coordinates."""
    return Claim(ORDERED(Message(topic, partition, offset, b"", timestamp=0.0)), topic,
                 partition, offset)


def claims(offsets: range, partition: int = 0) -> list[Claim]:
    return [claim(o, partition) for o in offsets]


def rows(store: SQLiteStore) -> tuple[int, int]:
    """(key rows, run rows)."""
    return (store.execute("SELECT count(*) FROM consumer_processed_keys").fetchone()[0],
            store.execute("SELECT count(*) FROM consumer_processed_runs").fetchone()[0])


def offsets(store: SQLiteStore, group: str = G) -> list[tuple[int, int]]:
    """(partition, offset) of every processed key of the group."""
    keys = processed_keys(lambda sql, p: store.execute(sql, p).fetchall(), backend="sqlite",
                          group=group)
    return [(k.partition, k.offset) for k in keys]


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    store = SQLiteStore(str(tmp_path / "store.db"))
    store.ensure_schema()
    return store


def claimed(store: SQLiteStore, batch: list[Claim], now: float = 1.0) -> set[bytes]:
    store.begin()
    new = store.claim(G, batch, now)
    store.commit()
    return new


# --- splitting a batch --------------------------------------------------------------------------


def test_consecutive_offsets_with_consecutive_keys_are_runs_and_the_rest_single() -> None:
    """Partition 0's 10-14 and partition 1's 3-5 are runs; a gap (offset 16), a lone key,
    another topic's key and a header's digest break them or stand alone."""
    digest = Claim(b"\x07" * 16, "t", 0, 20)
    batch = [*claims(range(10, 15)), claim(16), *claims(range(3, 6), partition=1),
             claim(6, topic="u"), digest]
    runs, singles = split(batch)
    assert runs == [Run(0, 4), Run(6, 8)]
    assert singles == [batch[5], batch[9], digest]


def test_a_key_that_is_not_its_message_s_coordinates_breaks_a_run() -> None:
    """A redriven event's honoured key sits among coordinates keys: it is not the next number,
    so the run ends before it and starts again after it."""
    batch = claims(range(0, 6))
    batch[3] = Claim(claim(900).key, "t", 0, 3)
    runs, singles = split(batch)
    assert runs == [Run(0, 2), Run(4, 5)]
    assert singles == [batch[3]]


# --- claiming -------------------------------------------------------------------------------


def test_a_batch_of_consecutive_keys_is_one_row_and_every_key_is_processed(
        store: SQLiteStore) -> None:
    batch = claims(range(0, 1000))
    assert claimed(store, batch) == {c.key for c in batch}
    assert rows(store) == (0, 1)
    assert offsets(store) == [(0, o) for o in range(1000)]
    assert claimed(store, batch) == set(), "redelivered: every key is a duplicate"


@pytest.mark.parametrize("inside", [0, 417, 999])
def test_a_key_inside_a_run_is_processed_when_claimed_alone(
        store: SQLiteStore, inside: int) -> None:
    """A redriven copy (another offset) honours the key of a message a run holds."""
    claimed(store, claims(range(0, 1000)))
    honoured = Claim(claim(inside).key, "t", 0, 5000)
    assert claimed(store, [honoured, claim(1000)]) == {claim(1000).key}
    assert claimed(store, [claim(1001)]) == {claim(1001).key}, "back to plain claims"


def test_a_run_overlapping_processed_keys_claims_only_the_new_ones(
        store: SQLiteStore) -> None:
    """Runs 100-199 and a key of its own at 250; then a batch of 0-299 (a replay that kept its
    keys): only 0-99 and 200-299 but 250 are new, and the store holds each key once."""
    claimed(store, claims(range(100, 200)))
    claimed(store, [claim(250)])
    new = claimed(store, claims(range(0, 300)))
    assert new == {c.key for c in claims(range(0, 300))
                   if not 100 <= c.offset < 200 and c.offset != 250}
    assert offsets(store) == [(0, o) for o in range(300)]


def test_a_run_is_refused_when_a_key_of_the_batch_before_it_is_inside(
        store: SQLiteStore) -> None:
    """Keys already single in the table block a run spanning them, at either end."""
    claimed(store, [Claim(claim(0).key, "u", 3, 0), Claim(claim(9).key, "u", 3, 1)])
    assert claimed(store, claims(range(0, 10))) == {c.key for c in claims(range(1, 9))}


def test_one_batch_holding_a_message_twice_applies_it_once(store: SQLiteStore) -> None:
    """A rewind can put offsets 5-9 in the pending batch twice: the second run overlaps the
    first, so the claim falls back to key by key and each key is new once."""
    batch = claims(range(0, 10)) + claims(range(5, 10))
    assert claimed(store, batch) == {c.key for c in claims(range(0, 10))}
    assert offsets(store) == [(0, o) for o in range(10)]


def test_runs_are_per_group(store: SQLiteStore) -> None:
    claimed(store, claims(range(0, 50)))
    store.begin()
    assert store.claim("other", claims(range(0, 50)), 1.0) == {c.key for c in claims(range(50))}
    store.commit()


# --- forgetting, replay, retention --------------------------------------------------------


def test_unclaim_splits_a_run_around_the_key(store: SQLiteStore) -> None:
    """A failed message's key is released from the middle, the start and the end of a run:
    those keys are new again, their neighbours still processed."""
    store.begin()
    store.claim(G, claims(range(0, 10)), 1.0)
    store.unclaim(G, [claim(4).key, claim(0).key, claim(9).key])
    store.commit()
    assert offsets(store) == [(0, o) for o in (1, 2, 3, 5, 6, 7, 8)]
    assert rows(store) == (0, 2)
    assert claimed(store, claims(range(0, 10))) == {claim(o).key for o in (0, 4, 9)}


def test_replay_counts_and_forgets_the_keys_of_runs_from_the_target(
        store: SQLiteStore) -> None:
    """Runs 0-99 and 100-199 of partition 0, 0-49 of partition 1: from offset 150 of
    partition 0 there are 50 keys; forgetting them cuts the run that straddles the target."""
    claimed(store, claims(range(0, 100)))
    claimed(store, claims(range(100, 200)))
    claimed(store, claims(range(0, 50), partition=1))
    targets = {("t", 0): 150, ("t", 1): 60}
    assert store.keys_from(G, targets) == {("t", 0): 50, ("t", 1): 0}
    assert store.keys_from(G, {("t", 0): 50}) == {("t", 0): 150}
    assert store.replay(G, {("t", 0): 150}, forget_keys=True, now=2.0) == {("t", 0): 50}
    assert offsets(store) == [(0, o) for o in range(150)] + [(1, o) for o in range(50)]
    assert claimed(store, claims(range(140, 160))) == {c.key for c in claims(range(150, 160))}


def test_purge_counts_the_keys_of_the_runs_it_deletes(store: SQLiteStore) -> None:
    claimed(store, claims(range(0, 300)), now=100.0)
    claimed(store, [Claim(b"\x01" * 16, "t", 0, 900)], now=100.0)
    claimed(store, claims(range(300, 310)), now=5_000.0)
    assert store.purge_processed_keys(G, older_than=1_000.0, limit=1_000) == 301
    assert offsets(store) == [(0, o) for o in range(300, 310)]
    assert store.purge_processed_keys(G, older_than=1_000.0, limit=1_000) == 0


# --- the migration from version 3 ---------------------------------------------------------


def test_a_version_3_store_migrates_to_4_keeping_its_keys(tmp_path: Path) -> None:
    """Version 3's keys (one row each) stay processed; new batches write runs; running the
    migration again changes nothing."""
    path = str(tmp_path / "v3.db")
    old = SQLiteStore(path)
    for statement in SCHEMA_V3:
        old.execute(statement)
    old.execute('INSERT INTO consumer_processed_keys VALUES (%s, %s, %s, 0, 5, 1.0)',
                (G, claim(5).key, "t"))
    old.close()

    store = SQLiteStore(path)
    upgrade = store.ensure_schema(G)
    assert upgrade is not None
    assert (upgrade.from_version, upgrade.to_version) == (3, 4)
    text = upgrade.describe("here")
    assert "from schema version 3 to 4" in text
    assert "kept as one row" in text
    assert "stay digests" not in text, "a version-3 store's keys are ordered already"
    assert store.execute("SELECT version, coordinates_keys FROM consumer_schema").fetchall() \
        == [(4, "ordered")]
    assert store.ordered_coordinates
    assert claimed(store, claims(range(0, 10))) == {c.key for c in claims(range(0, 10))
                                                    if c.offset != 5}
    assert store.ensure_schema(G) is None
