"""The store cycle benchmark times what it names: every batch claimed new and closed, the
partitions' rows at the last batch of each."""

from __future__ import annotations

from pathlib import Path

from benchmarks.store_cycle import GROUP, PARTITIONS, TOPIC, TOPIC_IDS, batches, cycle
from consumer.store import open_store


def test_every_batch_is_claimed_new_and_moves_its_partitions_row(tmp_path: Path) -> None:
    made = batches(2 * PARTITIONS, 50)
    assert [(partition, len(claims)) for partition, claims, _ in made] \
        == [(p, 50) for p in range(PARTITIONS)] * 2
    store = open_store(f"sqlite:///{tmp_path / 'cycle.db'}")
    store.ensure_schema(GROUP)
    store.use_topic_ids(TOPIC_IDS)
    store.assign(GROUP, [(TOPIC, p) for p in range(PARTITIONS)], 1.0)
    wall, cpu = cycle(store, made, 0.0)
    assert wall > 0 and cpu > 0
    assert store.checkpoints(GROUP) == {(TOPIC, p): 100 for p in range(PARTITIONS)}
    store.close()
