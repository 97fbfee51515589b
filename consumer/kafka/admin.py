"""Kafka reads and writes outside the consumer group's life, for the commands: a whole topic
(dead letters, for redrive), a group's committed offsets and log ranges (``consumer lag``),
offsets by time, a group's member count and a stopped group's offsets (``consumer replay``).

Each call opens its own short-lived client and never joins the group; it blocks up to its
timeout and raises :class:`~consumer.errors.KafkaError` (brokers refusing our SASL credentials:
``KafkaAuthenticationFailed`` at once, not after the timeout). The running loop never calls
these.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import confluent_kafka
from confluent_kafka import Consumer, KafkaException, TopicPartition

from consumer.errors import KafkaError
from consumer.kafka.client import (
    RefusedWatch,
    admin_config,
    authentication_failed,
    client_config,
    translate_error,
)
from consumer.kafka.committed import ask_committed
from consumer.kafka.protocol import COMMIT_MARKER, GroupPosition
from consumer.message import TP, Message
from consumer.settings import KafkaSettings


def _connected(settings: KafkaSettings, make: Callable[[dict[str, Any]], Any],
               config: dict[str, Any], *, timeout: float = 10.0) -> Any:
    """A client a broker has answered (a metadata request). Credentials the brokers refuse
    raise :class:`~consumer.errors.KafkaAuthenticationFailed` as soon as they are refused;
    no answer in ``timeout`` seconds raises :class:`KafkaError`."""
    watch = RefusedWatch()
    client = make({**config, "error_cb": watch})
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.list_topics(timeout=0.5).brokers:
                return client
            reason = "no broker in the metadata"
        except KafkaException as error:
            reason = error.args[0].str() if error.args else str(error)
        client.poll(0)  # serves the error callback
        if watch.refused is not None:
            raise authentication_failed(settings, watch.refused)
        if time.monotonic() >= deadline:
            raise KafkaError("_TRANSPORT", f"no broker at {settings.bootstrap_servers} answered "
                                           f"in {timeout:.0f} s ({reason}); check "
                                           "kafka.bootstrap_servers and that the brokers are up")


def _timed_out(settings: KafkaSettings, what: str, timeout: float) -> KafkaError:
    return KafkaError("_TIMED_OUT", f"Kafka at {settings.bootstrap_servers} did not answer "
                                    f"{what} in {timeout:.0f} s")


def read_topic(settings: KafkaSettings, topic: str, *, timeout: float = 60.0) -> list[Message]:
    """Every message in ``topic`` up to its end offsets now, read without joining a group."""
    consumer = _connected(settings, Consumer, client_config(
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
                                     headers=record.headers(),
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

    Without topics: every partition of the cluster's topics the group has committed offsets
    for. Does not join the group, so it works while the group runs. Raises
    :class:`KafkaError`.
    """
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.admin._listoffsets import OffsetSpec  # not re-exported for mypy

    admin = _connected(settings, AdminClient, admin_config(settings), timeout=timeout)
    try:
        metadata = admin.list_topics(timeout=timeout).topics
        if topics:
            missing = [t for t in topics if t not in metadata or metadata[t].error is not None]
            if missing:
                raise KafkaError("UNKNOWN_TOPIC_OR_PART",
                                 f"no such topic: {', '.join(missing)}")
            chosen = topics
        else:  # the cluster's own topics (``__consumer_offsets``, ...) hold no group's work
            chosen = sorted(t for t, m in metadata.items()
                            if not t.startswith("__") and m.error is None)
        wanted = [(t, p) for t in chosen for p in sorted(metadata[t].partitions)]
        committed = group_offsets(settings, group, wanted, timeout=timeout,
                                  cluster_topics=metadata)
        if not topics:
            committed = {tp: found for tp, found in committed.items() if found[0] is not None}
        partitions = [TopicPartition(t, p) for t, p in committed]
        ends: dict[str, dict[TP, int]] = {}
        for which in ("earliest", "latest"):
            spec = getattr(OffsetSpec, which)()  # OffsetSpec's factories are untyped
            futures = admin.list_offsets({tp: spec for tp in partitions},
                                         request_timeout=timeout) if partitions else {}
            ends[which] = {(tp.topic, tp.partition): f.result(timeout=timeout).offset
                           for tp, f in futures.items()}
    except KafkaException as error:
        raise translate_error(error.args[0]) from error
    except TimeoutError:  # a future's result(timeout=...)
        raise _timed_out(settings, f"for group {group}'s offsets", timeout) from None
    starts, latest = ends["earliest"], ends["latest"]
    return [GroupPosition(topic, partition, offset, note or None, starts[(topic, partition)],
                          latest[(topic, partition)])
            for (topic, partition), (offset, note) in sorted(committed.items())]


