"""Which keys the PostgreSQL store keeps as runs, and how a batch splits into them (the SQL is
tested on a real server: tests/integration/test_postgres_runs.py)."""

from __future__ import annotations

from consumer.dedup import KeyFormat, key_function
from consumer.message import Message
from consumer.store import Claim
from consumer.store.key_runs import CoordinatesKeys, Run, split

TOPIC_IDS = {"t": "id-t", "u": "id-u"}
ORDERED = key_function("coordinates", TOPIC_IDS, key_format=KeyFormat(ordered_coordinates=True))


def claim(offset: int, partition: int = 0, topic: str = "t") -> Claim:
    return Claim(ORDERED(Message(topic, partition, offset, b"", timestamp=0.0)), topic,
                 partition, offset)


def keys(topic_ids: dict[str, str] | None = None) -> CoordinatesKeys:
    found = CoordinatesKeys()
    found.as_runs = True
    found.topic_ids = TOPIC_IDS if topic_ids is None else topic_ids
    return found


def spans(runs: list[Run]) -> list[tuple[str, int, int, int]]:
    """(topic, partition, first offset, how many) of each run."""
    return [(r.topic, r.partition, r.first_offset, r.high - r.low) for r in runs]


def test_a_partition_s_consecutive_offsets_are_one_run_across_other_partitions() -> None:
    """Poll order interleaves partitions: partition 0's 10-14 is one run although partition
    1's messages sit between its halves; a gap starts a new run."""
    batch = [*(claim(o) for o in range(10, 12)), *(claim(o, 1) for o in range(3, 6)),
             *(claim(o) for o in range(12, 15)), claim(16), claim(6, topic="u")]
    runs, others = split(batch, keys())
    assert spans(runs) == [("t", 0, 10, 5), ("t", 1, 3, 3), ("t", 0, 16, 1), ("u", 0, 6, 1)]
    assert others == []
    assert runs[0].key_list() == [claim(o).key for o in range(10, 15)]
    assert (runs[0].low, runs[0].high) == (10, 15)


def test_digest_keys_are_not_runs() -> None:
    digest = Claim(b"\x07" * 16, "t", 0, 20)
    short = Claim(b"\x07" * 8, "t", 0, 21)
    runs, others = split([claim(19), digest, short], keys())
    assert spans(runs) == [("t", 0, 19, 1)]
    assert others == [digest, short]


def test_a_redriven_copy_honouring_a_coordinates_key_is_a_run_of_its_original_key() -> None:
    """The copy sits at offset 900 of partition 2; its key names offset 5 of partition 0, so
    its row claims that key, where the original's own claim would land."""
    honoured = Claim(claim(5).key, "t", 2, 900)
    runs, others = split([honoured], keys())
    assert others == []
    assert (runs[0].head, runs[0].low, runs[0].high) == (claim(5).key[:10], 5, 6)
    assert (runs[0].partition, runs[0].first_offset) == (2, 900)


def test_keys_follow_the_topic_ids_the_key_functions_read() -> None:
    """Before the id is known a topic's keys are named after it; once the mapping (the very
    dict the key functions read) holds the id, the id's keys are the runs."""
    ids: dict[str, str] = {}
    found = keys(ids)
    assert found.holds(claim(1)) is False, "named after the id, not the name"
    ids.update(TOPIC_IDS)
    assert found.holds(claim(1)) is True


def test_nothing_is_a_run_until_the_store_says_it_keeps_runs() -> None:
    found = keys()
    found.as_runs = False
    assert found.holds(claim(1)) is False


def test_a_key_that_is_not_its_message_s_coordinates_breaks_a_run() -> None:
    """A redriven copy at offset 3 honours the key of offset 900: its neighbours' keys are
    not consecutive with it, so partition 0's stretch is three runs, each key in its place."""
    batch = [claim(o) for o in range(0, 6)]
    batch[3] = Claim(claim(900).key, "t", 0, 3)
    runs, others = split(batch, keys())
    assert others == []
    assert [(r.first_offset, r.low, r.high) for r in runs] == [(0, 0, 3), (3, 900, 901),
                                                               (4, 4, 6)]
    assert [key for run in runs for key in run.key_list()] == [c.key for c in batch]


def test_a_run_never_takes_a_key_of_another_partition_or_topic() -> None:
    """Consecutive message offsets of another partition (or topic) start their own run even
    where the previous claim's run could go on."""
    batch = [claim(0), claim(1), claim(2, partition=1), claim(3, topic="u")]
    runs, _ = split(batch, keys())
    assert spans(runs) == [("t", 0, 0, 2), ("t", 1, 2, 1), ("u", 0, 3, 1)]
