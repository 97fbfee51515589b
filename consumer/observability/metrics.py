"""Prometheus metrics: every name this module exports (``METRICS``, a closed list; the README's
metrics reference lists the same names), with a registry passed in, never the global one.

Three parts, so the hot path stays cheap:

- :class:`MetricsObserver` counts the engine's events on the poll thread (once per batch,
  commit or rebalance, never per message) and keeps plain references the scrape reads (the
  batch in hand, commit times, the rebalance in progress).
- :class:`~consumer.observability.instruments.Instruments` holds handler timings (taken inline
  where handlers are called) and times store operations and commits through thin wrappers,
  into :class:`~consumer.observability.histogram.Histogram` accumulators.
- :class:`~consumer.observability.collector.ConsumerCollector` computes every gauge when
  Prometheus scrapes, on the HTTP thread (its own module).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter

from consumer.clock import Clock
from consumer.errors import ConsumerError, HandlerFailed, KafkaError
from consumer.events import Observer, Trigger
from consumer.message import TP, Message
from consumer.observability.histogram import AGE_BUCKETS, Histogram
from consumer.observability.instruments import Instruments
from consumer.observability.lag import OffsetTracker

#: The closed list of exported names (without the ``_total`` a counter's samples add).
METRICS: dict[str, str] = {
    # --- process
    "consumer_build_info": "Version of checkpoint-consumer; always 1.",
    "consumer_state": "Lifecycle state of the consumer loop, one-hot.",
    "consumer_ready": "1 when /readyz passes.",
    "consumer_live": "1 when /livez passes.",
    "consumer_last_poll_timestamp_seconds": "When the loop last polled Kafka.",
    # --- consumption
    "consumer_messages_consumed": "Messages handed to handlers and done, per partition, "
                                  "since it was assigned.",
    "consumer_consumed_bytes": "Bytes of records fetched from Kafka (refetches included).",
    "consumer_messages_processed": "Messages done, by outcome (success, duplicate).",
    "consumer_handler_duration_seconds": "Handler calls by how long they took, by outcome "
                                         "(success, error).",
    "consumer_message_age_seconds": "Messages by their age (now minus the record's "
                                    "timestamp) when the batch that did them was done.",
    "consumer_handler_oldest_start_timestamp_seconds": "When the handler call in progress "
                                                       "started; 0 when none is running.",
    # --- errors
    "consumer_handler_errors": "Handler exceptions, by exception class.",
    "consumer_kafka_errors": "Errors the Kafka client reported, by librdkafka code.",
    "consumer_retries": "Failed handler attempts scheduled for another try.",
    "consumer_dead_letters": "Messages produced to a dead-letter topic, by reason.",
    "consumer_dead_letter_failures": "Dead letters the broker did not acknowledge.",
    # --- checkpoints
    "consumer_commits": "Checkpoints by trigger and result (success, error, noop).",
    "consumer_committed_offset": "Offset the broker confirmed as committed (next to read).",
    "consumer_last_commit_timestamp_seconds": "When the committed offset was last confirmed.",
    "consumer_uncommitted_messages": "Messages done whose commit the broker has not confirmed.",
    "consumer_checkpoint_age_seconds": "Age of the oldest done-but-uncommitted message; "
                                       "0 when none.",
    "consumer_commit_duration_seconds": "Offset commits by how long the loop spent in them "
                                        "(synchronous: until the broker answered; "
                                        "asynchronous: sending).",
    # --- lag
    "consumer_partition_end_offset": "Offset the next produced message gets (high watermark).",
    "consumer_partition_start_offset": "First offset still in the log.",
    "consumer_partition_processed_offset": "Next offset to process.",
    "consumer_partition_lag_messages": "End offset minus processed offset.",
    "consumer_partition_committed_lag_messages": "End offset minus committed offset.",
    "consumer_partition_lag_seconds": "Age of the oldest unprocessed message; 0 when caught "
                                      "up.",
    # --- store
    "consumer_processed_keys_purged": "Processed keys purged past their retention.",
    "consumer_dedup_lookups": "Dedup keys looked up in the store: hit (processed before, "
                              "skipped) or miss (new).",
    "consumer_store_duration_seconds": "Store operations of checkpoint batches and "
                                       "assignments by how long they took.",
    "consumer_store_errors": "Store operations that failed.",
    # --- group
    "consumer_rebalances": "Partitions assigned, revoked or lost events.",
    "consumer_rebalance_duration_seconds": "Rebalances by how long they took, from joining "
                                           "or the first revoke to the end of the poll that "
                                           "brought the assignment.",
    "consumer_assigned_partitions": "Partitions assigned to this consumer.",
    "consumer_paused_partitions": "Assigned partitions not fetched now (waiting for a retry, "
                                  "or the store is unavailable).",
    # --- concurrency (routes with concurrency above 1, or async handlers)
    "consumer_handlers_in_flight": "Messages of the route whose handler is running now.",
    "consumer_partition_queued_messages": "Messages polled and not started yet.",
    "consumer_partition_gap_messages": "Messages finished above the partition's watermark "
                                       "(not committable until the gap closes).",
}

#: Batches up to this size observe every message's age; larger ones a systematic sample.
AGE_SAMPLE = 32



def _counter(registry: CollectorRegistry, name: str, labels: Iterable[str]) -> Counter:
    return Counter(name, METRICS[name], ["group", *labels], registry=registry)


class MetricsObserver(Observer):
    """Counts events; keeps the references the scrape reads. Runs on the poll thread."""

    def __init__(self, *, registry: CollectorRegistry, clock: Clock, group: str,
                 offsets: OffsetTracker, instruments: Instruments) -> None:
        self._clock = clock
        self._group = group
        self._offsets = offsets
        self._instruments = instruments
        self.topics: list[str] = []
        #: topic -> ages of its done messages
        self.ages: dict[str, Histogram] = {}
        #: Monotonic time the rebalance in progress began (joining the group, or the first
        #: revoke or loss); None when none is. It ends with the poll that brought the
        #: assignment.
        self.rebalance_since: float | None = None
        self._assignment_arrived = False
        self.rebalance = Histogram(AGE_BUCKETS)
        #: The batch in hand: the scrape finds the oldest unprocessed message of each partition.
        self.batch: list[Message] = []
        #: Per partition: (offset, wall time) of the last commit sent, and of the last ack.
        self.sent: dict[TP, tuple[int, float]] = {}
        self.acked_at: dict[TP, float] = {}
        self._last_async_trigger = Trigger.COUNT
        self._commits = _counter(registry, "consumer_commits", ["trigger", "result"])
        for trigger in Trigger:
            for result in ("success", "error", "noop"):
                self._commits.labels(group, trigger.value, result)
        self._processed = _counter(registry, "consumer_messages_processed", ["topic", "outcome"])
        self._handler_errors = _counter(registry, "consumer_handler_errors",
                                        ["topic", "error_type"])
        self._kafka_errors = _counter(registry, "consumer_kafka_errors", ["code", "fatal"])
        self._rebalances = _counter(registry, "consumer_rebalances", ["event"])
        for event in ("assign", "revoke", "lost"):
            self._rebalances.labels(group, event)
        self._purged = _counter(registry, "consumer_processed_keys_purged", [])
        self._retries = _counter(registry, "consumer_retries", ["topic"])
        self._dead_letters = _counter(registry, "consumer_dead_letters", ["topic", "reason"])
        self._dead_letter_failures = _counter(registry, "consumer_dead_letter_failures",
                                              ["topic"])

    def started(self, topics: list[str]) -> None:
        self.topics = list(topics)
        for topic in topics:
            self._processed.labels(self._group, topic, "success")
            self.ages[topic] = Histogram(AGE_BUCKETS)
        self._rebalancing()  # joining the group is the first rebalance

    def polled(self, messages: list[Message]) -> None:
        self._instruments.flush()
        if self.rebalance_since is not None and self._assignment_arrived:
            self.rebalance.observe(self._clock.monotonic() - self.rebalance_since)
            self.rebalance_since = None
        self.batch = messages

    def batch_done(self, count: int) -> None:
        self._count_processed(count, "success")
        self.messages_done(self.batch[:count])

    def messages_done(self, messages: list[Message]) -> None:
        self._instruments.flush()
        if not messages:
            return
        now = self._clock.wall()
        size = len(messages)
        if size <= AGE_SAMPLE:
            for message in messages:
                stamp = message.timestamp
                if stamp is not None:  # records without a timestamp have no age
                    self._age(message.topic).observe(now - stamp)
            return
        # Reading every record's timestamp costs more than the rest of the metrics: a
        # systematic sample of the batch stands for it, each member for ``step`` messages.
        step = -(-size // AGE_SAMPLE)
        for start in range(0, size, step):
            message = messages[start]
            stamp = message.timestamp
            if stamp is not None:
                self._age(message.topic).observe_weighted(now - stamp,
                                                          min(step, size - start))

    def _age(self, topic: str) -> Histogram:
        histogram = self.ages.get(topic)
        if histogram is None:
            histogram = self.ages[topic] = Histogram(AGE_BUCKETS)
        return histogram

    def batch_applied(self, applied: int, duplicates: int) -> None:
        self._count_processed(applied, "success")
        self._count_processed(duplicates, "duplicate")

    def _count_processed(self, count: int, outcome: str) -> None:
        if not count:
            return
        if len(self.topics) == 1:  # the common case costs one call per batch
            self._processed.labels(self._group, self.topics[0], outcome).inc(count)
            return
        # Several topics: the done messages are the batch's first ``count`` (a partition
        # revoked mid-batch can shift this by its skipped messages).
        for topic, n in Tally(m.topic for m in self.batch[:count]).items():
            self._processed.labels(self._group, topic, outcome).inc(n)

    def checkpoint_committed(self, trigger: Trigger, offsets: Mapping[TP, int]) -> None:
        self._commits.labels(self._group, trigger.value, "success").inc()
        if trigger in (Trigger.COUNT, Trigger.INTERVAL):
            self._last_async_trigger = trigger
        now = self._clock.wall()
        for tp, offset in offsets.items():
            self.sent[tp] = (offset, now)

    def checkpoint_noop(self, trigger: Trigger) -> None:
        self._commits.labels(self._group, trigger.value, "noop").inc()

    def commit_failed(self, trigger: Trigger | None, error: KafkaError) -> None:
        # An asynchronous commit's failure arrives later, without its trigger: at most one is
        # in flight at a time, so it is the last one sent.
        trigger = trigger or self._last_async_trigger
        self._commits.labels(self._group, trigger.value, "error").inc()

    def commit_acknowledged(self, offsets: Mapping[TP, int]) -> None:
        now = self._clock.wall()
        for tp in offsets:
            self.acked_at[tp] = now

    def assigned(self, partitions: list[TP]) -> None:
        self._rebalances.labels(self._group, "assign").inc()
        self._rebalancing()
        self._assignment_arrived = True

    def revoked(self, partitions: list[TP]) -> None:
        self._rebalances.labels(self._group, "revoke").inc()
        self._rebalancing()
        self._forget(partitions)

    def lost(self, partitions: list[TP]) -> None:
        self._rebalances.labels(self._group, "lost").inc()
        self._rebalancing()
        self._forget(partitions)

    def _rebalancing(self) -> None:
        if self.rebalance_since is None:
            self.rebalance_since = self._clock.monotonic()
            self._assignment_arrived = False

    def _forget(self, partitions: list[TP]) -> None:
        for tp in partitions:
            self.sent.pop(tp, None)
            self.acked_at.pop(tp, None)
        self._offsets.forget(partitions)

    def kafka_error(self, error: KafkaError) -> None:
        self._kafka_errors.labels(self._group, error.code, str(error.fatal).lower()).inc()

    def failed(self, error: ConsumerError) -> None:
        if isinstance(error, HandlerFailed):
            self._handler_errors.labels(self._group, error.topic,
                                        type(error.cause).__name__).inc()

    def processed_keys_purged(self, count: int) -> None:
        self._purged.labels(self._group).inc(count)

    def retry_scheduled(self, message: Message, attempt: int, delay: float,
                        error: BaseException) -> None:
        self._retries.labels(self._group, message.topic).inc()
        self._handler_errors.labels(self._group, message.topic, type(error).__name__).inc()

    def dead_lettered(self, message: Message, reason: str, error: BaseException) -> None:
        self._dead_letters.labels(self._group, message.topic, reason).inc()
        self._processed.labels(self._group, message.topic, "dead_lettered").inc()
        if reason != "deserialization":
            self._handler_errors.labels(self._group, message.topic,
                                        type(error).__name__).inc()

    def dead_letter_failed(self, message: Message, error: ConsumerError) -> None:
        self._dead_letter_failures.labels(self._group, message.topic).inc()

    def last_commit_at(self, tp: TP, acked: int | None) -> float | None:
        """Wall time the broker last confirmed a commit of this partition (scrape thread)."""
        at = self.acked_at.get(tp)
        sent = self.sent.get(tp)
        # A synchronous commit is confirmed when it returns: no acknowledgement event follows.
        if sent is not None and acked is not None and sent[0] <= acked:
            at = sent[1] if at is None else max(at, sent[1])
        return at
