"""consumer.checkpoint.store_message's StoreRows: the poll thread's checkpoint of partitions
whose handlers run concurrently with a store: rows moved to the watermark, fenced by epoch,
then Kafka's copy. (StoreWork needs concurrent writers: tests/integration/
test_concurrent_store.py runs it on PostgreSQL.) A real SQLite file; InMemorySource for Kafka."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.checkpoint.commits import KafkaCommits
from consumer.checkpoint.progress import PartitionProgress
from consumer.checkpoint.store_message import StoreRows, Tally
from consumer.errors import Fenced
from consumer.events import Trigger
from consumer.message import Message
from consumer.store.sqlite import SQLiteStore
from consumer.testing import InMemorySource, RecordingObserver

GROUP = "g"


def rows_of(store: SQLiteStore) -> dict[tuple[str, int], int | None]:
    return store.checkpoints(GROUP)


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    opened = SQLiteStore(str(tmp_path / "store.db"))
    opened.ensure_schema()
    return opened


def setup(store: SQLiteStore) -> tuple[StoreRows, InMemorySource, dict[tuple[str, int],
                                                                      PartitionProgress]]:
    source = InMemorySource({"t": [[b"a"] * 10, [b"b"] * 10]})
    commits = KafkaCommits(source, observer=RecordingObserver(), monotonic=lambda: 0.0)
    positions = store.assign(GROUP, [("t", 0), ("t", 1)], 1.0)
    partitions = {tp: PartitionProgress(*tp, epoch=positions[tp].epoch) for tp in positions}
    return StoreRows(store, group=GROUP, commits=commits, now=lambda: 2.0), source, partitions


def test_rows_move_to_the_watermarks_that_moved_then_kafka_follows(store: SQLiteStore) -> None:
    rows, source, partitions = setup(store)
    partitions[("t", 0)].advance(4, 4, 0.0)  # partition 1 has nothing finished yet
    assert rows.run(Trigger.SHUTDOWN, partitions.values()) == {("t", 0): 4}
    assert rows_of(store) == {("t", 0): 4, ("t", 1): None}
    assert source.commits == [({("t", 0): 4}, False)]
    partitions[("t", 1)].advance(7, 7, 0.0)
    rows.run(Trigger.REVOKE, partitions.values())
    assert rows_of(store) == {("t", 0): 4, ("t", 1): 7}
    assert source.commits[-1] == ({("t", 1): 7}, False), "only what moved"


def test_a_newer_owner_fences_the_rows_and_nothing_moves(store: SQLiteStore,
                                                         tmp_path: Path) -> None:
    rows, source, partitions = setup(store)
    newer = SQLiteStore(str(tmp_path / "store.db"))
    newer.assign(GROUP, [("t", 1)], 3.0)  # another member took partition 1
    partitions[("t", 0)].advance(4, 4, 0.0)
    partitions[("t", 1)].advance(5, 5, 0.0)
    with pytest.raises(Fenced, match=r"t\[1\]"):
        rows.run(Trigger.INTERVAL, partitions.values())
    assert rows_of(store) == {("t", 0): None, ("t", 1): None}, "the whole checkpoint rolled back"
    assert source.commits == [], "Kafka is not told"


def test_tally_counts_what_workers_applied_and_skipped_and_tells_each_duplicate() -> None:
    duplicates: list[int] = []
    tally = Tally(on_duplicate=lambda message: duplicates.append(message.offset))
    for offset, applied in enumerate((True, True, False)):
        tally.count(applied, Message("t", 0, offset, b"v"))
    assert tally.take() == (2, 1)
    assert tally.take() == (0, 0)
    assert duplicates == [2]
