"""Helpers for integration tests against a real broker: unique topics, produce and wait."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from consumer_process import wait_for


def unique_name(prefix: str) -> str:
    """A topic or group name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_topic(bootstrap: str, partitions: int, *, prefix: str = "test") -> str:
    """Create a uniquely named topic and wait until every partition has a leader."""
    name = unique_name(prefix)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    futures[name].result(timeout=30)

    def ready() -> bool:
        topic = admin.list_topics(topic=name, timeout=5).topics.get(name)
        if topic is None or topic.error is not None or len(topic.partitions) != partitions:
            return False
        return all(p.leader >= 0 for p in topic.partitions.values())

    wait_for(ready, timeout=30, what=f"topic {name} to have leaders for {partitions} partitions")
    return name


def create_named_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    """Create a topic with a given name (a route's dead-letter topic, say)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions,
                                            replication_factor=1)])
    futures[name].result(timeout=30)


def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[bytes],
    *,
    key: Callable[[int], bytes | None] = lambda i: str(i).encode(),
    partition: Callable[[int], int] | None = None,
    headers: Callable[[int], list[tuple[str, bytes]]] | None = None,
    timeout: float = 60.0,
    in_order: bool = False,
    batch_bytes: int | None = None,
    linger_ms: int = 5,
) -> int:
    """Produce every value, wait for each delivery report, and fail on any delivery error.

    ``in_order``: an idempotent producer, so a retried batch cannot land behind a later one
    (each partition's log then holds its values in the order given). ``batch_bytes``: the
    largest record batch written (the client's default is about 1 MB). ``linger_ms``: how
    long the client waits to fill a batch; a long one keeps a few values in one record batch
    (the flush at the end sends it at once), which a consumer fetches whole."""
    settings: dict[str, object] = {"bootstrap.servers": bootstrap, "linger.ms": linger_ms,
                                   "acks": "all", "enable.idempotence": in_order}
    if batch_bytes is not None:
        settings["batch.size"] = batch_bytes
    producer = Producer(settings)
    errors: list[str] = []
    delivered = 0

    def on_delivery(error: object, _message: object) -> None:
        nonlocal delivered
        if error is not None:
            errors.append(str(error))
        else:
            delivered += 1

    sent = 0
    for i, value in enumerate(values):
        extra: dict[str, object] = {}
        if partition is not None:
            extra["partition"] = partition(i)
        if headers is not None:
            extra["headers"] = headers(i)
        while True:
            try:
                producer.produce(topic, value=value, key=key(i), on_delivery=on_delivery, **extra)
                break
            except BufferError:
                producer.poll(0.1)
        sent += 1
        producer.poll(0)
    remaining = producer.flush(timeout)
    if remaining or errors or delivered != sent:
        raise AssertionError(
            f"produced {sent} to {topic}: {delivered} delivered, {remaining} still queued, "
            f"errors: {errors[:5]}"
        )
    return sent


def group_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    """The group's committed offsets as Kafka reports them (None: nothing committed)."""
    return {partition: offset for partition, (offset, _) in
            group_commits(bootstrap, group, topic, partitions).items()}


def group_commits(bootstrap: str, group: str, topic: str,
                  partitions: int) -> dict[int, tuple[int | None, str | None]]:
    """The group's committed offsets with their metadata (None, None: nothing committed),
    asking again while the coordinator loads the group (a broker busy starting up)."""
    from consumer.kafka.admin import group_offsets
    from consumer.settings import KafkaSettings

    found = group_offsets(KafkaSettings(bootstrap_servers=bootstrap, group_id=group), group,
                          [(topic, p) for p in range(partitions)], timeout=30.0)
    return {partition: committed for (_, partition), committed in found.items()}


def read_topic(bootstrap: str, topic: str, *, timeout: float = 30.0) -> list[object]:
    """Every message now in ``topic``, read without a group (confluent_kafka Message objects)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("reader"),
                         "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        ends = {}
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                       timeout=10)
            if high > low:
                ends[partition] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        found: list[object] = []
        remaining = dict(ends)
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=0.5):
                if message.error() is not None:
                    continue
                found.append(message)
                if message.offset() + 1 >= remaining.get(message.partition(), 0):
                    remaining.pop(message.partition(), None)
        if remaining:
            raise AssertionError(f"could not read {topic} to its end: {remaining} left")
        return found
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition's log end offset (the next offset to be written)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("ends")})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in metadata.partitions}
    finally:
        consumer.close()
