"""The Kafka source: the only module that imports confluent_kafka.

It turns client messages into :class:`~consumer.message.Message`, client errors into ours, and
rebalance callbacks into calls on a :class:`~consumer.transport.SourceListener`, all on the
thread that polls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import confluent_kafka
from confluent_kafka import Consumer, KafkaException, TopicPartition

from consumer.errors import AssignmentFailed, DeadLetterFailed, KafkaError, KafkaFatalError
from consumer.message import Message, RecordMessage
from consumer.settings import KafkaSettings
from consumer.snapshot import GroupPosition
from consumer.transport import COMMIT_MARKER, TP, SourceListener

log = logging.getLogger("consumer.source")
NOT_AN_ERROR = {confluent_kafka.KafkaError._NO_OFFSET}


class _Unsubscribed:
    """Listener in place until ``subscribe``: client errors are logged, nothing else happens."""

    def on_assigned(self, partitions: list[TP]) -> Mapping[TP, int]:
        return {}

    def on_revoked(self, partitions: list[TP]) -> None: ...

    def on_lost(self, partitions: list[TP]) -> None: ...

    def on_commit_result(self, offsets: Mapping[TP, int], error: KafkaError | None) -> None: ...

    def on_client_error(self, error: KafkaError) -> None:
        log.warning("%s", error)


class KafkaSource:
    """A subscribed Kafka consumer with manual commits and cooperative rebalancing."""

    def __init__(
        self, settings: KafkaSettings, *, on_statistics: Callable[[str], None] | None = None
    ) -> None:
        self._settings = settings
        #: Called with librdkafka's statistics JSON (every second), inside poll.
        self._on_statistics = on_statistics
        self._listener: SourceListener = _Unsubscribed()
        self._callback_error: BaseException | None = None
        self._consumer = Consumer(self._client_config())

    # --- configuration -----------------------------------------------------------------------

    def _client_config(self) -> dict[str, Any]:
        s = self._settings
        config: dict[str, Any] = {
            "bootstrap.servers": s.bootstrap_servers,
            "group.id": s.group_id,
            "client.id": s.client_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": s.auto_offset_reset,
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": s.session_timeout_ms,
            "max.poll.interval.ms": s.max_poll_interval_ms,
            "error_cb": self._error_cb,
            "on_commit": self._commit_cb,
            "logger": logging.getLogger("consumer.librdkafka"),
        }
        if self._on_statistics is not None:
            config["stats_cb"] = self._on_statistics
            config["statistics.interval.ms"] = 1000  # librdkafka.statistics.interval.ms wins
        config.update({k: v.get_secret_value() for k, v in s.librdkafka.items()})
        return config

    # --- lifecycle -----------------------------------------------------------------------------

    def wait_for_broker(
        self, *, keep_trying: Callable[[], bool], max_backoff: float = 30.0
    ) -> bool:
        """Block until a broker answers, retrying with backoff while ``keep_trying()`` holds.

        Returns False when ``keep_trying`` turned false first (shutdown requested).
        """
        backoff, attempt = 1.0, 1
        while keep_trying():
            try:
                metadata = self._consumer.list_topics(timeout=min(backoff, 5.0))
                if metadata.brokers:
                    if attempt > 1:
                        log.info("Kafka at %s answers again", self._settings.bootstrap_servers)
                    return True
            except KafkaException as error:
                reason = error.args[0].str() if error.args else str(error)
            else:
                reason = "no broker in the metadata"
            log.warning(
                "cannot reach Kafka at %s (attempt %d: %s); retrying in %.0f s. Check "
                "kafka.bootstrap_servers and that the brokers are up.",
                self._settings.bootstrap_servers, attempt, reason, backoff,
            )
            deadline = time.monotonic() + backoff
            while keep_trying() and time.monotonic() < deadline:
                time.sleep(0.1)
            backoff, attempt = min(backoff * 2, max_backoff), attempt + 1
        return False

    def subscribe(self, topics: Iterable[str], listener: SourceListener) -> None:
        self._listener = listener
        self._consumer.subscribe(
            list(topics),
            on_assign=self._assign_cb,
            on_revoke=self._revoke_cb,
            on_lost=self._lost_cb,
        )

    def close(self) -> None:
        """Leave the group (revoking partitions, which checkpoints them) and close the client."""
        self._consumer.close()
        self._raise_callback_error()

    # --- polling -------------------------------------------------------------------------------

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to ``max_messages`` messages; rebalance and commit callbacks run inside."""
        try:
            raw = self._consumer.consume(num_messages=max_messages, timeout=timeout)
        except KafkaException as error:
            self._raise_callback_error()
            raise _translate(error.args[0]) from error
        self._raise_callback_error()
        # A record without an error always has coordinates; the client's hints say Optional.
        messages: list[Message] = [
            RecordMessage(r, r.topic(), r.partition(), r.offset())  # type: ignore[arg-type]
            for r in raw if r.error() is None
        ]
        if len(messages) != len(raw):  # rare: errors travel as records
            for record in raw:
                failure = record.error()
                if failure is not None:
                    self._client_error(failure)
        return messages

    def pause(self, partitions: list[TP]) -> None:
        if partitions:
            self._consumer.pause([TopicPartition(t, p) for t, p in partitions])

    def resume(self, partitions: list[TP]) -> None:
        if partitions:
            self._consumer.resume([TopicPartition(t, p) for t, p in partitions])

    def seek(self, partition: TP, offset: int) -> None:
        try:
            self._consumer.seek(TopicPartition(partition[0], partition[1], offset))
        except KafkaException as error:
            raise _translate(error.args[0]) from error

    # --- commits -------------------------------------------------------------------------------

    def commit(self, offsets: Mapping[TP, int], *, asynchronous: bool) -> None:
        """Commit the next offsets to read. Synchronous commits raise :class:`KafkaError`."""
        partitions = [
            TopicPartition(topic, partition, offset, metadata=COMMIT_MARKER)
            for (topic, partition), offset in offsets.items()
        ]
        try:
            if asynchronous:
                self._consumer.commit(offsets=partitions, asynchronous=True)
                return
            result = self._consumer.commit(offsets=partitions, asynchronous=False)
        except KafkaException as error:
            if error.args[0].code() in NOT_AN_ERROR:
                return
            raise _translate(error.args[0]) from error
        failed = [tp for tp in result or [] if tp.error is not None]
        if failed:
            raise _translate(failed[0].error)

    def committed(self, partitions: Iterable[TP], timeout: float = 10.0) -> dict[TP, int | None]:
        """Kafka's committed offsets for the group (None where nothing is committed)."""
        request = [TopicPartition(t, p) for t, p in partitions]
        try:
            result = self._consumer.committed(request, timeout=timeout)
        except KafkaException as error:
            raise _translate(error.args[0]) from error
        return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None for tp in result}

    def committed_with_metadata(
        self, partitions: Iterable[TP], timeout: float = 10.0
    ) -> dict[TP, tuple[int | None, str | None]]:
        request = [TopicPartition(t, p) for t, p in partitions]
        if not request:
            return {}
        try:
            result = self._consumer.committed(request, timeout=timeout)
        except KafkaException as error:
            raise _translate(error.args[0]) from error
        return {
            (tp.topic, tp.partition): (tp.offset, tp.metadata) if tp.offset >= 0 else (None, None)
            for tp in result
        }

    def offset_range(self, partition: TP, timeout: float = 10.0) -> tuple[int, int]:
        try:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(*partition), timeout=timeout, cached=False
            )
        except KafkaException as error:
            raise _translate(error.args[0]) from error
        return int(low), int(high)

    def positions(self, partitions: Iterable[TP]) -> dict[TP, int]:
        """The client's next offset to hand over, per partition (past transaction markers);
        partitions without one are left out. Local: no broker round trip."""
        try:
            found = self._consumer.position([TopicPartition(t, p) for t, p in partitions])
        except KafkaException as error:
            raise _translate(error.args[0]) from error
        return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}

    def topic_ids(self, topics: Iterable[str], timeout: float = 10.0) -> dict[str, str]:
        from confluent_kafka import TopicCollection
        from confluent_kafka.admin import AdminClient

        # Only what the admin client shares with the consumer (connection and security), as
        # in read_group_positions: consumer-only properties would make librdkafka warn.
        s = self._settings
        config: dict[str, Any] = {"bootstrap.servers": s.bootstrap_servers,
                                  "client.id": s.client_id}
        config.update({k: v.get_secret_value() for k, v in s.librdkafka.items()
                       if k.startswith(_ADMIN_PREFIXES)})
        admin = AdminClient(config)
        futures = admin.describe_topics(TopicCollection(list(topics)), request_timeout=timeout)
        ids = {}
        for topic, future in futures.items():
            try:
                ids[topic] = str(future.result().topic_id)
            except KafkaException as error:
                raise _translate(error.args[0]) from error
        return ids

    # --- callbacks (run on the polling thread, inside consume/close) ---------------------------

    def _assign_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            starts = self._listener.on_assigned([(p.topic, p.partition) for p in partitions])
            for p in partitions:
                start = starts.get((p.topic, p.partition))
                if start is not None:
                    p.offset = start
            consumer.incremental_assign(partitions)
        except BaseException as error:
            # The client would assign at Kafka's committed offsets anyway; never carry on.
            self._callback_error = AssignmentFailed(
                f"could not position assigned partitions {_names(partitions)}: "
                f"{type(error).__name__}: {error}"
            )
            self._callback_error.__cause__ = error

    def _revoke_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self._listener.on_revoked([(p.topic, p.partition) for p in partitions])
        except BaseException as error:
            self._callback_error = error

    def _lost_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self._listener.on_lost([(p.topic, p.partition) for p in partitions])
        except BaseException as error:
            self._callback_error = error

    def _commit_cb(self, error: Any, partitions: list[TopicPartition]) -> None:
        offsets = {(p.topic, p.partition): p.offset for p in partitions if p.error is None}
        failure = None
        if error is not None and error.code() not in NOT_AN_ERROR:
            failure = _translate(error)
        elif any(p.error is not None for p in partitions):
            failure = _translate(next(p.error for p in partitions if p.error is not None))
        self._listener.on_commit_result(offsets, failure)

    def _error_cb(self, error: Any) -> None:
        self._client_error(error)

    def _client_error(self, error: Any) -> None:
        translated = _translate(error)
        if translated.fatal:
            self._callback_error = translated
        self._listener.on_client_error(translated)

    def _raise_callback_error(self) -> None:
        if self._callback_error is not None:
            error, self._callback_error = self._callback_error, None
            raise error


