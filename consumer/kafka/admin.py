"""Kafka reads and writes outside the consumer group's life, for the commands: a whole topic
(dead letters, for redrive), a group's committed offsets and log ranges (``consumer lag``),
offsets by time, a group's member count and a stopped group's offsets (``consumer replay``).

Each call opens its own short-lived client and never joins the group; it blocks up to its
timeout and raises :class:`~consumer.errors.KafkaError`. The running loop never calls these.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

import confluent_kafka
from confluent_kafka import Consumer, KafkaException, TopicPartition

from consumer.errors import KafkaError
from consumer.kafka.client import admin_config, client_config, translate_error
from consumer.kafka.protocol import COMMIT_MARKER, GroupPosition
from consumer.message import TP, Message
from consumer.settings import KafkaSettings


def read_topic(settings: KafkaSettings, topic: str, *, timeout: float = 60.0) -> list[Message]:
    """Every message in ``topic`` up to its end offsets now, read without joining a group."""
    consumer = Consumer(client_config(
        settings, {"group.id": f"{settings.group_id}-reader",  # required, never joined
                   "enable.auto.commit": False}, client_id=f"{settings.client_id}-reader"))
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise KafkaError("UNKNOWN_TOPIC_OR_PART", f"topic {topic} does not exist")
        ends: dict[int, int] = {}
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                       timeout=10)
            if high > low:
                ends[partition] = high
        consumer.assign([TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                         for p in ends])
        found: list[Message] = []
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            for record in consumer.consume(500, timeout=0.5):
                if record.error() is not None:
                    continue
                kind, stamp = record.timestamp()
                found.append(Message(topic, record.partition() or 0, record.offset() or 0,
                                     record.value(), key=record.key(),
                                     headers=record.headers(),  # type: ignore[arg-type]
                                     timestamp=stamp / 1000.0 if kind else None))
                if (record.offset() or 0) + 1 >= ends.get(record.partition() or 0, 0):
                    ends.pop(record.partition() or 0, None)
        if ends:
            raise KafkaError("_TIMED_OUT", f"could not read {topic} to its end in {timeout} s")
        return found
    except KafkaException as error:
        raise translate_error(error.args[0]) from error
    finally:
        consumer.close()


def read_group_positions(
    settings: KafkaSettings, group: str, topics: list[str] | None, *, timeout: float = 10.0
) -> list[GroupPosition]:
    """The group's committed offsets and each partition's log range, for ``consumer lag``.

    Without topics: every partition the group has committed offsets for. Does not join the
    group, so it works while the group runs. Raises :class:`KafkaError`.
    """
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.admin._listoffsets import OffsetSpec  # not re-exported for mypy

    admin = AdminClient(admin_config(settings))
    try:
        wanted = None
        if topics:
            metadata = admin.list_topics(timeout=timeout).topics
            missing = [t for t in topics if t not in metadata or metadata[t].error is not None]
            if missing:
                raise KafkaError("UNKNOWN_TOPIC_OR_PART",
                                 f"no such topic: {', '.join(missing)}")
            wanted = [TopicPartition(t, p) for t in topics for p in sorted(metadata[t].partitions)]
        request = ConsumerGroupTopicPartitions(group, wanted)
        listed = admin.list_consumer_group_offsets([request], request_timeout=timeout)
        committed = listed[group].result(timeout=timeout).topic_partitions or []
        partitions = [TopicPartition(tp.topic, tp.partition) for tp in committed]
        ends: dict[str, dict[TP, int]] = {}
        for which in ("earliest", "latest"):
            spec = getattr(OffsetSpec, which)()  # OffsetSpec's factories are untyped
            futures = admin.list_offsets({tp: spec for tp in partitions},
                                         request_timeout=timeout) if partitions else {}
            ends[which] = {(tp.topic, tp.partition): f.result(timeout=timeout).offset
                           for tp, f in futures.items()}
    except KafkaException as error:
        raise translate_error(error.args[0]) from error
    starts, latest = ends["earliest"], ends["latest"]
    return sorted(
        (GroupPosition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else None,
                       tp.metadata or None, starts[(tp.topic, tp.partition)],
                       latest[(tp.topic, tp.partition)])
         for tp in committed),
        key=lambda p: (p.topic, p.partition),
    )


def group_member_count(settings: KafkaSettings, group: str, *, timeout: float = 10.0) -> int:
    """How many members the group has now (0: stopped). Raises :class:`KafkaError`."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(admin_config(settings))
    try:
        described = admin.describe_consumer_groups([group], request_timeout=timeout)
        return len(described[group].result(timeout=timeout).members or [])
    except KafkaException as error:
        raise translate_error(error.args[0]) from error


def offsets_at(settings: KafkaSettings, partitions: Iterable[TP], *, timestamp_ms: int,
               timeout: float = 10.0) -> dict[TP, int]:
    """Per partition, the first offset whose record timestamp is at or after ``timestamp_ms``
    (the end of the log when none is). Raises :class:`KafkaError`."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.admin._listoffsets import OffsetSpec  # not re-exported for mypy

    admin = AdminClient(admin_config(settings))
    wanted = [TopicPartition(t, p) for t, p in partitions]
    try:
        latest = getattr(OffsetSpec, "latest")()  # noqa: B009 (OffsetSpec's factories are untyped)
        at = admin.list_offsets({tp: OffsetSpec.for_timestamp(timestamp_ms) for tp in wanted},
                                request_timeout=timeout)
        end = admin.list_offsets({tp: latest for tp in wanted}, request_timeout=timeout)
        found = {}
        for tp in wanted:
            offset = at[tp].result(timeout=timeout).offset
            found[(tp.topic, tp.partition)] = (
                offset if offset >= 0 else end[tp].result(timeout=timeout).offset)
        return found
    except KafkaException as error:
        raise translate_error(error.args[0]) from error


def set_group_offsets(settings: KafkaSettings, group: str, offsets: Mapping[TP, int], *,
                      timeout: float = 10.0) -> None:
    """Set a stopped group's committed offsets, with our marker (so the next owner does not
    take them for another tool's reset). Raises :class:`KafkaError`."""
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(admin_config(settings))
    request = ConsumerGroupTopicPartitions(group, [
        TopicPartition(t, p, offset, metadata=COMMIT_MARKER) for (t, p), offset in offsets.items()
    ])
    try:
        result = admin.alter_consumer_group_offsets([request], request_timeout=timeout)
        for tp in result[group].result(timeout=timeout).topic_partitions or []:
            if tp.error is not None:
                raise translate_error(tp.error)
    except KafkaException as error:
        raise translate_error(error.args[0]) from error
