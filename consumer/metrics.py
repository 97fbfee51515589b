"""Prometheus metrics: every name this module exports, with its own registry.

Three parts, so the hot path stays cheap:

- :class:`MetricsObserver` counts the engine's events (once per batch, commit or rebalance,
  never per message) and keeps plain references the scrape reads (the batch in hand, commit
  times, the rebalance in progress).
- :class:`~consumer.instruments.Instruments` times handler calls, store operations and
  commits through thin wrappers, into :class:`~consumer.histogram.Histogram` accumulators.
- :class:`ConsumerCollector` computes every gauge when Prometheus scrapes, from the loop's
  snapshot, the lifecycle facts and the client's log offsets. Per-partition series exist while
  the partition is assigned: they vanish with it on revoke or loss. The scrape never calls the
  broker.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from consumer.checkpoint_policy import Trigger
from consumer.clock import Clock
from consumer.errors import ConsumerError, HandlerFailed, KafkaError
from consumer.health import Health, Lifecycle
from consumer.histogram import AGE_BUCKETS, Histogram
from consumer.instruments import STORE_OPERATIONS, Instruments
from consumer.lag import LogTracker, Skip, lag_messages, lag_seconds
from consumer.message import Message
from consumer.observer import TP, Observer
from consumer.snapshot import LogOffsets, LoopSnapshot, PartitionSnapshot

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
}

#: Batches up to this size observe every message's age; larger ones a systematic sample.
AGE_SAMPLE = 32

#: LoopState value -> the ``state`` label values of ``consumer_state``.
STATES = {"created": "starting", "running": "running", "draining": "draining",
          "closed": "stopped", "failed": "failed"}
STATE_LABELS = ("starting", "running", "rebalancing", "draining", "stopped", "failed")


def _counter(registry: CollectorRegistry, name: str, labels: Iterable[str]) -> Counter:
    return Counter(name, METRICS[name], ["group", *labels], registry=registry)


class MetricsObserver(Observer):
    """Counts events; keeps the references the scrape reads. Runs on the poll thread."""

    def __init__(self, *, registry: CollectorRegistry, clock: Clock, group: str,
                 log: LogTracker, instruments: Instruments) -> None:
        self._clock = clock
        self._group = group
        self._log = log
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
        self._log.forget(partitions)

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


class ConsumerCollector(Collector):
    """Computes the gauges at scrape time; registered once the loop exists."""

    def __init__(
        self,
        *,
        snapshot: Callable[[], LoopSnapshot],
        events: MetricsObserver,
        lifecycle: Lifecycle,
        health: Health,
        log: LogTracker,
        clock: Clock,
        group: str,
        version: str,
        instruments: Instruments,
        store: bool = False,
    ) -> None:
        self._snapshot = snapshot
        self._instruments = instruments
        #: Whether a store is configured: its families have samples only then.
        self._store = store
        self._events = events
        self._lifecycle = lifecycle
        self._health = health
        self._log = log
        self._clock = clock
        self._group = group
        self._version = version

    def collect(self) -> Iterable[Metric]:
        snapshot = self._snapshot()
        yield from self._process(snapshot)
        yield from self._partitions(snapshot)
        assigned = GaugeMetricFamily("consumer_assigned_partitions",
                                     METRICS["consumer_assigned_partitions"],
                                     labels=["group", "topic"])
        per_topic = Tally(topic for topic, _ in snapshot.partitions)
        for topic in sorted(set(self._events.topics) | set(per_topic)):
            assigned.add_metric([self._group, topic], per_topic.get(topic, 0))
        yield assigned
        fetched = CounterMetricFamily("consumer_consumed_bytes",
                                      METRICS["consumer_consumed_bytes"],
                                      labels=["group", "topic"])
        for topic, count in sorted(self._log.fetched_bytes().items()):
            fetched.add_metric([self._group, topic], count)
        yield fetched
        paused = GaugeMetricFamily("consumer_paused_partitions",
                                   METRICS["consumer_paused_partitions"],
                                   labels=["group", "topic"])
        per_topic = Tally(topic for topic, _ in snapshot.paused)
        for topic in sorted(set(self._events.topics) | set(per_topic)):
            paused.add_metric([self._group, topic], per_topic.get(topic, 0))
        yield paused
        yield from self._timings()
        yield from self._store_metrics()

    def _timings(self) -> Iterable[Metric]:
        instruments, group = self._instruments, self._group
        yield _histograms("consumer_handler_duration_seconds", ["group", "topic", "outcome"],
                          {(group, *key): h for key, h in sorted(instruments.handler.items())})
        yield _histograms("consumer_message_age_seconds", ["group", "topic"],
                          {(group, topic): h for topic, h in sorted(self._events.ages.items())})
        yield _histograms("consumer_commit_duration_seconds", ["group"],
                          {(group,): instruments.commit})
        yield _histograms("consumer_rebalance_duration_seconds", ["group"],
                          {(group,): self._events.rebalance})
        started = GaugeMetricFamily("consumer_handler_oldest_start_timestamp_seconds",
                                    METRICS["consumer_handler_oldest_start_timestamp_seconds"],
                                    labels=["group"])
        since = instruments.started
        started.add_metric([group], 0.0 if not since else
                           self._clock.wall() - (instruments.now() - since))
        yield started

    def _store_metrics(self) -> Iterable[Metric]:
        instruments, group = self._instruments, self._group
        store = self._store
        yield _histograms("consumer_store_duration_seconds", ["group", "operation"],
                          {(group, operation): histogram for operation, histogram
                           in instruments.store_duration.items()} if store else {})
        errors = CounterMetricFamily("consumer_store_errors", METRICS["consumer_store_errors"],
                                     labels=["group", "operation"])
        lookups = CounterMetricFamily("consumer_dedup_lookups",
                                      METRICS["consumer_dedup_lookups"],
                                      labels=["group", "topic", "result"])
        if store:
            for operation in STORE_OPERATIONS:
                errors.add_metric([group, operation], instruments.store_errors[operation])
            for (topic, result), count in sorted(instruments.dedup.items()):
                lookups.add_metric([group, topic, result], count)
        yield errors
        yield lookups

    def _process(self, snapshot: LoopSnapshot) -> Iterable[Metric]:
        group = self._group
        info = GaugeMetricFamily("consumer_build_info", METRICS["consumer_build_info"],
                                 labels=["version"])
        info.add_metric([self._version], 1)
        yield info
        state = GaugeMetricFamily("consumer_state", METRICS["consumer_state"],
                                  labels=["group", "state"])
        current = STATES.get(snapshot.state, "starting")
        if current == "running" and self._events.rebalance_since is not None:
            current = "rebalancing"
        for name in STATE_LABELS:
            state.add_metric([group, name], 1 if name == current else 0)
        yield state
        for name, report in (("consumer_ready", self._health.ready()),
                             ("consumer_live", self._health.live())):
            gauge = GaugeMetricFamily(name, METRICS[name], labels=["group"])
            gauge.add_metric([group], 1 if report.ok else 0)
            yield gauge
        polled = GaugeMetricFamily("consumer_last_poll_timestamp_seconds",
                                   METRICS["consumer_last_poll_timestamp_seconds"],
                                   labels=["group"])
        if self._lifecycle.last_poll_wall is not None:
            polled.add_metric([group], self._lifecycle.last_poll_wall)
        yield polled

    def _partitions(self, snapshot: LoopSnapshot) -> Iterable[Metric]:
        families = {name: (CounterMetricFamily if name == "consumer_messages_consumed"
                           else GaugeMetricFamily)(name, METRICS[name],
                                                   labels=["group", "topic", "partition"])
                    for name in PARTITION_METRICS}
        now, wall = self._clock.monotonic(), self._clock.wall()
        offsets = self._log.offsets()
        held = held_messages([snapshot.pending, self._events.batch], snapshot.partitions)
        skips = self._log.skips()
        for tp, progress in sorted(snapshot.partitions.items()):
            labels = [self._group, tp[0], str(tp[1])]
            skip = None if tp in held or tp in snapshot.paused else skips.get(tp)
            for name, value in self._partition_values(
                tp, progress, offsets.get(tp), held.get(tp), now, wall, skip
            ):
                families[name].add_metric(labels, value)
        yield from families.values()

    def _partition_values(
        self, tp: TP, progress: PartitionSnapshot, log: LogOffsets | None,
        held: Held | None, now: float, wall: float, skip: Skip | None,
    ) -> Iterable[tuple[str, float]]:
        yield "consumer_messages_consumed", progress.done
        yield "consumer_uncommitted_messages", progress.unconfirmed
        since = progress.oldest_uncommitted_at
        yield "consumer_checkpoint_age_seconds", 0.0 if since is None else max(0.0, now - since)
        committed = progress.acked
        if committed is None and log is not None:
            committed = log.committed  # committed before this process owned the partition
        if committed is not None:
            yield "consumer_committed_offset", committed
        committed_at = self._events.last_commit_at(tp, progress.acked)
        if committed_at is not None:
            yield "consumer_last_commit_timestamp_seconds", committed_at
        position = progress.watermark if progress.watermark is not None else committed
        if skip is not None and skip.watermark == progress.watermark:
            # Only transaction markers lie between the watermark and the client's position.
            if committed == progress.watermark:
                committed = skip.position
            position = skip.position
        if position is None and held is not None:
            position = held.first  # nothing done nor committed: the client started here
        if log is None and held is None:
            if position is not None:
                yield "consumer_partition_processed_offset", position
            return  # the client has not reported this partition's log yet
        # The client reports the log's end when it polls: a stuck handler holds newer messages.
        start = 0 if log is None else log.start
        end = max(0 if log is None else log.end, 0 if held is None else held.end)
        position = max(position if position is not None else start, start)
        lag = lag_messages(end, position, start)
        yield "consumer_partition_processed_offset", position
        yield "consumer_partition_end_offset", end
        if log is not None:
            yield "consumer_partition_start_offset", log.start
        yield "consumer_partition_lag_messages", lag
        yield "consumer_partition_committed_lag_messages", lag_messages(end, committed, start)
        oldest = None if held is None else held.timestamp
        produced = None if lag == 0 or oldest is not None else self._log.produced_at(tp, position)
        yield "consumer_partition_lag_seconds", lag_seconds(
            now=wall, lag=lag, oldest_held=oldest, produced_at=produced)


PARTITION_METRICS = (
    "consumer_messages_consumed", "consumer_uncommitted_messages",
    "consumer_checkpoint_age_seconds", "consumer_committed_offset",
    "consumer_last_commit_timestamp_seconds", "consumer_partition_processed_offset",
    "consumer_partition_end_offset", "consumer_partition_start_offset",
    "consumer_partition_lag_messages", "consumer_partition_committed_lag_messages",
    "consumer_partition_lag_seconds",
)


class Held(NamedTuple):
    """A partition's messages in the batch in hand that are not done yet."""

    #: Offset of the first (the oldest unprocessed message the consumer holds).
    first: int
    #: Its timestamp; None when the record has none.
    timestamp: float | None
    #: Offset after the batch's last message: a floor for the log's end.
    end: int


def held_messages(batches: Iterable[Iterable[Message]],
                  partitions: Mapping[TP, PartitionSnapshot]) -> dict[TP, Held]:
    """Per assigned partition, what the batches in hand (a store's pending batch, the last
    poll) hold past its watermark."""
    found: dict[TP, Held] = {}
    for batch in batches:
        for message in batch:
            tp = (message.topic, message.partition)
            progress = partitions.get(tp)
            if progress is None or (progress.watermark is not None
                                    and message.offset < progress.watermark):
                continue
            held = found.get(tp)
            if held is None:
                found[tp] = Held(message.offset, message.timestamp, message.offset + 1)
            elif message.offset < held.first:
                found[tp] = Held(message.offset, message.timestamp, max(held.end,
                                                                        message.offset + 1))
            elif message.offset >= held.end:
                found[tp] = held._replace(end=message.offset + 1)
    return found


def _histograms(name: str, labels: list[str],
                histograms: Mapping[tuple[str, ...], Histogram]) -> Metric:
    family = HistogramMetricFamily(name, METRICS[name], labels=labels)
    for values, histogram in histograms.items():
        buckets, total = histogram.export()
        family.add_metric(list(values), buckets, total)
    return family