class KafkaDeadLetterSink:
    """Produces dead letters with the original key, value and headers plus provenance, and
    waits for the broker's acknowledgement of each (they are rare; correctness first)."""

    #: Errors that another try can fix; anything else (too large, not authorised) cannot.
    RETRIABLE: ClassVar[frozenset[str]] = frozenset({
        "_MSG_TIMED_OUT", "_TRANSPORT", "_ALL_BROKERS_DOWN", "UNKNOWN_TOPIC_OR_PART",
        "LEADER_NOT_AVAILABLE", "NOT_LEADER_FOR_PARTITION", "NOT_ENOUGH_REPLICAS",
        "REQUEST_TIMED_OUT", "_TIMED_OUT", "NETWORK_EXCEPTION", "_UNKNOWN_TOPIC", "_QUEUE_FULL",
    })

    def __init__(self, settings: KafkaSettings, *, timeout: float = 30.0) -> None:
        config: dict[str, Any] = {
            "bootstrap.servers": settings.bootstrap_servers,
            "client.id": f"{settings.client_id}-dead-letters",
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": int(timeout * 1000),
            "logger": logging.getLogger("consumer.librdkafka"),
        }
        config.update({k: v.get_secret_value() for k, v in settings.librdkafka.items()
                       if k.startswith(("security.", "sasl.", "ssl."))})
        self._producer = confluent_kafka.Producer(config)
        self._timeout = timeout

    def send(self, topic: str, message: Message, provenance: list[tuple[str, bytes]]) -> None:
        outcome: list[Any] = []
        headers: list[tuple[str, str | bytes | None]] = [*(message.headers or []), *provenance]

        def delivered(error: Any, _record: Any) -> None:
            outcome.append(error)

        try:
            self._producer.produce(topic, value=message.value, key=message.key,
                                   headers=headers, on_delivery=delivered)
            self._producer.flush(self._timeout)
        except (KafkaException, BufferError) as error:
            code = error.args[0].name() if isinstance(error, KafkaException) else "_QUEUE_FULL"
            reason = error.args[0].str() if isinstance(error, KafkaException) else str(error)
            raise self._failed(topic, message, code, reason) from None
        if not outcome:
            raise self._failed(topic, message, "_TIMED_OUT", "no acknowledgement in time")
        if outcome[0] is not None:
            raise self._failed(topic, message, outcome[0].name(), outcome[0].str())

    def _failed(self, topic: str, message: Message, code: str, reason: str) -> DeadLetterFailed:
        return DeadLetterFailed(message.topic, message.partition, message.offset, topic,
                                f"{code}: {reason}", retriable=code in self.RETRIABLE)

    def close(self) -> None:
        self._producer.flush(self._timeout)


