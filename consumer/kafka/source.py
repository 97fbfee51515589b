"""The Kafka source: the group member the loop polls, over confluent-kafka (manual commits with
the marker, cooperative rebalancing).

Used by the poll thread only: rebalance, commit, error and statistics callbacks run inside
``poll`` and ``close`` on that thread. An exception raised in a callback is kept and re-raised
from the next ``poll`` or ``close`` (a failed assignment as ``AssignmentFailed``, since the
client would consume from Kafka's committed offsets). Client errors leave as ``KafkaError``.
``poll`` blocks up to its timeout; synchronous commits, ``committed``, ``offset_range`` and
``topic_ids`` for a broker round trip (``committed`` asks again while the group's coordinator
is not ready: ``consumer.kafka.committed``). Logger ``consumer.source``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import confluent_kafka
from confluent_kafka import Consumer, KafkaException, TopicPartition

from consumer.errors import AssignmentFailed, KafkaError
from consumer.kafka.client import (
    AUTHENTICATION,
    admin_config,
    authentication_failed,
    inherited,
    translate_error,
)
from consumer.kafka.client_log import librdkafka_logger
from consumer.kafka.committed import ask_committed
from consumer.kafka.protocol import COMMIT_MARKER, SourceListener
from consumer.message import TP, Message, RecordMessage
from consumer.settings import KafkaSettings

log = logging.getLogger("consumer.source")
NOT_AN_ERROR = {confluent_kafka.KafkaError._NO_OFFSET}

#: librdkafka's ``fetch.queue.backoff.ms``: once a partition's prefetched messages pass
#: ``queued.min.messages`` (or the queue's kilobytes), its next fetch waits this long. The
#: client's default, 1,000 ms, left the poll waiting for messages for whole seconds while a
#: consumer worked through a backlog faster than that: over 1,000,000 preloaded messages the
#: loop read 133,000 msg/s with it and 539,000 msg/s with 100 ms (10 and 50 ms read the same
#: as 100; 250 ms read 435,000). A partition whose queue stays full is checked again every
#: 100 ms instead of every second: a timer in librdkafka's thread, no request to the broker.
#: ``kafka.librdkafka`` overrides it.
FETCH_QUEUE_BACKOFF_MS = 100


class _Unsubscribed:
    """Listener in place until ``subscribe``: client errors are logged at DEBUG (the wait for
    the brokers says what fails, once per attempt), nothing else happens."""

    def on_assigned(self, partitions: list[TP]) -> Mapping[TP, int]:
        return {}

    def on_revoked(self, partitions: list[TP]) -> None: ...

    def on_lost(self, partitions: list[TP]) -> None: ...

    def on_commit_result(self, offsets: Mapping[TP, int], error: KafkaError | None) -> None: ...

    def on_client_error(self, error: KafkaError) -> None:
        log.debug("%s", error)


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
        #: The last refused SASL handshake the client reported (fatal while waiting at start).
        self._refused: KafkaError | None = None
        #: The subscription's one topic; None: several (each record names its own).
        self._only_topic: str | None = None
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
            "logger": librdkafka_logger(),
            "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
        }
        if s.group_instance_id is not None:
            config["group.instance.id"] = s.group_instance_id
        if self._on_statistics is not None:
            config["stats_cb"] = self._on_statistics
            config["statistics.interval.ms"] = 1000  # librdkafka.statistics.interval.ms wins
        config.update(inherited(s, every_property=True))
        return config

    # --- lifecycle -----------------------------------------------------------------------------

    def wait_for_broker(
        self, *, keep_trying: Callable[[], bool], max_backoff: float = 30.0
    ) -> bool:
        """Block until a broker answers, retrying with backoff while ``keep_trying()`` holds.

        Returns False when ``keep_trying`` turned false first (shutdown requested). Raises
        :class:`~consumer.errors.KafkaAuthenticationFailed` when the brokers refuse our
        credentials: waiting cannot fix a wrong password.
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
            self._consumer.poll(0)  # serves the error callback: a refused handshake lands there
            if self._refused is not None:
                raise authentication_failed(self._settings, self._refused)
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
        chosen = list(topics)
        # One topic (names, never patterns: routes name topics): every record is of it, so
        # the poll gives each message that one string instead of a new copy from the client.
        self._only_topic = chosen[0] if len(chosen) == 1 else None
        self._consumer.subscribe(
            chosen,
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
        """Up to ``max_messages`` messages, returned as soon as there are any (waiting up to
        ``timeout`` for the first); rebalance and commit callbacks run inside."""
        try:
            raw = self._take(max_messages, timeout)
        except KafkaException as error:
            self._raise_callback_error()
            raise translate_error(error.args[0]) from error
        self._raise_callback_error()
        messages = RecordMessage.of_records(raw, self._only_topic)
        if len(messages) != len(raw):  # rare: errors travel as records
            for record in raw:
                failure = record.error()
                if failure is not None:
                    self._client_error(failure)
        return messages

    def _take(self, max_messages: int, timeout: float) -> list[confluent_kafka.Message]:
        """The client's ``consume(n, timeout)`` waits until it has ``n`` messages or the
        timeout ends, so on a quiet topic every message would wait the whole poll timeout.
        Take what is fetched already; if nothing is, wait for one message and then take what
        came with it."""
        raw = self._consumer.consume(num_messages=max_messages, timeout=0)
        if raw or timeout <= 0:
            return raw
        first = self._consumer.poll(timeout)
        if first is None:
            return []
        if max_messages == 1:
            return [first]
        return [first, *self._consumer.consume(num_messages=max_messages - 1, timeout=0)]

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
            raise translate_error(error.args[0]) from error

    # --- commits -------------------------------------------------------------------------------

    def commit(self, offsets: Mapping[TP, int], *, asynchronous: bool,
               metadata: Mapping[TP, str] | None = None) -> None:
        """Commit the next offsets to read, each with its ``metadata`` (the marker where none
        is given). Synchronous commits raise :class:`KafkaError`."""
        described = metadata or {}
        partitions = [
            TopicPartition(topic, partition, offset,
                           metadata=described.get((topic, partition), COMMIT_MARKER))
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
            raise translate_error(error.args[0]) from error
        failed = [tp for tp in result or [] if tp.error is not None]
        if failed:
            raise translate_error(failed[0].error)

    def committed(self, partitions: Iterable[TP], timeout: float = 10.0) -> dict[TP, int | None]:
        """Kafka's committed offsets for the group (None where nothing is committed)."""
        return {tp: offset for tp, (offset, _) in
                self.committed_with_metadata(partitions, timeout).items()}

    def committed_with_metadata(
        self, partitions: Iterable[TP], timeout: float = 10.0
    ) -> dict[TP, tuple[int | None, str | None]]:
        try:
            return ask_committed(self._consumer, partitions, timeout=timeout)
        except KafkaException as error:
            raise translate_error(error.args[0]) from error

    def offset_range(self, partition: TP, timeout: float = 10.0) -> tuple[int, int]:
        try:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(*partition), timeout=timeout, cached=False
            )
        except KafkaException as error:
            raise translate_error(error.args[0]) from error
        return int(low), int(high)

    def positions(self, partitions: Iterable[TP]) -> dict[TP, int]:
        """The client's next offset to hand over, per partition (past transaction markers);
        partitions without one are left out. Local: no broker round trip."""
        try:
            found = self._consumer.position([TopicPartition(t, p) for t, p in partitions])
        except KafkaException as error:
            raise translate_error(error.args[0]) from error
        return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}

    def topic_ids(self, topics: Iterable[str], timeout: float = 10.0) -> dict[str, str]:
        from confluent_kafka import TopicCollection
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(admin_config(self._settings))
        futures = admin.describe_topics(TopicCollection(list(topics)), request_timeout=timeout)
        ids = {}
        for topic, future in futures.items():
            try:
                ids[topic] = str(future.result().topic_id)
            except KafkaException as error:
                raise translate_error(error.args[0]) from error
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
            # The client keeps a pause across a revoke and a later assignment, but whoever
            # paused the partition (a full route, a retry's backoff, an outage) forgot it when
            # it went: left paused, it would never be fetched again.
            consumer.resume(partitions)
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
            failure = translate_error(error)
        elif any(p.error is not None for p in partitions):
            failure = translate_error(next(p.error for p in partitions if p.error is not None))
        self._listener.on_commit_result(offsets, failure)

    def _error_cb(self, error: Any) -> None:
        self._client_error(error)

    def _client_error(self, error: Any) -> None:
        translated = translate_error(error)
        if translated.fatal:
            self._callback_error = translated
        elif translated.code == AUTHENTICATION:
            self._refused = translated
        self._listener.on_client_error(translated)

    def _raise_callback_error(self) -> None:
        if self._callback_error is not None:
            error, self._callback_error = self._callback_error, None
            raise error


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions)
