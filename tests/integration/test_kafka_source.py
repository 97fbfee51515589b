"""consumer.kafka.source against the real broker: how a poll waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import pytest

from consumer.errors import KafkaError
from consumer.kafka.source import KafkaSource
from consumer.message import TP
from consumer.settings import KafkaSettings
from tests.support.kafka import create_topic, produce, unique_name, wait_for

pytestmark = pytest.mark.integration

#: Far longer than any delivery on this broker: a poll that waits it out is the bug.
LONG_POLL = 60.0


class Assignments:
    """Records the partitions assigned; positions nothing itself."""

    def __init__(self) -> None:
        self.assigned: list[TP] = []

    def on_assigned(self, partitions: list[TP]) -> Mapping[TP, int]:
        self.assigned.extend(partitions)
        return {}

    def on_revoked(self, partitions: list[TP]) -> None: ...

    def on_lost(self, partitions: list[TP]) -> None: ...

    def on_commit_result(self, offsets: Mapping[TP, int], error: KafkaError | None) -> None: ...

    def on_client_error(self, error: KafkaError) -> None: ...


def test_a_poll_returns_a_message_of_a_quiet_topic_when_it_arrives_not_at_the_timeout(
    kafka_bootstrap: str,
) -> None:
    """The client's consume(n, timeout) waits for n messages or the timeout: on a quiet topic
    each message would wait out the poll timeout (0.5 s by default, each retry too). A poll
    returns as soon as it has a message."""
    topic = create_topic(kafka_bootstrap, 1, prefix="quiet")
    source = KafkaSource(KafkaSettings(bootstrap_servers=kafka_bootstrap,
                                       group_id=unique_name("quiet")))
    listener = Assignments()
    source.subscribe([topic], listener)
    try:
        wait_for(lambda: source.poll(500, 0.2) == [] and bool(listener.assigned), timeout=30,
                 what=f"{topic} to be assigned")
        # Produced once the poll below is waiting (a message queued before it would be
        # returned at once by either way of polling).
        producer = threading.Timer(1.0, lambda: produce(kafka_bootstrap, topic, [b"one"]))
        producer.start()
        started = time.monotonic()
        messages = source.poll(500, LONG_POLL)
        waited = time.monotonic() - started
        producer.join()
        assert [m.value for m in messages] == [b"one"]
        assert waited < LONG_POLL / 2, f"the poll waited {waited:.1f} s for one message"
    finally:
        source.close()


@pytest.mark.parametrize("topics", [1, 2])
def test_each_message_names_the_topic_it_was_read_from(kafka_bootstrap: str,
                                                        topics: int) -> None:
    """With one topic subscribed the poll gives every message the subscription's name instead
    of asking the client for it; with several, each record's own."""
    names = [create_topic(kafka_bootstrap, 2, prefix=f"named{index}") for index in range(topics)]
    for name in names:
        produce(kafka_bootstrap, name, [name.encode()] * 5)
    source = KafkaSource(KafkaSettings(bootstrap_servers=kafka_bootstrap,
                                       group_id=unique_name("named"),
                                       auto_offset_reset="earliest"))
    source.subscribe(names, Assignments())
    seen: list[tuple[str, bytes | None]] = []
    try:
        def read_all() -> bool:
            seen.extend((m.topic, m.value) for m in source.poll(500, 0.2))
            return len(seen) >= 5 * topics

        wait_for(read_all, timeout=30, what=f"the {5 * topics} messages of {names}")
    finally:
        source.close()
    assert sorted(seen) == sorted((name, name.encode()) for name in names for _ in range(5))


class Revocations(Assignments):
    """Records the partitions assigned and revoked."""

    def __init__(self) -> None:
        super().__init__()
        self.revoked: list[TP] = []

    def on_revoked(self, partitions: list[TP]) -> None:
        self.revoked.extend(partitions)


def test_a_partition_paused_before_it_was_revoked_is_fetched_again_once_reassigned(
    kafka_bootstrap: str,
) -> None:
    """The client keeps a partition's pause across a revoke and a later assignment, but whoever
    paused it (a full route, a retry's backoff) forgot the partition when it went. The source
    resumes what it assigns: a partition given back is fetched, not paused for good."""
    topic = create_topic(kafka_bootstrap, 2, prefix="repaused")
    group = unique_name("repaused")
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, group_id=group,
                             auto_offset_reset="earliest")
    first, first_listener = KafkaSource(settings), Revocations()
    first.subscribe([topic], first_listener)
    second: KafkaSource | None = None
    try:
        wait_for(lambda: first.poll(500, 0.2) == [] and len(first_listener.assigned) == 2,
                 timeout=30, what=f"both partitions of {topic} to be assigned")
        first.pause([(topic, 0), (topic, 1)])
        second, second_listener = KafkaSource(settings), Assignments()
        second.subscribe([topic], second_listener)
        joined = second

        def moved() -> bool:
            first.poll(500, 0.1)
            joined.poll(500, 0.1)
            return bool(first_listener.revoked) and bool(second_listener.assigned)

        wait_for(moved, timeout=60, what="a partition to move to the second consumer")
        [went] = first_listener.revoked
        second.close()
        second = None
        wait_for(lambda: first.poll(500, 0.2) == [] and first_listener.assigned[-1] == went,
                 timeout=60, what=f"{went} to come back to the first consumer")
        produce(kafka_bootstrap, topic, [b"back", b"kept"],
                partition=lambda i: went[1] if i == 0 else 1 - went[1])
        received: list[bytes | None] = []
        wait_for(lambda: bool(received.extend(m.value for m in first.poll(500, 0.2)))
                 or bool(received), timeout=30, what=f"a message of {went} once reassigned")
        # The partition that never went keeps the pause it was given.
        assert received == [b"back"]
    finally:
        if second is not None:
            second.close()
        first.close()