def read_topic(settings: KafkaSettings, topic: str, *, timeout: float = 60.0) -> list[Message]:
    """Every message in ``topic`` up to its end offsets now, read without joining a group."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": f"{settings.group_id}-reader",  # required by the client, never joined
        "enable.auto.commit": False,
        "logger": logging.getLogger("consumer.librdkafka"),
    }
    config.update({k: v.get_secret_value() for k, v in settings.librdkafka.items()
                   if k.startswith(("security.", "sasl.", "ssl."))})
    consumer = Consumer(config)
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
        raise _translate(error.args[0]) from error
    finally:
        consumer.close()


def _translate(error: Any) -> KafkaError:
    """confluent_kafka.KafkaError -> our KafkaError (fatal ones as KafkaFatalError)."""
    code = error.name() if hasattr(error, "name") else "UNKNOWN"
    reason = error.str() if hasattr(error, "str") else str(error)
    if getattr(error, "fatal", lambda: False)():
        return KafkaFatalError(code, reason)
    return KafkaError(code, reason)


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions)


#: librdkafka properties the admin client shares with the consumer (connection and security).
_ADMIN_PREFIXES = ("security.", "sasl.", "ssl.", "socket.", "broker.", "client.", "metadata.",
                   "api.version", "reconnect.", "retry.", "enable.ssl", "enable.sasl")


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

    config: dict[str, str | int | float | bool] = {
        "bootstrap.servers": settings.bootstrap_servers, "client.id": settings.client_id}
    config.update({k: v.get_secret_value() for k, v in settings.librdkafka.items()
                   if k.startswith(_ADMIN_PREFIXES)})
    admin = AdminClient(config)
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
        raise _translate(error.args[0]) from error
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

    admin = AdminClient(_admin_config(settings))
    try:
        described = admin.describe_consumer_groups([group], request_timeout=timeout)
        return len(described[group].result(timeout=timeout).members or [])
    except KafkaException as error:
        raise _translate(error.args[0]) from error


def offsets_at(settings: KafkaSettings, partitions: Iterable[TP], *, timestamp_ms: int,
               timeout: float = 10.0) -> dict[TP, int]:
    """Per partition, the first offset whose record timestamp is at or after ``timestamp_ms``
    (the end of the log when none is). Raises :class:`KafkaError`."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.admin._listoffsets import OffsetSpec  # not re-exported for mypy

    admin = AdminClient(_admin_config(settings))
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
        raise _translate(error.args[0]) from error


def set_group_offsets(settings: KafkaSettings, group: str, offsets: Mapping[TP, int], *,
                      timeout: float = 10.0) -> None:
    """Set a stopped group's committed offsets, with our marker (so the next owner does not
    take them for another tool's reset). Raises :class:`KafkaError`."""
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(_admin_config(settings))
    request = ConsumerGroupTopicPartitions(group, [
        TopicPartition(t, p, offset, metadata=COMMIT_MARKER) for (t, p), offset in offsets.items()
    ])
    try:
        result = admin.alter_consumer_group_offsets([request], request_timeout=timeout)
        for tp in result[group].result(timeout=timeout).topic_partitions or []:
            if tp.error is not None:
                raise _translate(tp.error)
    except KafkaException as error:
        raise _translate(error.args[0]) from error


def _admin_config(settings: KafkaSettings) -> dict[str, str | int | float | bool]:
    config: dict[str, str | int | float | bool] = {
        "bootstrap.servers": settings.bootstrap_servers, "client.id": settings.client_id}
    config.update({k: v.get_secret_value() for k, v in settings.librdkafka.items()
                   if k.startswith(_ADMIN_PREFIXES)})
    return config
