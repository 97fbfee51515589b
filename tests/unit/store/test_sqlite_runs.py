"""Runs of processed keys in the SQLite store: a batch's consecutive coordinates keys of one
partition kept as one row (the promises every store with runs keeps are in
tests/support/runs_contract.py), how a batch splits, and the migration from version 3."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.store import Claim
from consumer.store.base import SQLITE_SCHEMA_VERSION
from consumer.store.sqlite import SQLiteStore
from consumer.store.sqlite_runs import Run, split
from tests.support.runs_contract import TOPIC_IDS, G, RunsContract, claim, claimed, claims
from tests.support.store_v3 import SQLITE as SCHEMA_V3


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    store = SQLiteStore(str(tmp_path / "store.db"))
    store.ensure_schema()
    store.use_topic_ids(TOPIC_IDS)
    return store


class TestSQLiteRuns(RunsContract):
    """The runs contract on a SQLite file."""


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


def test_a_run_is_refused_when_a_key_of_the_batch_before_it_is_inside(
        store: SQLiteStore) -> None:
    """Keys already single in the table block a run spanning them, at either end."""
    claimed(store, [Claim(claim(0).key, "u", 3, 0), Claim(claim(9).key, "u", 3, 1)])
    assert claimed(store, claims(range(0, 10))) == {c.key for c in claims(range(1, 9))}


# --- the migration from version 3 ---------------------------------------------------------


def test_a_version_3_store_migrates_keeping_its_keys(tmp_path: Path) -> None:
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
    assert (upgrade.from_version, upgrade.to_version) == (3, SQLITE_SCHEMA_VERSION)
    text = upgrade.describe("here")
    assert f"from schema version 3 to {SQLITE_SCHEMA_VERSION}" in text
    assert "kept as one row" in text
    assert "stay digests" not in text, "a version-3 store's keys are ordered already"
    assert store.execute("SELECT version, coordinates_keys FROM consumer_schema").fetchall() \
        == [(SQLITE_SCHEMA_VERSION, "ordered")]
    assert store.ordered_coordinates
    assert claimed(store, claims(range(0, 10))) == {c.key for c in claims(range(0, 10))
                                                    if c.offset != 5}
    assert store.ensure_schema(G) is None
