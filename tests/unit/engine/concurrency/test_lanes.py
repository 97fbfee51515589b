"""consumer.engine.concurrency.lanes: which queued messages may start, per ordering."""

from __future__ import annotations

from consumer.engine.concurrency.lanes import Lanes, Ordering
from consumer.message import Message


def message(offset: int, key: bytes | None, partition: int = 0) -> Message:
    return Message("t", partition, offset, b"v", key=key, timestamp=0.0)


def startable(lanes: Lanes) -> list[int]:
    started = []
    while (m := lanes.start()) is not None:
        started.append(m.offset)
    return started


def filled(ordering: Ordering, concurrency: int = 10) -> Lanes:
    lanes = Lanes(ordering, concurrency)
    for offset, key in enumerate([b"a", b"a", b"b", b"c", b"b"]):
        lanes.push(message(offset, key))
    return lanes


def test_key_ordering_starts_one_message_per_key_in_offset_order() -> None:
    lanes = filled("key")
    assert startable(lanes) == [0, 2, 3]  # the first of a, b and c
    lanes.finished(message(2, b"b"))
    assert startable(lanes) == [4]  # b's next; a's next waits for 0
    lanes.finished(message(0, b"a"))
    assert startable(lanes) == [1]


def test_partition_ordering_starts_one_message_per_partition() -> None:
    lanes = filled("partition")
    lanes.push(message(0, b"z", partition=1))
    assert startable(lanes) == [0, 0]  # the head of partition 0 and of partition 1
    lanes.finished(message(0, b"a"))
    assert startable(lanes) == [1]


def test_none_ordering_starts_everything_up_to_the_concurrency() -> None:
    lanes = filled("none", concurrency=3)
    assert startable(lanes) == [0, 1, 2]
    assert (lanes.in_flight, lanes.queued) == (3, 2)
    lanes.finished(message(1, b"a"))
    assert startable(lanes) == [3]


def test_a_held_message_blocks_only_its_key_until_its_retry_time() -> None:
    lanes = filled("key")
    assert startable(lanes) == [0, 2, 3]
    lanes.hold(message(0, b"a"), until=10.0)
    lanes.finished(message(2, b"b"))
    assert startable(lanes) == [4]  # b goes on; a's 1 waits behind the held 0
    lanes.release(9.0)
    assert startable(lanes) == []
    lanes.release(10.0)
    assert startable(lanes) == [0]  # the failed message first, then its key's next
    lanes.finished(message(0, b"a"))
    assert startable(lanes) == [1]


def test_dropping_a_partition_forgets_its_queue_but_a_running_key_stays_busy() -> None:
    lanes = filled("key")
    assert startable(lanes) == [0, 2, 3]
    assert lanes.drop({("t", 0)}) == 2
    assert (lanes.queued, lanes.queued_per_partition) == (0, {})
    lanes.push(message(7, b"a"))  # reassigned: a's 0 still runs, so a's 7 waits
    assert startable(lanes) == []
    lanes.finished(message(0, b"a"))
    assert startable(lanes) == [7]
