"""The benchmark topic: created and preloaded once per run, read back, deleted at the end."""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


@dataclass(frozen=True)
class Preloaded:
    topic: str
    partitions: int
    messages: int
    size: int
    seconds: float


def create(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                  replication_factor=1)])[topic].result(30)


def delete(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    with contextlib.suppress(KafkaException):  # already gone: nothing to clean up
        admin.delete_topics([topic])[topic].result(30)


def preload(bootstrap: str, topic: str, *, partitions: int, messages: int,
            size: int, keys: int = 0, seed: int = 7) -> Preloaded:
    """Create ``topic`` and produce ``messages`` values of ``size`` ASCII bytes, spread evenly
    over the partitions (no key, no compression), batched: no flush until the end.

    With ``keys``, each message gets one of that many keys (``key-0000``...), drawn at random
    (seeded), and the producer's partitioner places it by its key, as an application would.
    """
    began = time.monotonic()
    create(bootstrap, topic, partitions)
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "linger.ms": 50,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "compression.type": "none",
        "acks": "all",
    })
    filler = b"x" * max(0, size - 12)
    produce = producer.produce
    draw = random.Random(seed).randrange
    for i in range(messages):
        value = (b"%012d" % i + filler)[:size]
        key = b"key-%04d" % draw(keys) if keys else None
        while True:
            try:
                if key is not None:
                    produce(topic, value, key=key)
                else:
                    produce(topic, value, partition=i % partitions)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 20_000 == 0:
            producer.poll(0)
    remaining = producer.flush(120)
    if remaining:
        raise RuntimeError(f"preload: {remaining} messages still unsent to {topic} after 120 s")
    stored = sum(high - low for low, high in watermarks(bootstrap, topic, partitions).values())
    if stored != messages:
        raise RuntimeError(f"preload: {topic} holds {stored} messages, expected {messages}")
    return Preloaded(topic, partitions, messages, size, time.monotonic() - began)


def watermarks(bootstrap: str, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-watermarks"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                for p in range(partitions)}
    finally:
        consumer.close()


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    """The group's committed offsets (None where nothing is committed), without joining it."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    try:
        result = consumer.committed([TopicPartition(topic, p) for p in range(partitions)],
                                    timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset if tp.offset >= 0 else None for tp in result}