#: Where the brokers keep committed offsets; created at the first commit of any group.
OFFSETS_TOPIC = "__consumer_offsets"


def group_offsets(settings: KafkaSettings, group: str, partitions: Iterable[TP], *,
                  timeout: float = 10.0, cluster_topics: Collection[str] | None = None,
                  ) -> dict[TP, tuple[int | None, str | None]]:
    """The group's committed offset and its metadata per partition ((None, None): nothing
    committed), read while the group runs or is stopped. Raises :class:`KafkaError`.

    Read by a consumer of the group that never joins it, not by an admin client: when the
    coordinator answers "not the coordinator" (a broker taking its groups back after a
    restart, a group moving), librdkafka's admin client (2.16) crashes the process with
    SIGSEGV, where a consumer only reports the answer and is asked again."""
    reader = _connected(settings, Consumer, client_config(
        settings, {"group.id": group, "enable.auto.commit": False},  # never joined
        client_id=f"{settings.client_id}-offsets"), timeout=timeout)
    try:
        return committed_offsets(reader, list(partitions), timeout=timeout,
                                 cluster_topics=cluster_topics)
    except KafkaException as error:
        raise translate_error(error.args[0]) from error
    finally:
        reader.close()


def committed_offsets(reader: Any, partitions: list[TP], *, timeout: float,
                      cluster_topics: Collection[str] | None = None,
                      ) -> dict[TP, tuple[int | None, str | None]]:
    """What :func:`~consumer.kafka.committed.ask_committed` answers for ``reader``'s group
    (its ``group.id``). Raises KafkaException.

    On a cluster where no group ever committed, ``__consumer_offsets`` does not exist yet:
    nothing is committed, and the answer says so without asking (asking would have the
    broker create that topic for a read, and wait for it). ``cluster_topics``: the cluster's
    topic names when the caller has just read them (else they are read here)."""
    if cluster_topics is None:
        cluster_topics = reader.list_topics(timeout=timeout).topics
    if OFFSETS_TOPIC not in cluster_topics:
        return {tp: (None, None) for tp in partitions}
    return ask_committed(reader, partitions, timeout=timeout)


def group_member_count(settings: KafkaSettings, group: str, *, timeout: float = 10.0) -> int:
    """How many members the group has now (0: stopped). Raises :class:`KafkaError`."""
    from confluent_kafka.admin import AdminClient

    admin = _connected(settings, AdminClient, admin_config(settings), timeout=timeout)
    try:
        described = admin.describe_consumer_groups([group], request_timeout=timeout)
        return len(described[group].result(timeout=timeout).members or [])
    except KafkaException as error:
        raise translate_error(error.args[0]) from error
    except TimeoutError:  # a future's result(timeout=...)
        raise _timed_out(settings, f"describing group {group}", timeout) from None


def offsets_at(settings: KafkaSettings, partitions: Iterable[TP], *, timestamp_ms: int,
               timeout: float = 10.0) -> dict[TP, int]:
    """Per partition, the first offset whose record timestamp is at or after ``timestamp_ms``
    (the end of the log when none is). Raises :class:`KafkaError`."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.admin._listoffsets import OffsetSpec  # not re-exported for mypy

    admin = _connected(settings, AdminClient, admin_config(settings), timeout=timeout)
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
    except TimeoutError:  # a future's result(timeout=...)
        raise _timed_out(settings, "for offsets by time", timeout) from None


def set_group_offsets(settings: KafkaSettings, group: str, offsets: Mapping[TP, int], *,
                      timeout: float = 10.0) -> None:
    """Set a stopped group's committed offsets, with our marker (so the next owner does not
    take them for another tool's reset). Raises :class:`KafkaError`."""
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import AdminClient

    admin = _connected(settings, AdminClient, admin_config(settings), timeout=timeout)
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
    except TimeoutError:  # a future's result(timeout=...)
        raise _timed_out(settings, f"setting group {group}'s offsets", timeout) from None
