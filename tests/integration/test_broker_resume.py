"""The local broker is a real Kafka: group commits survive a consumer and a second one resumes."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.support.kafka import create_topic, produce, unique_name

pytestmark = pytest.mark.integration

TOTAL = 10_000
FIRST_CONSUMER_STOPS_AFTER = 6_000


def _consumer(bootstrap: str, group: str, topic: str) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    return consumer


def _read(consumer: Consumer, limit: int, *, idle_timeout: float) -> list[tuple[int, int, int]]:
    """Read up to ``limit`` messages as (partition, offset, value); commit what was read."""
    seen: list[tuple[int, int, int]] = []
    next_offsets: dict[int, int] = {}
    idle_turns = 0
    while len(seen) < limit and idle_turns < idle_timeout / 0.5:
        batch = consumer.consume(num_messages=min(500, limit - len(seen)), timeout=0.5)
        if not batch:
            idle_turns += 1 if seen else 0
            continue
        idle_turns = 0
        for message in batch:
            if message.error() is not None:
                raise AssertionError(f"consume error: {message.error()}")
            seen.append((message.partition(), message.offset(), int(message.value())))
            next_offsets[message.partition()] = message.offset() + 1
        commits = [TopicPartition(message.topic(), p, o) for p, o in next_offsets.items()]
        consumer.commit(offsets=commits, asynchronous=False)
    return seen


def test_second_consumer_resumes_at_committed_offsets(kafka_bootstrap: str) -> None:
    """10,000 messages over 3 partitions: the second consumer of the group starts exactly where
    the first one's commits left off, so every message is read once and none is skipped."""
    topic = create_topic(kafka_bootstrap, partitions=3, prefix="resume")
    group = unique_name("resume-group")
    produce(kafka_bootstrap, topic, (str(i).encode() for i in range(TOTAL)))

    first = _consumer(kafka_bootstrap, group, topic)
    first_seen = _read(first, FIRST_CONSUMER_STOPS_AFTER, idle_timeout=30)
    first.close()
    assert len(first_seen) == FIRST_CONSUMER_STOPS_AFTER

    second = _consumer(kafka_bootstrap, group, topic)
    committed = second.committed(
        [TopicPartition(topic, p) for p in range(3)], timeout=10
    )
    second_seen = _read(second, TOTAL, idle_timeout=5)
    second.close()

    first_values = {value for _, _, value in first_seen}
    second_values = {value for _, _, value in second_seen}
    assert len(second_seen) == TOTAL - FIRST_CONSUMER_STOPS_AFTER
    assert first_values.isdisjoint(second_values), "a message was read by both consumers"
    assert first_values | second_values == set(range(TOTAL)), "a message was skipped"
    # A partition the first consumer never read has no commit (a negative sentinel): the
    # second one starts it from the beginning, as auto.offset.reset=earliest says.
    resume_at = {tp.partition: max(tp.offset, 0) for tp in committed}
    for partition in range(3):
        offsets = [o for p, o, _ in second_seen if p == partition]
        if offsets:
            assert min(offsets) == resume_at[partition]
